package main

import (
	"fmt"
	"net/netip"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/route"
)

// openGeoIP opens the country database of cfg, as the gateway does at start; nil without one.
// `check` fails on a database that does not load, as the start would.
func openGeoIP(cfg *configs.Config) (*geoip.DB, error) {
	if cfg.GeoIP.Path == "" {
		return nil, nil
	}
	db, err := geoip.Open(cfg.GeoIP.Path)
	if err != nil {
		return nil, fmt.Errorf("geoip.path: %w", err)
	}
	return db, nil
}

// explainGeo is the database explain looks countries up in, for the reasons; nil: none.
var explainGeo func(netip.Addr) geoip.Code

// moreFailReason says why one of the matchers of configs/matchers.go rejected f.
func moreFailReason(m route.Matcher, vals string, f route.Flow, v route.RuleVerdict, query bool) (string, bool) {
	country := func(a netip.Addr) string {
		if explainGeo == nil {
			return "no country database is loaded"
		}
		if cc := explainGeo(a.Unmap()); cc != 0 {
			return a.String() + " is in " + cc.String()
		}
		return a.String() + " is in no country the database knows"
	}
	switch m {
	case route.MatchUser:
		if f.User == "" {
			if query {
				return fmt.Sprintf("user %s: a DNS query has no user", vals), true
			}
			return fmt.Sprintf("user %s: the flow has no authenticated user (--user, on --inbound http or socks)", vals), true
		}
		return fmt.Sprintf("user %s does not include %s", vals, f.User), true
	case route.MatchDomainKeyword, route.MatchDomainRegex:
		if f.Host == "" {
			return fmt.Sprintf("%s %s: the flow has no name", m, vals), true
		}
		return fmt.Sprintf("%s %s does not match %s", m, vals, f.Host), true
	case route.MatchDstGeoIP:
		switch {
		case v.NeedsAddress:
			return fmt.Sprintf("dst_geoip %s: the flow has only the name %s; the gateway resolves it to match this rule", vals, f.Host), true
		case !f.Dst.IsValid():
			return fmt.Sprintf("dst_geoip %s: the flow has no address", vals), true
		}
		return fmt.Sprintf("dst_geoip %s: %s", vals, country(f.Dst.Addr())), true
	case route.MatchSrcGeoIP:
		return fmt.Sprintf("src_geoip %s: %s", vals, country(f.Src.Addr())), true
	}
	return "", false
}

// moreMatcherValues is matcherValues for the matchers of configs/matchers.go.
func moreMatcherValues(rule configs.Rule, m route.Matcher) []string {
	var vals []string
	switch m {
	case route.MatchUser:
		vals = append(vals, rule.User...)
	case route.MatchDomainKeyword:
		vals = append(vals, rule.DomainKeyword...)
	case route.MatchDomainRegex:
		for _, re := range rule.DomainRegex {
			vals = append(vals, re.String())
		}
	case route.MatchDstGeoIP:
		for _, c := range rule.DstGeoIP {
			vals = append(vals, c.String())
		}
	case route.MatchSrcGeoIP:
		for _, c := range rule.SrcGeoIP {
			vals = append(vals, c.String())
		}
	}
	return vals
}
