package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/socksgate/socksgate/configs"
)

// RuleRouter applies the config's ordered rules: the first rule whose every matcher accepts the
// flow decides it. Parse guarantees the last rule is a catch-all.
type RuleRouter struct {
	rules []compiledRule
}

type compiledRule struct {
	name     string
	protocol []string
	dst, src []netip.Prefix
	ports    []configs.PortRange
	inbound  []string
	domains  []string // lowercased; a leading "." means "this name or any below it"
	decision Decision
}

// NewRouter compiles cfg.Rules against the built upstreams.
func NewRouter(cfg *configs.Config, ups map[string]Upstream) (*RuleRouter, error) {
	r := &RuleRouter{}
	for i, cr := range cfg.Rules {
		c := compiledRule{
			name: cr.Name, protocol: cr.Protocol, dst: cr.Dst, src: cr.Src,
			ports: cr.DstPorts, inbound: cr.Inbound, domains: cr.Domain,
		}
		c.decision.Rule = cr.Name
		switch cr.Action {
		case configs.ActionBlock:
			c.decision.Action = ActionBlock
		case configs.ActionDirect:
			c.decision.Action = ActionDirect
			c.decision.Upstream = ups[configs.SchemeDirect]
		case configs.ActionProxy:
			c.decision.Action = ActionProxy
			u, ok := ups[cr.Upstream]
			if !ok {
				return nil, fmt.Errorf("rules[%d].upstream: no upstream named %q", i, cr.Upstream)
			}
			c.decision.Upstream = u
		default:
			return nil, fmt.Errorf("rules[%d].action: unknown action %q", i, cr.Action)
		}
		r.rules = append(r.rules, c)
	}
	return r, nil
}

// Route returns the decision of the first matching rule, or block when none matches.
func (r *RuleRouter) Route(_ context.Context, f Flow) Decision {
	for i := range r.rules {
		if r.rules[i].matches(f) {
			return r.rules[i].decision
		}
	}
	return Decision{Action: ActionBlock, Rule: "no rule matched"}
}

func (c *compiledRule) matches(f Flow) bool {
	if len(c.protocol) > 0 && !slices.Contains(c.protocol, f.Network) {
		return false
	}
	if len(c.inbound) > 0 && !slices.Contains(c.inbound, inboundClass(f.Inbound)) {
		return false
	}
	if len(c.dst) > 0 && !anyContains(c.dst, f.Dst.Addr()) {
		return false
	}
	if len(c.src) > 0 && !anyContains(c.src, f.Src.Addr()) {
		return false
	}
	if len(c.ports) > 0 {
		p := f.DstPort()
		if !slices.ContainsFunc(c.ports, func(r configs.PortRange) bool { return r.Contains(p) }) {
			return false
		}
	}
	if len(c.domains) > 0 && !domainMatches(c.domains, f.Host) {
		return false
	}
	return true
}

// inboundClass maps an inbound kind to the name rules use: both capture kinds are "transparent".
func inboundClass(in string) string {
	switch in {
	case InboundRedirect, InboundTProxy:
		return configs.InboundTransparent
	}
	return in
}

func anyContains(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func domainMatches(domains []string, host string) bool {
	if host == "" {
		return false
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, d := range domains {
		if suffix, ok := strings.CutPrefix(d, "."); ok {
			if host == suffix || strings.HasSuffix(host, d) {
				return true
			}
		} else if host == d {
			return true
		}
	}
	return false
}
