package configs

import (
	"net/netip"
	"slices"
	"strings"
)

// Warnings returns non-fatal findings about a valid configuration, for
// `socksgate check` and the start-up log: rules that can never match
// because an earlier rule takes every flow they would match, the implicit
// default rule, upstreams and groups nothing uses, UDP routed to upstreams
// without UDP, listeners reachable from every address, and settings that have
// no effect. Whether the file is readable by others is the daemon's check.
func (c *Config) Warnings() []string {
	var w []string
	add := func(format string, args ...any) { w = append(w, sprintf(format, args...)) }

	for j := range c.Rules {
		for i := range j {
			if covers(&c.Rules[i], &c.Rules[j]) {
				add("rules[%d] (%q): never matches: every flow it matches is taken first by rules[%d] (%q)",
					j, c.Rules[j].Name, i, c.Rules[i].Name)
				break
			}
		}
		r := &c.Rules[j]
		if len(r.Protocol) > 0 && !slices.Contains(r.Protocol, ProtocolTCP) &&
			len(r.Inbound) > 0 && !slices.ContainsFunc(r.Inbound, func(s string) bool { return s != InboundHTTP }) {
			add("rules[%d] (%q): never matches: UDP never arrives on the http inbound", j, r.Name)
		}
	}
	if n := len(c.Rules); n > 0 && c.Rules[n-1].Implicit {
		r := &c.Rules[n-1]
		what := "go direct"
		if r.Action == ActionProxy {
			what = sprintf("go through upstream %q", r.Upstream)
		}
		if n == 1 {
			add("rules: none configured; every flow will %s (implicit rule %q)", what, r.Name)
		} else {
			add("rules: no catch-all rule; flows no rule matches will %s (implicit rule %q appended)", what, r.Name)
		}
	}

	used := map[string]bool{}
	for i := range c.Rules {
		if c.Rules[i].Action == ActionProxy {
			used[c.Rules[i].Upstream] = true
		}
	}
	for i := range c.Groups {
		for _, u := range c.Groups[i].Upstreams {
			used[u] = true
		}
	}
	for i := range c.Upstreams {
		if c.Upstreams[i].Via != "" {
			used[c.Upstreams[i].Via] = true
		}
	}
	for i := range c.Upstreams {
		if !used[c.Upstreams[i].Name] {
			add("upstreams[%d] (%q): not used by any rule, group or via", i, c.Upstreams[i].Name)
		}
	}
	for i := range c.Groups {
		if !used[c.Groups[i].Name] {
			add("groups[%d] (%q): not used by any rule", i, c.Groups[i].Name)
		}
	}

	if c.Transparent.UDP {
		for i := range c.Rules {
			r := &c.Rules[i]
			if r.Action != ActionProxy || (len(r.Protocol) > 0 && !slices.Contains(r.Protocol, ProtocolUDP)) {
				continue
			}
			if lacking := c.withoutUDP(r.Upstream); len(lacking) > 0 {
				add("rules[%d] (%q): %s cannot carry UDP; UDP flows it matches follow transparent.udp_without_support (%s)",
					i, r.Name, strings.Join(lacking, ", "), c.Transparent.UDPOverTCPUpstream)
			}
		}
		if len(c.LAN.Interfaces) == 0 {
			add("transparent.udp: has no effect without lan.interfaces")
		}
	}

	for _, l := range []struct {
		key   string
		addrs AddrList
	}{{"http", c.Listen.HTTP}, {"socks", c.Listen.SOCKS}, {"mixed", c.Listen.Mixed}} {
		for i, s := range l.addrs {
			if a, err := ParseListenAddr(s); err == nil && a.AllAddresses() {
				add("listen.%s[%d]: %q listens on every address, including WAN-facing ones", l.key, i, s)
			}
		}
	}
	if c.Admin != "" {
		if host, _, err := splitHostPort(c.Admin, true); err == nil && !isLoopbackHost(host) {
			add("admin: %q is reachable from other hosts and shows live flows", c.Admin)
		}
	}
	if len(c.LAN.Interfaces) == 0 && len(c.Listen.HTTP) == 0 && len(c.Listen.SOCKS) == 0 && len(c.Listen.Mixed) == 0 {
		add("nothing to serve: no lan.interfaces and no listen addresses")
	}
	return w
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// withoutUDP names the upstreams behind name (an upstream or a group's
// members) that cannot carry UDP, quoted.
func (c *Config) withoutUDP(name string) []string {
	var out []string
	check := func(n string) {
		if u := c.Upstream(n); u != nil && !u.SupportsUDP() {
			out = append(out, sprintf("upstream %q", n))
		}
	}
	if g := c.Group(name); g != nil && c.Upstream(name) == nil {
		for _, m := range g.Upstreams {
			check(m)
		}
		return out
	}
	check(name)
	return out
}

// IsCatchAll reports whether the rule matches every flow.
func (r *Rule) IsCatchAll() bool { return covers(r, &Rule{}) }

// covers reports whether every flow b matches is also matched by a, judged
// conservatively: false means "not proven", never a false shadowing warning.
func covers(a, b *Rule) bool {
	return coversSet(a.Protocol, b.Protocol, ProtocolTCP, ProtocolUDP) &&
		coversSet(a.Inbound, b.Inbound, InboundTransparent, InboundHTTP, InboundSOCKS) &&
		coversPrefixes(a.Dst, b.Dst) &&
		coversPrefixes(a.Src, b.Src) &&
		coversPorts(a.DstPorts, b.DstPorts) &&
		coversDomains(a.Domain, b.Domain)
}

// coversSet: an empty list stands for every value in all.
func coversSet(a, b []string, all ...string) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		b = all
	}
	for _, v := range b {
		if !slices.Contains(a, v) {
			return false
		}
	}
	return true
}

// coversPrefixes: an empty list matches every flow, including (for dst)
// flows that only carry a name, so a non-empty list never covers it.
func coversPrefixes(a, b []netip.Prefix) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, bp := range b {
		if !slices.ContainsFunc(a, func(ap netip.Prefix) bool {
			return ap.Bits() <= bp.Bits() && ap.Contains(bp.Addr())
		}) {
			return false
		}
	}
	return true
}

func coversPorts(a, b []PortRange) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		b = []PortRange{{1, 65535}}
	}
	merged := slices.Clone(a)
	slices.SortFunc(merged, func(x, y PortRange) int { return int(x.From) - int(y.From) })
	out := merged[:1]
	for _, r := range merged[1:] {
		last := &out[len(out)-1]
		if int(r.From) <= int(last.To)+1 {
			last.To = max(last.To, r.To)
		} else {
			out = append(out, r)
		}
	}
	for _, r := range b {
		if !slices.ContainsFunc(out, func(m PortRange) bool { return m.From <= r.From && r.To <= m.To }) {
			return false
		}
	}
	return true
}

// coversDomains: a rule with no domain matcher also matches flows without a
// name, which no domain matcher covers.
func coversDomains(a, b []string) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, bd := range b {
		bn, err := normalizeDomain(bd)
		if err != nil {
			return false
		}
		if !slices.ContainsFunc(a, func(ad string) bool {
			an, err := normalizeDomain(ad)
			if err != nil {
				return false
			}
			if an[0] != '.' {
				return an == bn
			}
			return MatchDomain(an, strings.TrimPrefix(bn, "."))
		}) {
			return false
		}
	}
	return true
}
