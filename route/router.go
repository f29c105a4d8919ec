package route

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/upstream"
)

// RuleRouter applies the config's ordered rules: the first rule whose every matcher accepts the
// flow decides it. Parse guarantees the last rule is a catch-all.
//
// Matching does not scan the rules one by one. Rules with a destination matcher are indexed
// by their prefixes (see prefixIndex), so a flow's address yields in O(log n) exactly the
// rules whose destination contains it; the rules without a destination matcher form a second
// ascending list. Both are walked in rule order, each stopping at the best match found so
// far, and the earliest rule whose remaining matchers all accept the flow wins. A rule's
// destination and source prefixes are kept in per-rule sets too (binary search beyond a
// handful), so ten thousand CIDRs in one rule cost as little as ten thousand rules. Route
// allocates nothing.
type RuleRouter struct {
	rules []compiledRule
	byDst prefixIndex // rules with a dst matcher, by prefix
	noDst []int32     // ascending indices of the rules without a dst matcher
}

type compiledRule struct {
	name     string
	protocol uint8 // bit set of protoBit; 0: any
	inbound  uint8 // bit set of inboundBit; 0: any
	hasDst   bool
	src      prefixSet
	ports    []configs.PortRange
	domains  []string // normalised by configs.Parse; see configs.MatchDomain
	decision Decision
}

const (
	protoTCP = 1 << iota
	protoUDP
)

const (
	inTransparent = 1 << iota
	inHTTP
	inSOCKS
)

// protoBit is a rule's protocol name as a bit; flowProto a flow's.
func protoBit(name string) uint8 {
	switch name {
	case configs.ProtocolTCP:
		return protoTCP
	case configs.ProtocolUDP:
		return protoUDP
	}
	return 0
}

func flowProto(n Network) uint8 {
	switch n {
	case TCP:
		return protoTCP
	case UDP:
		return protoUDP
	}
	return 0
}

// inboundBit is a rule's inbound name as a bit; flowInbound a flow's.
func inboundBit(name string) uint8 {
	switch name {
	case configs.InboundTransparent:
		return inTransparent
	case configs.InboundHTTP:
		return inHTTP
	case configs.InboundSOCKS:
		return inSOCKS
	}
	return 0
}

func flowInbound(in Inbound) uint8 {
	switch in {
	case Redirect, TProxy:
		return inTransparent
	case HTTP:
		return inHTTP
	case SOCKS:
		return inSOCKS
	}
	return 0
}

// NewRouter compiles cfg.Rules against the built upstreams (and groups, which NewUpstreams
// registers under their names). A proxy rule naming something that is not in ups is an error.
func NewRouter(cfg *configs.Config, ups map[string]upstream.Upstream) (*RuleRouter, error) {
	r := &RuleRouter{}
	var dstRefs []prefixRef
	for i, cr := range cfg.Rules {
		c := compiledRule{
			name:    cr.Name,
			hasDst:  len(cr.Dst) > 0,
			src:     newPrefixSet(cr.Src),
			ports:   cr.DstPorts,
			domains: cr.Domain,
		}
		for _, p := range cr.Protocol {
			b := protoBit(p)
			if b == 0 {
				return nil, fmt.Errorf("rules[%d].protocol: unknown protocol %q", i, p)
			}
			c.protocol |= b
		}
		for _, in := range cr.Inbound {
			b := inboundBit(in)
			if b == 0 {
				return nil, fmt.Errorf("rules[%d].inbound: unknown inbound %q", i, in)
			}
			c.inbound |= b
		}
		c.decision.Rule = cr.Name
		switch cr.Action {
		case configs.ActionBlock:
			c.decision.Action = ActionBlock
		case configs.ActionDirect:
			c.decision.Action = ActionDirect
			c.decision.Upstream = ups[configs.SchemeDirect]
			if c.decision.Upstream == nil {
				return nil, fmt.Errorf("rules[%d]: no direct upstream", i)
			}
		case configs.ActionProxy:
			c.decision.Action = ActionProxy
			u, ok := ups[cr.Upstream]
			if !ok || u == nil {
				return nil, fmt.Errorf("rules[%d].upstream: no upstream or group named %q", i, cr.Upstream)
			}
			c.decision.Upstream = u
		default:
			return nil, fmt.Errorf("rules[%d].action: unknown action %q", i, cr.Action)
		}
		if c.hasDst {
			for _, p := range cr.Dst {
				if !p.IsValid() {
					return nil, fmt.Errorf("rules[%d].dst: invalid prefix", i)
				}
				dstRefs = append(dstRefs, prefixRef{p: p, rule: int32(i)})
			}
		} else {
			r.noDst = append(r.noDst, int32(i))
		}
		r.rules = append(r.rules, c)
	}
	r.byDst = buildPrefixIndex(dstRefs)
	return r, nil
}

// noMatch is the decision when no rule matches (never, after configs.Parse).
var noMatch = Decision{Action: ActionBlock, Rule: "no rule matched"}

// Route returns the decision of the first matching rule, or block when none matches. A flow
// with only a name (Dst invalid) never matches a rule with a destination matcher.
func (r *RuleRouter) Route(_ context.Context, f Flow) Decision {
	if i := r.match(&f); i >= 0 {
		return r.rules[i].decision
	}
	return noMatch
}

// match returns the index of the first rule matching f, or -1.
func (r *RuleRouter) match(f *Flow) int32 {
	k := flowKey{
		proto:   flowProto(f.Network),
		inbound: flowInbound(f.Inbound),
		src:     f.Src.Addr().Unmap().WithZone(""), // prefixes never contain a zoned address
		port:    f.DstPort(),
		host:    f.Host,
	}
	best := int32(len(r.rules))
	for _, i := range r.noDst {
		if i >= best {
			break
		}
		if r.rules[i].matchesRest(&k) {
			best = i
			break
		}
	}
	if dst := f.Dst.Addr().Unmap().WithZone(""); dst.IsValid() {
		es, e := r.byDst.longest(dst)
		for ; e >= 0; e = es[e].parent {
			for _, i := range es[e].rules {
				if i >= best {
					break
				}
				if r.rules[i].matchesRest(&k) {
					best = i
					break
				}
			}
		}
	}
	if best == int32(len(r.rules)) {
		return -1
	}
	return best
}

// flowKey is a flow reduced to what the matchers compare, computed once per Route.
type flowKey struct {
	proto, inbound uint8
	src            netip.Addr
	port           uint16
	host           string
}

// matchesRest checks every matcher except the destination prefixes, which the caller has
// already settled (the rule has none, or the index found one containing the address).
func (c *compiledRule) matchesRest(k *flowKey) bool {
	if c.protocol != 0 && c.protocol&k.proto == 0 {
		return false
	}
	if c.inbound != 0 && c.inbound&k.inbound == 0 {
		return false
	}
	if !c.src.empty() && (!k.src.IsValid() || !c.src.contains(k.src)) {
		return false
	}
	if len(c.ports) > 0 {
		ok := false
		for _, pr := range c.ports {
			if pr.Contains(k.port) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(c.domains) > 0 {
		ok := false
		for _, d := range c.domains {
			if configs.MatchDomain(d, k.host) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
