package route

import (
	"fmt"
	"net/netip"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/ruleset"
)

// ruleSets are a rule's references to rule sets: each part of the matcher of the same kind
// (dst_set of dst, src_set of src, domain_set of domain), which matches when a literal value
// or an entry of any named set does. The sets are read through their handles at every
// lookup, so a set reloaded from its file is in force at once, without a new router.
type ruleSets struct {
	// dstLit are the rule's dst prefixes when a dst_set makes the rule check its destination
	// itself: such a rule is not in the prefix index (its sets change while it is in force).
	dstLit              prefixSet
	dst, src, domain    []*ruleset.Handle
	checksDst           bool
	dstN, srcN, domainN []string // the sets' names, for Explain
}

// compileSets resolves rule i's set names; nil when it names none.
func compileSets(i int, cr *configs.Rule, sets map[string]*ruleset.Handle) (*ruleSets, error) {
	if !cr.HasSets() {
		return nil, nil
	}
	rs := &ruleSets{checksDst: len(cr.DstSet) > 0, dstN: cr.DstSet, srcN: cr.SrcSet, domainN: cr.DomainSet}
	if rs.checksDst {
		rs.dstLit = newPrefixSet(cr.Dst)
	}
	for _, m := range []struct {
		key   string
		names []string
		out   *[]*ruleset.Handle
	}{{"dst_set", cr.DstSet, &rs.dst}, {"src_set", cr.SrcSet, &rs.src}, {"domain_set", cr.DomainSet, &rs.domain}} {
		for j, n := range m.names {
			h := sets[n]
			if h == nil {
				return nil, fmt.Errorf("rules[%d].%s[%d]: rule set %q is not loaded", i, m.key, j, n)
			}
			*m.out = append(*m.out, h)
		}
	}
	return rs, nil
}

// dstOK is the dst matcher of a rule that checks its destination itself: the flow has an
// address in the rule's prefixes or sets.
func (s *ruleSets) dstOK(dst netip.Addr) bool {
	if !dst.IsValid() {
		return false
	}
	if s.dstLit.contains(dst) {
		return true
	}
	for _, h := range s.dst {
		if h.CIDRs().Contains(dst) {
			return true
		}
	}
	return false
}

// srcOK is the src matcher: lit (the rule's src prefixes) or a src_set holds the source.
func (c *compiledRule) srcOK(k *flowKey) bool {
	hasSets := c.sets != nil && len(c.sets.src) > 0
	if c.src.empty() && !hasSets {
		return true
	}
	if !k.src.IsValid() {
		return false
	}
	if !c.src.empty() && c.src.contains(k.src) {
		return true
	}
	return hasSets && setHolds(c.sets.src, k.src) >= 0
}

// domainSetOK reports whether a domain_set holds the flow's name (false without either).
func (c *compiledRule) domainSetOK(k *flowKey) bool {
	return c.sets != nil && k.host != "" && domainSetHolds(c.sets.domain, k.host) >= 0
}

// hasDomainMatcher reports whether the rule has a domain matcher (domain or domain_set).
func (c *compiledRule) hasDomainMatcher() bool {
	return len(c.domains) > 0 || c.sets != nil && len(c.sets.domain) > 0
}

func setHolds(hs []*ruleset.Handle, a netip.Addr) int {
	for i, h := range hs {
		if h.CIDRs().Contains(a) {
			return i
		}
	}
	return -1
}

func domainSetHolds(hs []*ruleset.Handle, name string) int {
	for i, h := range hs {
		if h.Domains().Match(name) {
			return i
		}
	}
	return -1
}

// SetMatch says which rule set made a matcher accept a flow.
type SetMatch struct {
	Matcher Matcher // MatchDst, MatchSrc or MatchDomain
	Set     string
}

// setMatches lists, for a rule that matched, each matcher that only a set made match, and
// that set (the first holding the flow's value).
func (c *compiledRule) setMatches(k *flowKey) []SetMatch {
	if c.sets == nil {
		return nil
	}
	s := c.sets
	var out []SetMatch
	if s.checksDst && k.dst.IsValid() && !s.dstLit.contains(k.dst) {
		if i := setHolds(s.dst, k.dst); i >= 0 {
			out = append(out, SetMatch{MatchDst, s.dstN[i]})
		}
	}
	if len(s.src) > 0 && k.src.IsValid() && (c.src.empty() || !c.src.contains(k.src)) {
		if i := setHolds(s.src, k.src); i >= 0 {
			out = append(out, SetMatch{MatchSrc, s.srcN[i]})
		}
	}
	if len(s.domain) > 0 && k.host != "" && !c.literalDomain(k.host) {
		if i := domainSetHolds(s.domain, k.host); i >= 0 {
			out = append(out, SetMatch{MatchDomain, s.domainN[i]})
		}
	}
	return out
}
