package route

import (
	"net/netip"
	"slices"

	"github.com/socksgate/socksgate/configs"
)

// Matcher names one of a rule's matchers as the config spells it.
type Matcher string

// The matchers, in the order Explain reports them.
const (
	MatchProtocol      Matcher = "protocol"
	MatchInbound       Matcher = "inbound"
	MatchUser          Matcher = "user"
	MatchSrc           Matcher = "src"
	MatchSrcGeoIP      Matcher = "src_geoip"
	MatchDst           Matcher = "dst"
	MatchDstGeoIP      Matcher = "dst_geoip"
	MatchDstPorts      Matcher = "dst_ports"
	MatchDomain        Matcher = "domain"
	MatchDomainKeyword Matcher = "domain_keyword"
	MatchDomainRegex   Matcher = "domain_regex"
	MatchSrcMAC        Matcher = "src_mac"
	MatchDevice        Matcher = "device"
)

// RuleVerdict is what one rule says of a flow: it matched, or which of its matchers did not.
type RuleVerdict struct {
	Index   int    // position in the config's rules, 0-based
	Rule    string // its name
	Matched bool
	// Failed lists every matcher of the rule that rejected the flow (not only the first), in
	// the order of the Match constants.
	Failed []Matcher
	// NeedsAddress says the rule has a dst or dst_geoip matcher and the flow has only a name:
	// Route resolves the name to decide this rule (the matcher is in Failed: no address is
	// known here).
	NeedsAddress bool
	// Unfit says the rule can never decide a DNS query (ExplainQuery): it has a dst,
	// dst_geoip, dst_ports or protocol matcher, which speak of flows. Failed lists those
	// matchers.
	Unfit bool
	// Sets says, for a rule that matched, which rule set made each of its matchers match
	// where a set did (and none of the matcher's literal values).
	Sets     []SetMatch
	Decision Decision // the rule's decision, whether or not it matched
}

// Explain says, rule by rule in order, why each rule before the one that decides f did not
// match it and that the deciding one did; the last verdict is the match (or, when no rule
// matches, the last rule's refusal). It is Route without the index, spelled out: for a flow
// with an address the matching verdict's rule is Route's. For a flow with only a name it
// resolves nothing: a rule with a dst matcher is reported with NeedsAddress, and the match is
// the rule the name alone decides (what Route decides when the name does not resolve). When
// a NeedsAddress verdict comes before the match, Route would resolve the name.
func (r *RuleRouter) Explain(f Flow) []RuleVerdict {
	k := r.flowKeyOf(&f)
	dst := f.Dst.Addr().Unmap().WithZone("")
	var inDst map[int32]bool
	if dst.IsValid() {
		inDst = map[int32]bool{}
		es, e := r.byDst.longest(dst)
		for ; e >= 0; e = es[e].parent {
			for _, i := range es[e].rules {
				inDst[i] = true
			}
		}
	}
	var out []RuleVerdict
	for i := range r.rules {
		c := &r.rules[i]
		v := RuleVerdict{Index: i, Rule: c.name, Decision: c.decision}
		v.Failed = c.failedRest(&k, func() (Matcher, bool) {
			switch {
			case !c.hasDst:
				return "", false
			case !dst.IsValid():
				v.NeedsAddress = f.Host != ""
				return MatchDst, true
			case c.sets != nil && c.sets.checksDst:
				return MatchDst, !c.sets.dstOK(dst)
			case !inDst[int32(i)]:
				return MatchDst, true
			}
			return "", false
		})
		if c.more.onDst() && !dst.IsValid() && f.Host != "" {
			v.NeedsAddress = true
		}
		v.Matched = len(v.Failed) == 0
		if v.Matched {
			v.Sets = c.setMatches(&k)
		}
		out = append(out, v)
		if v.Matched {
			break
		}
	}
	return out
}

// ExplainQuery is Explain for a DNS query for name from src, with RouteQuery's semantics: a
// rule with a dst, dst_geoip, dst_ports or protocol matcher is Unfit and never decides a query, and the
// query's inbound is dns.
func (r *RuleRouter) ExplainQuery(src netip.Addr, name string) []RuleVerdict {
	k := flowKey{inbound: inDNS, src: src.Unmap().WithZone(""), host: name, device: r.Device, more: moreKey{geo: r.GeoIP}}
	var out []RuleVerdict
	for i := range r.rules {
		c := &r.rules[i]
		v := RuleVerdict{Index: i, Rule: c.name, Decision: c.decision}
		if c.protocol != 0 {
			v.Failed = append(v.Failed, MatchProtocol)
		}
		if c.hasDst {
			v.Failed = append(v.Failed, MatchDst)
		}
		if c.more.onDst() {
			v.Failed = append(v.Failed, MatchDstGeoIP)
		}
		if len(c.ports) > 0 {
			v.Failed = append(v.Failed, MatchDstPorts)
		}
		if len(v.Failed) > 0 {
			v.Unfit = true
		} else {
			v.Failed = c.failedRest(&k, func() (Matcher, bool) { return "", false })
			v.Matched = len(v.Failed) == 0
			if v.Matched {
				v.Sets = c.setMatches(&k)
			}
		}
		out = append(out, v)
		if v.Matched {
			break
		}
	}
	return out
}

func (r *RuleRouter) flowKeyOf(f *Flow) flowKey {
	return flowKey{
		more:    r.newMoreKey(f),
		device:  r.Device,
		proto:   protoBit(f.Network),
		inbound: flowInbound(f.Inbound),
		src:     f.Src.Addr().Unmap().WithZone(""), // prefixes never contain a zoned address
		dst:     f.Dst.Addr().Unmap().WithZone(""),
		port:    f.DstPort(),
		host:    f.Host,
	}
}

// failedRest is matchesRest that goes on after the first failure and says which matchers
// failed; dstFailed settles the dst matcher, which the caller knows about.
func (c *compiledRule) failedRest(k *flowKey, dstFailed func() (Matcher, bool)) []Matcher {
	var failed []Matcher
	if c.protocol != 0 && c.protocol&k.proto == 0 {
		failed = append(failed, MatchProtocol)
	}
	if c.inbound != 0 && c.inbound&k.inbound == 0 {
		failed = append(failed, MatchInbound)
	}
	failed = c.more.failed(k, failed, MatchUser)
	if !c.srcOK(k) {
		failed = append(failed, MatchSrc)
	}
	failed = c.more.failed(k, failed, MatchSrcGeoIP)
	if m, bad := dstFailed(); bad {
		failed = append(failed, m)
	}
	failed = c.more.failed(k, failed, MatchDstGeoIP)
	if len(c.ports) > 0 && !slices.ContainsFunc(c.ports, func(pr configs.PortRange) bool { return pr.Contains(k.port) }) {
		failed = append(failed, MatchDstPorts)
	}
	if c.hasDomainMatcher() && !c.literalDomain(k.host) && !c.domainSetOK(k) {
		failed = append(failed, MatchDomain)
	}
	failed = c.more.failed(k, failed, MatchDomainKeyword, MatchDomainRegex)
	if !c.macOK(k) {
		failed = append(failed, MatchSrcMAC)
	}
	if !c.deviceOK(k) {
		failed = append(failed, MatchDevice)
	}
	return failed
}
