package route

import (
	"net/netip"
	"reflect"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/ruleset"
)

// hoistRule is what Hoisted needs of one rule: whether the kernel's capture can bring it
// flows at all, its action, whether destination prefixes are all it matches on, and those
// prefixes (literal ones, the cidr sets and the dst_geoip countries' networks, read when
// Hoisted is asked).
type hoistRule struct {
	name    string
	kernel  bool // inbound includes transparent or router (or any)
	direct  bool
	dstOnly bool // no matcher but dst, dst_set and dst_geoip
	hasDst  bool
	dstLit  *ruleset.CIDRs
	dstSets []*ruleset.Handle
	dstGeo  []geoip.Code
}

func newHoistRule(cr *configs.Rule, sets *ruleSets) hoistRule {
	h := hoistRule{name: cr.Name, direct: cr.Action == configs.ActionDirect, hasDst: len(cr.Dst) > 0 || len(cr.DstSet) > 0 || len(cr.DstGeoIP) > 0}
	h.kernel = len(cr.Inbound) == 0
	for _, in := range cr.Inbound {
		if in == configs.InboundTransparent || in == configs.InboundRouter {
			h.kernel = true
		}
	}
	// Any field but these is a matcher (today's and those added later), which makes the rule
	// match less than its destinations: such a rule is never hoisted, and when not direct it
	// could claim any flow to its destinations.
	rest := *cr
	rest.Name, rest.Action, rest.Upstream, rest.Implicit, rest.Dst, rest.DstSet, rest.DstGeoIP = "", 0, "", false, nil, nil, nil
	h.dstOnly = h.hasDst && reflect.ValueOf(rest).IsZero()
	if len(cr.Dst) > 0 || len(cr.DstSet) > 0 {
		h.dstLit = ruleset.PrefixSet(cr.Dst)
		if sets != nil {
			h.dstSets = sets.dst
		}
	}
	h.dstGeo = cr.DstGeoIP
	return h
}

// dst is every destination the rule's dst matchers stand for now: dst and dst_set are one
// matcher (their union), dst_geoip another (its countries' networks; geo gives them, nil: no
// database, and dst_geoip stands for none, as it matches none), and a rule with both
// matches where both do.
func (h *hoistRule) dst(geo func(geoip.Code) []netip.Prefix) *ruleset.CIDRs {
	var d *ruleset.CIDRs
	if h.dstLit != nil {
		all := []*ruleset.CIDRs{h.dstLit}
		for _, s := range h.dstSets {
			all = append(all, s.CIDRs())
		}
		d = ruleset.Union(all...)
	}
	if len(h.dstGeo) == 0 {
		return d
	}
	var all []*ruleset.CIDRs
	if geo != nil {
		for _, cc := range h.dstGeo {
			all = append(all, ruleset.PrefixSet(geo(cc)))
		}
	}
	g := ruleset.Union(all...)
	if d == nil {
		return g
	}
	return d.Minus(d.Minus(g))
}

// Hoisted returns the destinations that the rules send direct whatever else a flow to them
// is (its protocol, source, port, name, inbound), as far as the kernel's capture could bring
// it (transparent or router), and the rules they come from: the kernel can route those flows
// itself, and socksgate would only relay them.
//
// Walking the rules in order, a direct rule whose only matchers are destination prefixes (dst,
// dst_set, dst_geoip: a country is its networks in the database of GeoPrefixes) gives its prefixes, minus those of every earlier rule that could take some of
// their flows first: a proxy or block rule with a dst matcher claims its own prefixes. A
// proxy or block rule without a dst matcher could take a flow to any address (it matches on
// a name, a source, a port...), so the walk stops there. Earlier direct rules claim nothing
// (whatever they take goes direct too), and rules whose inbound excludes both transparent
// and router never see a flow the kernel captures. The sets and the country database are read
// as they are now: ask again after one is reloaded.
func (r *RuleRouter) Hoisted() (dst *ruleset.CIDRs, rules []string) {
	var claimed []*ruleset.CIDRs
	var claimedAll *ruleset.CIDRs // the union of claimed, made when needed
	var out []*ruleset.CIDRs
	for i := range r.hoist {
		h := &r.hoist[i]
		if !h.kernel {
			continue
		}
		if h.direct {
			if !h.dstOnly {
				continue
			}
			if claimedAll == nil {
				claimedAll = ruleset.Union(claimed...)
			}
			d := h.dst(r.GeoPrefixes).Minus(claimedAll)
			if d.Ranges() > 0 {
				out = append(out, d)
				rules = append(rules, h.name)
			}
			continue
		}
		if !h.hasDst {
			break
		}
		claimed = append(claimed, h.dst(r.GeoPrefixes))
		claimedAll = nil
	}
	return ruleset.Union(out...), rules
}

// HoistedPrefixes is Hoisted as prefixes.
func (r *RuleRouter) HoistedPrefixes() ([]netip.Prefix, []string) {
	d, rules := r.Hoisted()
	return d.Prefixes(), rules
}
