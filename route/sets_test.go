package route

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/ruleset"
)

// testSets makes handles of kind from texts (list format), by name.
func testSets(t testing.TB, sets map[string]string) map[string]*ruleset.Handle {
	t.Helper()
	out := map[string]*ruleset.Handle{}
	for name, text := range sets {
		kind := configs.SetCIDR
		if strings.HasPrefix(name, "d-") {
			kind = configs.SetDomain
		}
		s, err := ruleset.Parse(strings.NewReader(text), kind, configs.SetFormatList, 0)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = ruleset.NewHandle(configs.RuleSet{Name: name, Kind: kind}, s)
	}
	return out
}

func setRouter(t testing.TB, sets map[string]*ruleset.Handle, rules ...configs.Rule) *RuleRouter {
	t.Helper()
	rules = append(rules, configs.Rule{Name: "default", Action: configs.ActionProxy, Upstream: "up1", Implicit: true})
	r, err := NewRouterSets(&configs.Config{Rules: rules}, testUpstreams(), sets)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRouteWithSets(t *testing.T) {
	sets := testSets(t, map[string]string{
		"cn":    "192.0.2.0/24\n2001:db8::/32\n",
		"lan":   "10.0.1.0/28\n",
		"d-ads": "ads.example\nkeyword:track\n",
	})
	r := setRouter(t, sets,
		configs.Rule{Name: "ads", DomainSet: []string{"d-ads"}, Domain: []string{"literal.example"}, Action: configs.ActionBlock},
		configs.Rule{Name: "office", SrcSet: []string{"lan"}, Dst: pfx("198.51.100.0/24"), Action: configs.ActionDirect},
		configs.Rule{Name: "cn", DstSet: []string{"cn"}, Dst: pfx("203.0.113.0/24"), Action: configs.ActionDirect},
	)
	with := func(f Flow, host string) Flow { f.Host = host; return f }
	for _, tc := range []struct {
		f    Flow
		want string
	}{
		{tcpFlow("192.0.2.10:443"), "cn"},
		{tcpFlow("[2001:db8::1]:443"), "cn"},
		{tcpFlow("203.0.113.1:443"), "cn"},      // the rule's literal dst beside the set
		{tcpFlow("198.51.100.1:443"), "office"}, // src 10.0.1.2 is in lan
		{Flow{Network: TCP, Src: ap("10.0.9.2:1"), Dst: ap("198.51.100.1:443"), Inbound: Redirect}, "default"},
		{with(tcpFlow("192.0.2.10:443"), "www.ads.example"), "ads"},
		{with(tcpFlow("192.0.2.10:443"), "x.tracker.io"), "ads"},
		{with(tcpFlow("192.0.2.10:443"), "literal.example"), "ads"},
		{with(tcpFlow("192.0.2.10:443"), "fine.example"), "cn"},
		{tcpFlow("8.8.8.8:53"), "default"},
	} {
		if d := r.Route(context.Background(), tc.f); d.Rule != tc.want {
			t.Errorf("%v %q: rule %q, want %q", tc.f.Dst, tc.f.Host, d.Rule, tc.want)
		}
	}
	// A name-only flow is resolved for the dst_set rule, as for a dst rule.
	r.Resolve = func(context.Context, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("192.0.2.77")}, nil
	}
	if d := r.Route(context.Background(), nameOnly("cn.example", 443)); d.Rule != "cn" || d.Addr.String() != "192.0.2.77" {
		t.Errorf("name-only: %+v", d)
	}
	// A DNS query is decided by a domain_set rule, never by a dst_set one.
	if d := r.RouteQuery(netip.MustParseAddr("10.0.9.9"), "ads.example"); d.Rule != "ads" {
		t.Errorf("query: %q", d.Rule)
	}
	if d := r.RouteQuery(netip.MustParseAddr("10.0.9.9"), "cn.example"); d.Rule != "default" {
		t.Errorf("query: %q", d.Rule)
	}
	// Explain names the set that matched.
	vs := r.Explain(with(tcpFlow("192.0.2.10:443"), "a.ads.example"))
	if last := vs[len(vs)-1]; last.Rule != "ads" || !slices.Equal(last.Sets, []SetMatch{{MatchDomain, "d-ads"}}) {
		t.Errorf("explain: %+v", last)
	}
	vs = r.Explain(tcpFlow("192.0.2.10:443"))
	if last := vs[len(vs)-1]; last.Rule != "cn" || !slices.Equal(last.Sets, []SetMatch{{MatchDst, "cn"}}) || !slices.Equal(vs[1].Failed, []Matcher{MatchDst}) {
		t.Errorf("explain: %+v", vs)
	}
	if vs := r.Explain(tcpFlow("203.0.113.1:443")); len(vs[len(vs)-1].Sets) != 0 {
		t.Errorf("a literal match is reported as a set's: %+v", vs[len(vs)-1])
	}
}

func TestRouterNeedsItsSets(t *testing.T) {
	_, err := NewRouter(&configs.Config{Rules: []configs.Rule{{Name: "r", DstSet: []string{"x"}, Action: configs.ActionDirect}}}, testUpstreams())
	if err == nil || !strings.Contains(err.Error(), `rule set "x" is not loaded`) {
		t.Fatalf("err %v", err)
	}
}

func TestHoisted(t *testing.T) {
	sets := testSets(t, map[string]string{"cn": "192.0.2.0/24\n2001:db8::/32\n", "more": "198.51.100.0/24\n"})
	direct := func(name string, mod func(*configs.Rule)) configs.Rule {
		r := configs.Rule{Name: name, Action: configs.ActionDirect}
		mod(&r)
		return r
	}
	proxy := func(name string, mod func(*configs.Rule)) configs.Rule {
		r := configs.Rule{Name: name, Action: configs.ActionProxy, Upstream: "up1"}
		mod(&r)
		return r
	}
	for _, tc := range []struct {
		name  string
		rules []configs.Rule
		want  string // the hoisted prefixes
		from  []string
	}{
		{"a set and literals", []configs.Rule{direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"}; r.Dst = pfx("203.0.113.0/24") })},
			"192.0.2.0/24 203.0.113.0/24 2001:db8::/32", []string{"cn"}},
		{"an earlier proxy rule's prefixes are cut out", []configs.Rule{
			proxy("p", func(r *configs.Rule) { r.Dst = pfx("192.0.2.128/25"); r.DstPorts = ports(443, 443) }),
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })},
			"192.0.2.0/25 2001:db8::/32", []string{"cn"}},
		{"an earlier rule without dst stops hoisting", []configs.Rule{
			direct("first", func(r *configs.Rule) { r.DstSet = []string{"more"} }),
			proxy("by-name", func(r *configs.Rule) { r.Domain = []string{".example.com"} }),
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })},
			"198.51.100.0/24", []string{"first"}},
		{"an earlier source rule stops it too", []configs.Rule{
			configs.Rule{Name: "host", Src: pfx("10.0.1.5/32"), Action: configs.ActionBlock},
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })}, "", nil},
		{"earlier direct rules and explicit-only rules claim nothing", []configs.Rule{
			direct("byname", func(r *configs.Rule) { r.Domain = []string{".example.com"} }),
			proxy("socks-users", func(r *configs.Rule) { r.Inbound = []configs.Inbound{configs.InboundSOCKS, configs.InboundHTTP} }),
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })},
			"192.0.2.0/24 2001:db8::/32", []string{"cn"}},
		{"a transparent-only proxy rule does claim", []configs.Rule{
			proxy("t", func(r *configs.Rule) { r.Inbound = []configs.Inbound{configs.InboundTransparent} }),
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })}, "", nil},
		{"a direct rule with more matchers is not hoisted", []configs.Rule{
			direct("udp-cn", func(r *configs.Rule) { r.DstSet = []string{"cn"}; r.Protocol = []Network{UDP} }),
			direct("more", func(r *configs.Rule) { r.DstSet = []string{"more"} })},
			"198.51.100.0/24", []string{"more"}},
		{"a block rule inside a set", []configs.Rule{
			configs.Rule{Name: "b", Dst: pfx("2001:db8:1::/48"), Action: configs.ActionBlock},
			direct("cn", func(r *configs.Rule) { r.DstSet = []string{"cn"} })},
			"192.0.2.0/24 2001:db8::/48 2001:db8:2::/47 2001:db8:4::/46 2001:db8:8::/45 2001:db8:10::/44 2001:db8:20::/43 2001:db8:40::/42 2001:db8:80::/41 2001:db8:100::/40 2001:db8:200::/39 2001:db8:400::/38 2001:db8:800::/37 2001:db8:1000::/36 2001:db8:2000::/35 2001:db8:4000::/34 2001:db8:8000::/33",
			[]string{"cn"}},
	} {
		r := setRouter(t, sets, tc.rules...)
		ps, from := r.HoistedPrefixes()
		var got []string
		for _, p := range ps {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != tc.want || !slices.Equal(from, tc.from) {
			t.Errorf("%s: hoisted %q from %q, want %q from %q", tc.name, got, from, tc.want, tc.from)
		}
		// What is hoisted is decided direct by the router for any flow the kernel captures.
		for _, p := range ps {
			for _, f := range []Flow{
				{Network: TCP, Src: ap("10.0.1.5:1"), Dst: netip.AddrPortFrom(p.Addr(), 443), Inbound: Redirect, Host: "www.example.com"},
				{Network: UDP, Src: ap("10.0.1.5:1"), Dst: netip.AddrPortFrom(p.Addr(), 53), Inbound: TProxy},
				{Network: TCP, Src: ap("10.9.9.9:1"), Dst: netip.AddrPortFrom(p.Addr(), 80), Inbound: FromRouter},
			} {
				if d := r.Route(context.Background(), f); d.Action != ActionDirect {
					t.Errorf("%s: %v is hoisted but %+v is decided %v by %q", tc.name, p, f, d.Action, d.Rule)
				}
			}
		}
	}
}

// A dst_geoip country is its networks in the database: a direct rule on countries is hoisted
// like one on a cidr set, and a proxy rule on a country claims that country's networks.
func TestHoistedCountries(t *testing.T) {
	cn, _ := geoip.ParseCode("CN")
	de, _ := geoip.ParseCode("DE")
	nets := map[geoip.Code][]netip.Prefix{
		cn: pfx("192.0.2.0/24", "2001:db8::/32"),
		de: pfx("198.51.100.0/24"),
	}
	country := func(a netip.Addr) geoip.Code {
		for cc, ps := range nets {
			for _, p := range ps {
				if p.Contains(a) {
					return cc
				}
			}
		}
		return 0
	}
	rules := []configs.Rule{
		{Name: "de-slow", DstGeoIP: []geoip.Code{de}, DstPorts: ports(443, 443), Action: configs.ActionProxy, Upstream: "up1"},
		{Name: "home", DstGeoIP: []geoip.Code{cn, de}, Action: configs.ActionDirect},
		{Name: "both", DstGeoIP: []geoip.Code{cn}, Dst: pfx("192.0.2.128/25", "203.0.113.0/24"), Action: configs.ActionDirect},
		{Name: "rest", Action: configs.ActionProxy, Upstream: "up1"},
	}
	r := setRouter(t, nil, rules...)
	if ps, _ := r.HoistedPrefixes(); len(ps) != 0 {
		t.Fatalf("without a database no country is hoisted: %v", ps)
	}
	r.GeoIP, r.GeoPrefixes = country, func(cc geoip.Code) []netip.Prefix { return nets[cc] }
	ps, from := r.HoistedPrefixes()
	var got []string
	for _, p := range ps {
		got = append(got, p.String())
	}
	// "both" matches where dst and dst_geoip both do: 192.0.2.128/25, within home's already.
	if want := "192.0.2.0/24 2001:db8::/32"; strings.Join(got, " ") != want || !slices.Equal(from, []string{"home", "both"}) {
		t.Fatalf("hoisted %q from %q, want %q (DE is claimed by de-slow)", got, from, want)
	}
	for _, p := range ps {
		f := Flow{Network: TCP, Src: ap("10.0.1.5:1"), Dst: netip.AddrPortFrom(p.Addr(), 443), Inbound: Redirect}
		if d := r.Route(context.Background(), f); d.Action != ActionDirect {
			t.Errorf("%v is hoisted but decided %v by %q", p, d.Action, d.Rule)
		}
	}
}
