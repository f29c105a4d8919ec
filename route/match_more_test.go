package route

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/geoip/geoiptest"
)

func cc(s string) geoip.Code {
	c, err := geoip.ParseCode(s)
	if err != nil {
		panic(err)
	}
	return c
}

func codes(ss ...string) []geoip.Code {
	out := make([]geoip.Code, len(ss))
	for i, s := range ss {
		out[i] = cc(s)
	}
	return out
}

func regexps(ss ...string) []configs.Regexp {
	out := make([]configs.Regexp, len(ss))
	for i, s := range ss {
		out[i] = configs.CompileRegexp(s)
	}
	return out
}

// testCountries is the country database of these tests.
func testCountries(t testing.TB) func(netip.Addr) geoip.Code {
	t.Helper()
	if !geoip.Built {
		// The nogeoip build has no reader: the same map, by hand.
		return func(a netip.Addr) geoip.Code {
			switch {
			case netip.MustParsePrefix("203.0.113.0/25").Contains(a), netip.MustParsePrefix("2001:db8:4::/48").Contains(a):
				return cc("US")
			case netip.MustParsePrefix("203.0.113.128/25").Contains(a), netip.MustParsePrefix("10.0.3.0/24").Contains(a):
				return cc("CN")
			}
			return 0
		}
	}
	b, err := geoiptest.Bytes(
		geoiptest.Network{Prefix: "203.0.113.0/25", Country: "US"},
		geoiptest.Network{Prefix: "203.0.113.128/25", Country: "CN"},
		geoiptest.Network{Prefix: "2001:db8:4::/48", Country: "US"},
		geoiptest.Network{Prefix: "10.0.3.0/24", Country: "CN"},
	)
	if err != nil {
		t.Fatal(err)
	}
	db, err := geoip.OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return db.Country
}

func TestRouteMoreMatchers(t *testing.T) {
	with := func(f Flow, mod func(*Flow)) Flow { mod(&f); return f }
	user := func(u string) func(*Flow) { return func(f *Flow) { f.User = u; f.Inbound = SOCKS } }
	named := func(h string) func(*Flow) { return func(f *Flow) { f.Host, f.From = h, NameSniff } }
	from := func(src string) func(*Flow) { return func(f *Flow) { f.Src = ap(src) } }
	cases := []struct {
		name string
		rule configs.Rule
		flow Flow
		want string
	}{
		{"user matches", configs.Rule{User: []string{"alice", "bob"}}, with(tcpFlow("203.0.113.10:80"), user("bob")), "r"},
		{"user other", configs.Rule{User: []string{"alice"}}, with(tcpFlow("203.0.113.10:80"), user("carol")), "default"},
		{"user is case-sensitive", configs.Rule{User: []string{"alice"}}, with(tcpFlow("203.0.113.10:80"), user("Alice")), "default"},
		{"no user never matches", configs.Rule{User: []string{"alice"}}, tcpFlow("203.0.113.10:80"), "default"},
		{"keyword", configs.Rule{DomainKeyword: []string{"ads"}}, with(tcpFlow("203.0.113.10:443"), named("cdn.ADS.example.")), "r"},
		{"keyword inside a label", configs.Rule{DomainKeyword: []string{"oogl"}}, with(tcpFlow("203.0.113.10:443"), named("www.google.com")), "r"},
		{"keyword absent", configs.Rule{DomainKeyword: []string{"ads"}}, with(tcpFlow("203.0.113.10:443"), named("www.example.com")), "default"},
		{"keyword, no name", configs.Rule{DomainKeyword: []string{"ads"}}, tcpFlow("203.0.113.10:443"), "default"},
		{"regex unanchored", configs.Rule{DomainRegex: regexps(`google`)}, with(tcpFlow("203.0.113.10:443"), named("googlemail.com")), "r"},
		{"regex anchored", configs.Rule{DomainRegex: regexps(`^google\.com$`)}, with(tcpFlow("203.0.113.10:443"), named("www.google.com")), "default"},
		{"regex lowercased name", configs.Rule{DomainRegex: regexps(`^www\.google\.com$`)}, with(tcpFlow("203.0.113.10:443"), named("WWW.Google.COM.")), "r"},
		{"regex, no name", configs.Rule{DomainRegex: regexps(`.*`)}, tcpFlow("203.0.113.10:443"), "default"},
		{"dst_geoip", configs.Rule{DstGeoIP: codes("CN")}, tcpFlow("203.0.113.200:443"), "r"},
		{"dst_geoip other country", configs.Rule{DstGeoIP: codes("CN")}, tcpFlow("203.0.113.20:443"), "default"},
		{"dst_geoip v4-mapped", configs.Rule{DstGeoIP: codes("US")}, tcpFlow("[::ffff:203.0.113.20]:443"), "r"},
		{"dst_geoip ipv6", configs.Rule{DstGeoIP: codes("CN", "US")}, tcpFlow("[2001:db8:4::1]:443"), "r"},
		{"dst_geoip unknown address", configs.Rule{DstGeoIP: codes("US")}, tcpFlow("198.51.100.1:443"), "default"},
		{"src_geoip", configs.Rule{SrcGeoIP: codes("CN")}, with(tcpFlow("198.51.100.1:443"), from("10.0.3.7:5000")), "r"},
		{"src_geoip other", configs.Rule{SrcGeoIP: codes("CN")}, tcpFlow("203.0.113.200:443"), "default"},
		{"all of them", configs.Rule{User: []string{"a"}, DomainKeyword: []string{"tv"}, DomainRegex: regexps(`\.net$`), DstGeoIP: codes("US"), SrcGeoIP: codes("CN")},
			with(with(with(tcpFlow("203.0.113.20:443"), user("a")), named("cdn.tv.net")), from("10.0.3.1:1")), "r"},
		{"all but one", configs.Rule{User: []string{"a"}, DomainKeyword: []string{"tv"}, DomainRegex: regexps(`\.net$`), DstGeoIP: codes("US"), SrcGeoIP: codes("CN")},
			with(with(with(tcpFlow("203.0.113.20:443"), user("a")), named("cdn.tv.com")), from("10.0.3.1:1")), "default"},
	}
	for _, tc := range cases {
		rule := tc.rule
		rule.Name, rule.Action = "r", configs.ActionBlock
		r := mustRouter(t, rule)
		r.GeoIP = testCountries(t)
		if got := r.Route(context.Background(), tc.flow).Rule; got != tc.want {
			t.Errorf("%s: routed by %q, want %q", tc.name, got, tc.want)
		}
		vs := r.Explain(tc.flow)
		if last := vs[len(vs)-1]; last.Rule != tc.want {
			t.Errorf("%s: Explain decides %q, want %q", tc.name, last.Rule, tc.want)
		}
	}
	// Without a database, geoip rules never match.
	r := mustRouter(t, configs.Rule{Name: "r", DstGeoIP: codes("US"), Action: configs.ActionBlock})
	if got := r.Route(context.Background(), tcpFlow("203.0.113.20:443")).Rule; got != "default" {
		t.Errorf("no database: %q", got)
	}
}

// dst_geoip is a rule on addresses: a name-only flow before it is resolved and its addresses
// matched, as for dst; a DNS query never meets it.
func TestDstGeoIPSeesTheAddressesOfAName(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "names", Domain: []string{"direct.test"}, Action: configs.ActionDirect},
		configs.Rule{Name: "cn", DstGeoIP: codes("CN"), Action: configs.ActionDirect},
	)
	r.GeoIP = testCountries(t)
	var asked []string
	r.Resolve = func(_ context.Context, host string) ([]netip.Addr, error) {
		asked = append(asked, host)
		switch host {
		case "cn.test":
			return []netip.Addr{netip.MustParseAddr("203.0.113.200")}, nil
		case "us.test":
			return []netip.Addr{netip.MustParseAddr("203.0.113.20")}, nil
		}
		return nil, errors.New("no such name")
	}
	if d := r.Route(context.Background(), nameOnly("cn.test", 443)); d.Rule != "cn" || d.Addr != netip.MustParseAddr("203.0.113.200") {
		t.Errorf("cn.test: %q %v", d.Rule, d.Addr)
	}
	if d := r.Route(context.Background(), nameOnly("us.test", 443)); d.Rule != "default" {
		t.Errorf("us.test: %q", d.Rule)
	}
	asked = nil
	if d := r.Route(context.Background(), nameOnly("direct.test", 443)); d.Rule != "names" || len(asked) != 0 {
		t.Errorf("a name decided before any address rule: %q, resolved %v", d.Rule, asked)
	}
	vs := r.Explain(nameOnly("us.test", 443))
	if !vs[1].NeedsAddress || !slices.Equal(vs[1].Failed, []Matcher{MatchDstGeoIP}) {
		t.Errorf("Explain of a name-only flow at a dst_geoip rule: %+v", vs[1])
	}
	if d := r.RouteQuery(netip.MustParseAddr("10.0.1.2"), "cn.test"); d.Rule != "default" {
		t.Errorf("a DNS query was decided by %q", d.Rule)
	}
	if vs := r.ExplainQuery(netip.MustParseAddr("10.0.1.2"), "cn.test"); !vs[1].Unfit || !slices.Equal(vs[1].Failed, []Matcher{MatchDstGeoIP}) {
		t.Errorf("ExplainQuery at a dst_geoip rule: %+v", vs[1])
	}
}

// A DNS query has a name and a source: keyword, regex and src_geoip rules decide queries;
// a user rule never does (a query has no user).
func TestRouteQueryMoreMatchers(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "user", User: []string{"alice"}, Action: configs.ActionBlock},
		configs.Rule{Name: "kw", DomainKeyword: []string{"ads"}, Action: configs.ActionBlock},
		configs.Rule{Name: "re", DomainRegex: regexps(`^tv\.`), Action: configs.ActionBlock},
		configs.Rule{Name: "src", SrcGeoIP: codes("CN"), Action: configs.ActionBlock},
	)
	r.GeoIP = testCountries(t)
	lan := netip.MustParseAddr("10.0.1.2")
	for _, tc := range []struct {
		src  netip.Addr
		name string
		want string
	}{
		{lan, "x.ads.test", "kw"}, {lan, "tv.example", "re"}, {netip.MustParseAddr("10.0.3.9"), "a.example", "src"}, {lan, "a.example", "default"},
	} {
		if d := r.RouteQuery(tc.src, tc.name); d.Rule != tc.want {
			t.Errorf("query %s from %s: %q, want %q", tc.name, tc.src, d.Rule, tc.want)
		}
		vs := r.ExplainQuery(tc.src, tc.name)
		if last := vs[len(vs)-1]; last.Rule != tc.want {
			t.Errorf("ExplainQuery %s: %q, want %q", tc.name, last.Rule, tc.want)
		}
	}
}

func TestExplainNamesMoreMatchersInOrder(t *testing.T) {
	r := mustRouter(t, configs.Rule{
		Name: "all", User: []string{"a"}, SrcGeoIP: codes("CN"), DstGeoIP: codes("CN"), DstPorts: ports(80, 80),
		Domain: []string{".x.test"}, DomainKeyword: []string{"kw"}, DomainRegex: regexps(`^re`), Action: configs.ActionBlock,
	})
	r.GeoIP = testCountries(t)
	f := tcpFlow("203.0.113.20:443")
	f.Host = "www.example.com"
	want := []Matcher{MatchUser, MatchSrcGeoIP, MatchDstGeoIP, MatchDstPorts, MatchDomain, MatchDomainKeyword, MatchDomainRegex}
	if vs := r.Explain(f); !slices.Equal(vs[0].Failed, want) {
		t.Errorf("failed %v, want %v", vs[0].Failed, want)
	}
}

// Explain agrees with Route on random rules that mix every matcher.
func TestExplainAgreesWithRouteMoreMatchers(t *testing.T) {
	rng := newTestRand(11)
	geo := func(a netip.Addr) geoip.Code { // a country by the address's last byte
		return []geoip.Code{0, cc("US"), cc("CN"), cc("DE")}[a.AsSlice()[len(a.AsSlice())-1]%4]
	}
	for round := range 10 {
		cfg := randomRules(rng, 200)
		for i := range cfg.Rules[:len(cfg.Rules)-1] {
			r := &cfg.Rules[i]
			switch rng.IntN(12) {
			case 0:
				r.User = []string{[]string{"alice", "bob"}[rng.IntN(2)]}
			case 1:
				r.DomainKeyword = []string{[]string{"exam", "test", "www"}[rng.IntN(3)]}
			case 2:
				r.DomainRegex = regexps([]string{`^www\.`, `\.test$`, `e.a`}[rng.IntN(3)])
			case 3:
				r.DstGeoIP = []geoip.Code{[]geoip.Code{cc("US"), cc("CN")}[rng.IntN(2)]}
			case 4:
				r.SrcGeoIP = []geoip.Code{[]geoip.Code{cc("US"), cc("DE")}[rng.IntN(2)]}
			}
		}
		r, err := NewRouter(cfg, testUpstreams())
		if err != nil {
			t.Fatal(err)
		}
		r.GeoIP = geo
		r.Resolve = func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("no lookups") }
		for range 1000 {
			f := randomFlow(rng)
			if f.Inbound == SOCKS || f.Inbound == HTTP {
				f.User = []string{"", "alice", "bob"}[rng.IntN(3)]
			}
			vs := r.Explain(f)
			want := r.Route(context.Background(), f)
			last := vs[len(vs)-1]
			if !last.Matched || last.Rule != want.Rule {
				t.Fatalf("round %d, flow %+v: Explain ends at %q, Route says %q", round, f, last.Rule, want.Rule)
			}
			for _, v := range vs[:len(vs)-1] {
				if len(v.Failed) == 0 {
					t.Fatalf("flow %+v: rule %q has no failed matcher", f, v.Rule)
				}
				for _, m := range v.Failed {
					one := onlyMatcher(t, cfg.Rules[v.Index], m)
					one.GeoIP = geo
					if one.Route(context.Background(), f).Rule == v.Rule {
						t.Fatalf("flow %+v: rule %q: %s reported failed, but it alone matches", f, v.Rule, m)
					}
				}
			}
		}
	}
}

func TestRouteWithMoreMatchersDoesNotAllocate(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "u", User: []string{"alice"}, Action: configs.ActionBlock},
		configs.Rule{Name: "kw", DomainKeyword: []string{"ads"}, DomainRegex: regexps(`^(www\.)?ads\.`), Action: configs.ActionBlock},
		configs.Rule{Name: "geo", DstGeoIP: codes("CN"), SrcGeoIP: codes("US"), Action: configs.ActionBlock},
	)
	r.GeoIP = testCountries(t)
	f := tcpFlow("203.0.113.20:443")
	f.Host, f.User = "www.example.com", "bob"
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { r.Route(ctx, f) }); n != 0 {
		t.Errorf("Route allocates %v times", n)
	}
}

// BenchmarkRouteMoreMatchers is the cost of the new matchers: a flow past 100 rules of each
// kind to the default (a plain default-only router alongside, as the baseline).
func BenchmarkRouteMoreMatchers(b *testing.B) {
	cases := map[string]func(i int) configs.Rule{
		"user":    func(i int) configs.Rule { return configs.Rule{User: []string{fmt.Sprintf("user%d", i)}} },
		"keyword": func(i int) configs.Rule { return configs.Rule{DomainKeyword: []string{fmt.Sprintf("kw%d", i)}} },
		"regex":   func(i int) configs.Rule { return configs.Rule{DomainRegex: regexps(fmt.Sprintf(`^site%d\.`, i))} },
		"geoip":   func(i int) configs.Rule { return configs.Rule{DstGeoIP: []geoip.Code{geoip.Code('A'<<8 | 'A' + i%26)}} },
	}
	geo := testCountries(b)
	f := tcpFlow("203.0.113.20:443")
	f.Host, f.User, f.Inbound = "cdn.images.example.org", "someone", SOCKS
	ctx := context.Background()
	for _, name := range []string{"user", "keyword", "regex", "geoip"} {
		cfg := &configs.Config{}
		for i := range 100 {
			ru := cases[name](i)
			ru.Name, ru.Action = fmt.Sprintf("r%d", i), configs.ActionBlock
			cfg.Rules = append(cfg.Rules, ru)
		}
		cfg.Rules = append(cfg.Rules, configs.Rule{Name: "default", Action: configs.ActionDirect})
		r, err := NewRouter(cfg, testUpstreams())
		if err != nil {
			b.Fatal(err)
		}
		r.GeoIP = geo
		if got := r.Route(ctx, f).Rule; got != "default" {
			b.Fatalf("%s: routed to %q", name, got)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = r.Route(ctx, f)
			}
		})
	}
}
