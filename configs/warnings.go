package configs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
)

// MaxGraceUnderUnit is the longest timeouts.grace the shipped systemd unit's TimeoutStopSec=20
// leaves room for (a stop takes grace plus the rules' removal, about a second); beyond it
// Warnings says to raise TimeoutStopSec.
const MaxGraceUnderUnit = 15 * time.Second

// Warnings returns non-fatal findings about a valid configuration, for
// `socksgate check` and the start-up log: deprecated values Parse read as
// their replacement (relay: kernel), rules that can never match
// because an earlier rule takes every flow they would match, the implicit
// default rule, upstreams and groups nothing uses, UDP routed to upstreams
// without UDP, listeners reachable from every address, and settings that have
// no effect. Whether the file is readable by others is the daemon's check.
func (c *Config) Warnings() []string {
	w := slices.Clone(c.deprecated)
	add := func(format string, args ...any) { w = append(w, sprintf(format, args...)) }

	shadows := newShadowIndex(c.Rules)
	for j := range c.Rules {
		if i := shadows.coveredBy(j); i >= 0 {
			add("rules[%d] (%q): never matches: every flow it matches is taken first by rules[%d] (%q)",
				j, c.Rules[j].Name, i, c.Rules[i].Name)
		}
		shadows.add(j)
		r := &c.Rules[j]
		if len(r.Protocol) > 0 && !slices.Contains(r.Protocol, ProtocolTCP) &&
			len(r.Inbound) > 0 && !slices.ContainsFunc(r.Inbound, func(in Inbound) bool { return in != InboundHTTP }) {
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

	c.ruleSetWarnings(add)
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
	w = append(w, c.tlsWarnings()...)
	for i := range c.Groups {
		if !used[c.Groups[i].Name] {
			add("groups[%d] (%q): not used by any rule", i, c.Groups[i].Name)
		}
	}

	if c.Transparent.UDP {
		ups := make(map[string]*Upstream, len(c.Upstreams))
		for i := range c.Upstreams {
			if u := &c.Upstreams[i]; ups[u.Name] == nil {
				ups[u.Name] = u
			}
		}
		groups := make(map[string]*Group, len(c.Groups))
		for i := range c.Groups {
			if g := &c.Groups[i]; groups[g.Name] == nil {
				groups[g.Name] = g
			}
		}
		for i := range c.Rules {
			r := &c.Rules[i]
			if r.Action != ActionProxy || (len(r.Protocol) > 0 && !slices.Contains(r.Protocol, ProtocolUDP)) {
				continue
			}
			if lacking := withoutUDP(r.Upstream, ups, groups); len(lacking) > 0 {
				add("rules[%d] (%q): %s cannot carry UDP; UDP flows it matches follow transparent.udp_without_support (%s)",
					i, r.Name, strings.Join(lacking, ", "), c.Transparent.UDPOverTCPUpstream)
			}
		}
		if len(c.LAN.Interfaces) == 0 {
			add("transparent.udp: has no effect without lan.interfaces")
		}
	}
	if c.Transparent.ICMP == ICMPBlock && len(c.LAN.Interfaces) == 0 {
		add("transparent.icmp: block has no effect without lan.interfaces: pings from the LAN are routed")
	}
	if c.Transparent.QUIC == QUICBlock && !c.Transparent.UDP {
		add("transparent.quic: block has no effect without transparent.udp: UDP is not captured, QUIC goes direct")
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
	if c.Admin.Listen != "" {
		if host, _, err := splitHostPort(c.Admin.Listen, true); err == nil && !isLoopbackHost(host) && c.Admin.Secret == "" {
			add("admin: %q is reachable from other hosts without a secret: anyone who reaches it sees the live flows "+
				"and can close them, switch upstreams and reload the config; set admin.secret", c.Admin.Listen)
		}
	}
	if len(c.HA.VIP) > 0 && c.Admin.Listen == "" {
		add("ha.vip: has no effect without admin: which router serves is reported on the admin endpoint")
	}
	if g := c.Timeouts.Grace.Std(); g > MaxGraceUnderUnit {
		add("timeouts.grace: %s is over %s: a stop takes up to grace plus the rules' removal, and the systemd unit "+
			"(dist/socksgate.service) must allow it (TimeoutStopSec at least grace + 5s, %s here) or it ends socksgate "+
			"with SIGKILL and the rules stay in place", g, MaxGraceUnderUnit, (g + 5*time.Second).Round(time.Second))
	}
	w = append(w, c.matcherWarnings()...)
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
func withoutUDP(name string, ups map[string]*Upstream, groups map[string]*Group) []string {
	var out []string
	check := func(n string) {
		if u := ups[n]; u != nil && !u.SupportsUDP() {
			out = append(out, sprintf("upstream %q", n))
		}
	}
	if g := groups[name]; g != nil && ups[name] == nil {
		for _, m := range g.Upstreams {
			check(m)
		}
		return out
	}
	check(name)
	return out
}

// maxShadowChecks bounds the earlier rules compared with each rule when
// looking for the one that shadows it: a rule with more candidates than that
// is not reported (the finding is conservative anyway), and checking stays
// linear in the number of rules.
const maxShadowChecks = 256

// shadowIndex finds, for each rule, the first earlier rule that covers it,
// comparing it only with the earlier rules that could: an earlier rule with
// a dst matcher must hold a prefix containing the rule's first dst prefix;
// one without dst but with src, a prefix containing its first src prefix;
// one with neither but with a domain matcher, a pattern matching its first
// domain; and of the earlier rules with none of those matchers, only the
// first of each distinct protocol/inbound/ports combination can be first.
// A rule whose dst, src and domain matchers are rule sets alone covers only
// rules naming those sets: they are candidates for those rules only.
type shadowIndex struct {
	rules    []Rule
	dst, src prefixIndex
	domain   map[string][]int
	rest     []int
	restSeen map[string]bool
	sets     []int // rules whose only matchers of those kinds are rule sets
}

// prefixIndex lists rules by each prefix of a matcher, and the prefix
// lengths present per address family.
type prefixIndex struct {
	rules map[netip.Prefix][]int
	lens4 [33]bool
	lens6 [129]bool
}

func (x *prefixIndex) add(ps []netip.Prefix, i int) {
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if l := x.rules[p]; len(l) > 0 && l[len(l)-1] == i {
			continue
		}
		x.rules[p] = append(x.rules[p], i)
		if p.Addr().Is4() {
			x.lens4[p.Bits()] = true
		} else {
			x.lens6[p.Bits()] = true
		}
	}
}

// containing appends the rules listed under a prefix that contains p.
func (x *prefixIndex) containing(p netip.Prefix, out [][]int) [][]int {
	lens := x.lens6[:]
	if p.Addr().Is4() {
		lens = x.lens4[:]
	}
	for bits := 0; bits <= p.Bits(); bits++ {
		if !lens[bits] {
			continue
		}
		q, err := p.Addr().Prefix(bits)
		if err == nil {
			if l := x.rules[q]; len(l) > 0 {
				out = append(out, l)
			}
		}
	}
	return out
}

func newShadowIndex(rules []Rule) *shadowIndex {
	return &shadowIndex{
		rules:    rules,
		dst:      prefixIndex{rules: map[netip.Prefix][]int{}},
		src:      prefixIndex{rules: map[netip.Prefix][]int{}},
		domain:   map[string][]int{},
		restSeen: map[string]bool{},
	}
}

// add makes rule i a candidate for the rules after it.
func (x *shadowIndex) add(i int) {
	r := &x.rules[i]
	switch {
	case r.HasSets() && len(r.Dst) == 0 && len(r.Src) == 0 && len(r.Domain) == 0:
		// It covers only rules naming the same sets, and stays out of rest, whose first
		// of a kind must be a rule without matchers of these kinds.
		x.sets = append(x.sets, i)
	case len(r.Dst) > 0:
		x.dst.add(r.Dst, i)
	case len(r.Src) > 0:
		x.src.add(r.Src, i)
	case len(r.Domain) > 0:
		for _, d := range r.Domain {
			n, err := normalizeDomain(d)
			if err != nil {
				continue
			}
			if l := x.domain[n]; len(l) == 0 || l[len(l)-1] != i {
				x.domain[n] = append(l, i)
			}
		}
	default:
		ports := slices.Clone(r.DstPorts)
		sort.Slice(ports, func(i, j int) bool {
			return cmp.Or(cmp.Compare(ports[i].From, ports[j].From), cmp.Compare(ports[i].To, ports[j].To)) < 0
		})
		key := fmt.Sprint(sortedSet(r.Protocol), sortedSet(r.Inbound), ports, r.matchersKey())
		if !x.restSeen[key] {
			x.restSeen[key] = true
			x.rest = append(x.rest, i)
		}
	}
}

func sortedSet[T cmp.Ordered](s []T) []T {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// coveredBy returns the first rule added so far that covers rule j, or -1.
func (x *shadowIndex) coveredBy(j int) int {
	b := &x.rules[j]
	var lists [][]int
	if len(b.Dst) > 0 && b.Dst[0].IsValid() {
		lists = x.dst.containing(b.Dst[0], lists)
	}
	if len(b.Src) > 0 && b.Src[0].IsValid() {
		lists = x.src.containing(b.Src[0], lists)
	}
	if len(b.Domain) > 0 {
		if bn, err := normalizeDomain(b.Domain[0]); err == nil {
			base := strings.TrimPrefix(bn, ".")
			for _, k := range []string{bn, "." + base} {
				if l := x.domain[k]; len(l) > 0 {
					lists = append(lists, l)
				}
			}
			for k := strings.IndexByte(base, '.'); k >= 0; {
				if l := x.domain[base[k:]]; len(l) > 0 {
					lists = append(lists, l)
				}
				next := strings.IndexByte(base[k+1:], '.')
				if next < 0 {
					break
				}
				k += 1 + next
			}
		}
	}
	lists = append(lists, x.rest)
	if b.HasSets() {
		lists = append(lists, x.sets)
	}
	// Each list is in rule order: the first maxShadowChecks of their union
	// are among the first maxShadowChecks of each.
	var cand []int
	for _, l := range lists {
		cand = append(cand, l[:min(len(l), maxShadowChecks)]...)
	}
	slices.Sort(cand)
	cand = slices.Compact(cand)
	for _, i := range cand[:min(len(cand), maxShadowChecks)] {
		if covers(&x.rules[i], b) {
			return i
		}
	}
	return -1
}

// IsCatchAll reports whether the rule matches every flow.
func (r *Rule) IsCatchAll() bool { return covers(r, &Rule{}) }

// covers reports whether every flow b matches is also matched by a, judged
// conservatively: false means "not proven", never a false shadowing warning.
func covers(a, b *Rule) bool {
	return coversSet(a.Protocol, b.Protocol, ProtocolTCP, ProtocolUDP) &&
		coversSet(a.Inbound, b.Inbound, InboundTransparent, InboundHTTP, InboundSOCKS, InboundDNS, InboundRouter) &&
		coversWithSets(a.Dst, b.Dst, a.DstSet, b.DstSet, coversPrefixes) &&
		coversWithSets(a.Src, b.Src, a.SrcSet, b.SrcSet, coversPrefixes) &&
		coversPorts(a.DstPorts, b.DstPorts) &&
		coversWithSets(a.Domain, b.Domain, a.DomainSet, b.DomainSet, coversDomains) &&
		coversList(a.SrcMAC, b.SrcMAC) &&
		coversList(a.Device, b.Device) &&
		coversMatchers(a, b)
}

// coversList: an empty list matches every flow (those without the value too), so a
// non-empty one covers only a list it contains whole.
func coversList[T comparable](a, b []T) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, v := range b {
		if !slices.Contains(a, v) {
			return false
		}
	}
	return true
}

// coversSet: an empty list stands for every value in all.
func coversSet[T comparable](a, b []T, all ...T) bool {
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
	sort.Slice(merged, func(i, j int) bool { return merged[i].From < merged[j].From })
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
