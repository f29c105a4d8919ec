package route

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
)

// moreRule holds a rule's user, domain_keyword, domain_regex, dst_geoip and src_geoip
// matchers (configs/matchers.go). A rule without any has none (compiledRule.more is nil), so
// that the rules most flows meet pay one nil check for them.
type moreRule struct {
	users    []string
	keywords []string // lowercased by configs.Parse
	regexes  []*regexp.Regexp
	dstGeo   []geoip.Code
	srcGeo   []geoip.Code
}

// newMoreKey is the moreKey of a flow.
func (r *RuleRouter) newMoreKey(f *Flow) moreKey {
	return moreKey{user: f.User, dst: f.Dst.Addr(), geo: r.GeoIP}
}

// newMoreRule compiles r's matchers of this file; nil when it has none.
func newMoreRule(r *configs.Rule) *moreRule {
	if len(r.User)+len(r.DomainKeyword)+len(r.DomainRegex)+len(r.DstGeoIP)+len(r.SrcGeoIP) == 0 {
		return nil
	}
	m := &moreRule{users: r.User, keywords: r.DomainKeyword, dstGeo: r.DstGeoIP, srcGeo: r.SrcGeoIP}
	for _, re := range r.DomainRegex {
		if re.Regexp() != nil { // configs.Validate refuses one that did not compile
			m.regexes = append(m.regexes, re.Regexp())
		}
	}
	return m
}

// onDst reports whether the rule matches on the destination's address (dst_geoip): like a
// dst matcher, it needs an address, and a name-only flow is resolved for it.
func (m *moreRule) onDst() bool { return m != nil && len(m.dstGeo) > 0 }

// moreKey is what these matchers compare: the flow's user and destination address (none for
// a DNS query), and, found once per Route and only when a rule that needs it is reached, the
// name lowercased and the countries of the source and destination. It holds values, not the
// Flow: a pointer to it would leak with the name to the regexp matcher and cost Route an
// allocation.
type moreKey struct {
	user string
	dst  netip.Addr
	geo  func(netip.Addr) geoip.Code

	named, dstAsked, srcAsked bool
	name                      string
	dstCC, srcCC              geoip.Code
}

// lowerName is the flow's name lowercased, without a trailing dot.
func (k *flowKey) lowerName() string {
	m := &k.more
	if !m.named {
		m.named = true
		m.name = strings.ToLower(strings.TrimSuffix(k.host, "."))
	}
	return m.name
}

// dstCountry and srcCountry are the addresses' countries (0: unknown, or no database).
func (k *flowKey) dstCountry() geoip.Code {
	m := &k.more
	if !m.dstAsked {
		m.dstAsked = true
		if a := m.dst.Unmap(); m.geo != nil && a.IsValid() {
			m.dstCC = m.geo(a)
		}
	}
	return m.dstCC
}

func (k *flowKey) srcCountry() geoip.Code {
	m := &k.more
	if !m.srcAsked {
		m.srcAsked = true
		if m.geo != nil && k.src.IsValid() {
			m.srcCC = m.geo(k.src)
		}
	}
	return m.srcCC
}

// matches checks every matcher of this file, the cheap ones first.
func (m *moreRule) matches(k *flowKey) bool {
	return (len(m.users) == 0 || m.userOK(k)) &&
		(len(m.keywords) == 0 || m.keywordOK(k)) &&
		(len(m.regexes) == 0 || m.regexOK(k)) &&
		(len(m.srcGeo) == 0 || m.srcGeoOK(k)) &&
		(len(m.dstGeo) == 0 || m.dstGeoOK(k))
}

func (m *moreRule) userOK(k *flowKey) bool {
	return k.more.user != "" && slices.Contains(m.users, k.more.user)
}

func (m *moreRule) keywordOK(k *flowKey) bool {
	name := k.lowerName()
	return name != "" && slices.ContainsFunc(m.keywords, func(w string) bool { return strings.Contains(name, w) })
}

func (m *moreRule) regexOK(k *flowKey) bool {
	name := k.lowerName()
	return name != "" && slices.ContainsFunc(m.regexes, func(re *regexp.Regexp) bool { return re.MatchString(name) })
}

func (m *moreRule) dstGeoOK(k *flowKey) bool {
	cc := k.dstCountry()
	return cc != 0 && slices.Contains(m.dstGeo, cc)
}

func (m *moreRule) srcGeoOK(k *flowKey) bool {
	cc := k.srcCountry()
	return cc != 0 && slices.Contains(m.srcGeo, cc)
}

// accepts reports whether the matcher which accepts the flow; one the rule does not have
// does.
func (m *moreRule) accepts(k *flowKey, which Matcher) bool {
	switch which {
	case MatchUser:
		return len(m.users) == 0 || m.userOK(k)
	case MatchDomainKeyword:
		return len(m.keywords) == 0 || m.keywordOK(k)
	case MatchDomainRegex:
		return len(m.regexes) == 0 || m.regexOK(k)
	case MatchDstGeoIP:
		return len(m.dstGeo) == 0 || m.dstGeoOK(k)
	case MatchSrcGeoIP:
		return len(m.srcGeo) == 0 || m.srcGeoOK(k)
	}
	return true
}

// failed appends to failed those of the matchers given that the rule has and that reject
// the flow, for Explain; a nil rule has none.
func (m *moreRule) failed(k *flowKey, failed []Matcher, which ...Matcher) []Matcher {
	if m == nil {
		return failed
	}
	for _, w := range which {
		if !m.accepts(k, w) {
			failed = append(failed, w)
		}
	}
	return failed
}
