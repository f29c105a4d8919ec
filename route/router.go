package route

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/internal/domain"
	"github.com/socksgate/socksgate/ruleset"
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
	rules    []compiledRule
	byDst    prefixIndex     // rules with a dst matcher, by prefix
	noDst    []int32         // ascending indices of the rules without a dst matcher
	firstDst int32           // index of the first rule on destination addresses (dst, dst_geoip); len(rules) if none
	hits     []atomic.Uint64 // per rule: flows it decided (Decision.CountHit)
	hoist    []hoistRule     // per rule: what Hoisted needs
	more     bool            // a rule has a matcher of match_more.go: flows need a moreKey

	// Resolve looks up a name for the rules on addresses (see Route); nil is the system's
	// resolver. It must be safe for concurrent use.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)

	// Device tells the LAN device behind a source address (its MAC and name), for the
	// src_mac and device matchers; it is asked only when a rule with one of them is reached,
	// at most once per Route. nil: no device is known, and such rules never match. It must be
	// safe for concurrent use.
	Device func(src netip.Addr) (mac configs.MAC, name string, ok bool)

	// GeoIP tells the country of an address (0: not known), for the dst_geoip and
	// src_geoip matchers; asked at most once per address and Route. nil: no country is
	// known, and such rules never match. It must be safe for concurrent use.
	GeoIP func(netip.Addr) geoip.Code
	// GeoPrefixes lists a country's networks in the same database, for Hoisted; nil: none.
	GeoPrefixes func(geoip.Code) []netip.Prefix
}

// resolveTimeout bounds the lookup of a name that an address rule has to decide.
const resolveTimeout = 5 * time.Second

type compiledRule struct {
	name     string
	protocol uint8 // bit set of protoBit; 0: any
	inbound  uint8 // bit set of inboundBit; 0: any
	hasDst   bool
	src      prefixSet
	ports    []configs.PortRange
	domains  []string // normalised by configs.Parse; see domain.Match
	macs     []configs.MAC
	devices  []string  // normalised by configs.Parse; see configs.MatchDeviceName
	sets     *ruleSets // the rule sets it names; nil: none
	more     *moreRule // user, domain_keyword, domain_regex, dst_geoip, src_geoip; nil: none
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
	inDNS
	inRouter
)

// protoBit is a network (a rule's protocol, a flow's network) as a bit.
func protoBit(n Network) uint8 {
	switch n {
	case TCP:
		return protoTCP
	case UDP:
		return protoUDP
	}
	return 0
}

// inboundBit is a rule's inbound name as a bit; flowInbound a flow's.
func inboundBit(in configs.Inbound) uint8 {
	switch in {
	case configs.InboundTransparent:
		return inTransparent
	case configs.InboundHTTP:
		return inHTTP
	case configs.InboundSOCKS:
		return inSOCKS
	case configs.InboundDNS:
		return inDNS
	case configs.InboundRouter:
		return inRouter
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
	case FromRouter:
		return inRouter
	}
	return 0
}

// NewRouter compiles cfg.Rules against the built upstreams (and groups, which NewUpstreams
// registers under their names). A proxy rule naming something that is not in ups is an error;
// so is one naming a rule set (NewRouterSets takes them).
func NewRouter(cfg *configs.Config, ups map[string]upstream.Upstream) (*RuleRouter, error) {
	return NewRouterSets(cfg, ups, nil)
}

// NewRouterSets is NewRouter with the rule sets the rules name, by name: the router reads
// each through its handle at every lookup, so a set reloaded from its file is in force at
// once.
func NewRouterSets(cfg *configs.Config, ups map[string]upstream.Upstream, sets map[string]*ruleset.Handle) (*RuleRouter, error) {
	r := &RuleRouter{}
	var dstRefs []prefixRef
	r.firstDst = int32(len(cfg.Rules))
	for i, cr := range cfg.Rules {
		c := compiledRule{
			name:    cr.Name,
			hasDst:  len(cr.Dst) > 0 || len(cr.DstSet) > 0,
			src:     newPrefixSet(cr.Src),
			ports:   cr.DstPorts,
			domains: cr.Domain,
			macs:    cr.SrcMAC,
			devices: cr.Device,
			more:    newMoreRule(&cr),
		}
		r.more = r.more || c.more != nil
		for _, p := range cr.Protocol {
			b := protoBit(p)
			if b == 0 {
				return nil, fmt.Errorf("rules[%d].protocol: unknown protocol %v", i, p)
			}
			c.protocol |= b
		}
		for _, in := range cr.Inbound {
			b := inboundBit(in)
			if b == 0 {
				return nil, fmt.Errorf("rules[%d].inbound: unknown inbound %v", i, in)
			}
			c.inbound |= b
		}
		var err error
		if c.sets, err = compileSets(i, &cr, sets); err != nil {
			return nil, err
		}
		r.hoist = append(r.hoist, newHoistRule(&cr, c.sets))
		if (c.hasDst || c.more.onDst()) && r.firstDst == int32(len(cfg.Rules)) {
			r.firstDst = int32(i)
		}
		c.decision.Rule = cr.Name
		c.decision.ByDst = c.hasDst
		c.decision.Action = cr.Action
		switch cr.Action {
		case ActionBlock:
		case ActionDirect:
			c.decision.Way = configs.SchemeDirect
			c.decision.Upstream = ups[configs.SchemeDirect]
			if c.decision.Upstream == nil {
				return nil, fmt.Errorf("rules[%d]: no direct upstream", i)
			}
		case ActionProxy:
			u, ok := ups[cr.Upstream]
			if !ok || u == nil {
				return nil, fmt.Errorf("rules[%d].upstream: no upstream or group named %q", i, cr.Upstream)
			}
			c.decision.Upstream, c.decision.Way = u, cr.Upstream
		default:
			return nil, fmt.Errorf("rules[%d].action: unknown action %v", i, cr.Action)
		}
		if c.hasDst && (c.sets == nil || !c.sets.checksDst) {
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
	r.hits = make([]atomic.Uint64, len(r.rules))
	for i := range r.rules {
		r.rules[i].decision.hits = &r.hits[i]
	}
	r.byDst = buildPrefixIndex(dstRefs)
	return r, nil
}

// Hits is, per rule in the config's order, the flows it decided since the router was built.
func (r *RuleRouter) Hits() []uint64 {
	out := make([]uint64, len(r.hits))
	for i := range r.hits {
		out[i] = r.hits[i].Load()
	}
	return out
}

// noMatch is the decision when no rule matches (never, after configs.Parse).
var noMatch = Decision{Action: ActionBlock, Rule: "no rule matched"}

// Route returns the decision of the first matching rule, or block when none matches.
//
// A flow with only a name (Dst invalid) is matched against the rules on addresses too, with
// the addresses the name stands for: when a rule with a dst matcher comes before the first rule
// the name alone matches, the name is resolved on the gateway and every address it gives is
// matched. If any of them is blocked, the flow is; otherwise the earliest rule any of them
// matches decides, and Decision.Addr is that address: the one to dial, so that a second lookup
// cannot give another. (So `dst: [127.0.0.1/32] → block` also blocks `localhost`.) A name that
// cannot be resolved is decided by the rules on names alone. A name no address rule could claim
// is never resolved: nothing is asked of the resolver for it.
func (r *RuleRouter) Route(ctx context.Context, f Flow) Decision {
	i := r.match(&f)
	if !f.Dst.IsValid() && f.Host != "" && r.firstDst < r.orEnd(i) {
		return r.routeResolved(ctx, f, i)
	}
	if i >= 0 {
		return r.decide(i)
	}
	return noMatch
}

func (r *RuleRouter) orEnd(i int32) int32 {
	if i < 0 {
		return int32(len(r.rules))
	}
	return i
}

// decide is rule i's decision.
func (r *RuleRouter) decide(i int32) Decision { return r.rules[i].decision }

// routeResolved decides a name-only flow with the addresses of its name; byName is the
// rule the name alone matched (-1: none).
func (r *RuleRouter) routeResolved(ctx context.Context, f Flow, byName int32) Decision {
	resolve := r.Resolve
	if resolve == nil {
		resolve = defaultResolve
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	addrs, err := resolve(ctx, f.Host)
	cancel()
	if err != nil || len(addrs) == 0 {
		if byName >= 0 {
			return r.decide(byName)
		}
		return noMatch
	}
	best, bestAddr := int32(-1), netip.Addr{}
	for _, a := range addrs {
		fa := f
		fa.Dst = netip.AddrPortFrom(a.Unmap(), f.Port)
		j := r.match(&fa)
		if j < 0 {
			continue
		}
		if r.rules[j].decision.Action == ActionBlock {
			d := r.decide(j)
			d.Addr = fa.Dst.Addr()
			return d
		}
		if best < 0 || j < best {
			best, bestAddr = j, fa.Dst.Addr()
		}
	}
	if best < 0 {
		return noMatch
	}
	d := r.decide(best)
	d.Addr = bestAddr
	return d
}

// match returns the index of the first rule matching f, or -1.
func (r *RuleRouter) match(f *Flow) int32 {
	k := flowKey{
		proto:   protoBit(f.Network),
		inbound: flowInbound(f.Inbound),
		src:     f.Src.Addr().Unmap().WithZone(""), // prefixes never contain a zoned address
		port:    f.DstPort(),
		host:    f.Host,
		device:  r.Device,
	}
	k.dst = f.Dst.Addr().Unmap().WithZone("")
	if r.more {
		k.more = r.newMoreKey(f)
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
	if dst := k.dst; dst.IsValid() {
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

// flowKey is a flow reduced to what the matchers compare, computed once per Route. The
// source's device is asked for (device) only when a rule needs it, once.
type flowKey struct {
	proto, inbound uint8
	src, dst       netip.Addr // dst: for the rules that check it themselves (ruleSets)
	port           uint16
	host           string

	device  func(netip.Addr) (configs.MAC, string, bool)
	asked   bool
	known   bool
	mac     configs.MAC
	devName string

	more moreKey // for the matchers of match_more.go
}

// srcDevice is the source's device, asked for once.
func (k *flowKey) srcDevice() (configs.MAC, string, bool) {
	if !k.asked {
		k.asked = true
		if k.device != nil && k.src.IsValid() {
			k.mac, k.devName, k.known = k.device(k.src)
		}
	}
	return k.mac, k.devName, k.known
}

// macOK and deviceOK are the src_mac and device matchers.
func (c *compiledRule) macOK(k *flowKey) bool {
	if len(c.macs) == 0 {
		return true
	}
	mac, _, ok := k.srcDevice()
	return ok && slices.Contains(c.macs, mac)
}

func (c *compiledRule) deviceOK(k *flowKey) bool {
	if len(c.devices) == 0 {
		return true
	}
	_, name, ok := k.srcDevice()
	return ok && name != "" && slices.ContainsFunc(c.devices, func(d string) bool { return configs.MatchDeviceName(d, name) })
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
	if !c.srcOK(k) {
		return false
	}
	if c.sets != nil && c.sets.checksDst && !c.sets.dstOK(k.dst) {
		return false
	}
	if len(c.ports) > 0 {
		ok := false
		for _, pr := range c.ports {
			if pr.From <= k.port && k.port <= pr.To { // not pr.Contains: see its comment
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if c.hasDomainMatcher() && !c.literalDomain(k.host) && !c.domainSetOK(k) {
		return false
	}
	return c.macOK(k) && c.deviceOK(k) && (c.more == nil || c.more.matches(k))
}

// literalDomain reports whether one of the rule's domain patterns matches host.
func (c *compiledRule) literalDomain(host string) bool {
	for _, d := range c.domains {
		if domain.Match(d, host) {
			return true
		}
	}
	return false
}

// RouteQuery decides a DNS query for name from src: the first rule that can speak of a name
// before any address or port is known decides it. That is a rule without dst, dst_geoip,
// dst_ports or protocol matchers (those are about flows, and a query has neither a destination address
// nor the port its flows will use), whose inbound, if given, includes dns, and whose src and
// domain matchers accept the query. Nothing is resolved to decide: the name is what is asked.
func (r *RuleRouter) RouteQuery(src netip.Addr, name string) Decision {
	k := flowKey{inbound: inDNS, src: src.Unmap().WithZone(""), host: name, device: r.Device, more: moreKey{geo: r.GeoIP}}
	for _, i := range r.noDst {
		c := &r.rules[i]
		if c.protocol != 0 || len(c.ports) > 0 || c.hasDst || c.more.onDst() {
			continue
		}
		if c.matchesRest(&k) {
			return c.decision
		}
	}
	return noMatch
}

// defaultResolve is the system's resolver; route's tests replace it (they ask no DNS server).
var defaultResolve = lookupIP

func lookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
