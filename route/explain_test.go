package route

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

// Explain's matching verdict is Route's rule on random flows and rules, every verdict before
// it fails, and each failed matcher really rejects the flow alone (checked against a router
// of that one rule with only that matcher).
func TestExplainAgreesWithRoute(t *testing.T) {
	rng := newTestRand(7)
	for round := range 10 {
		cfg := randomRules(rng, 200)
		r, err := NewRouter(cfg, testUpstreams())
		if err != nil {
			t.Fatal(err)
		}
		// A name-only flow is decided by its name when it does not resolve: what Explain,
		// which resolves nothing, reports.
		r.Resolve = func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("no lookups in explain") }
		for range 1000 {
			f := randomFlow(rng)
			vs := r.Explain(f)
			want := r.Route(context.Background(), f)
			last := vs[len(vs)-1]
			if !last.Matched || last.Rule != want.Rule {
				t.Fatalf("round %d, flow %+v: Explain ends at %q (matched %v), Route says %q", round, f, last.Rule, last.Matched, want.Rule)
			}
			for _, v := range vs[:len(vs)-1] {
				if v.Matched || len(v.Failed) == 0 {
					t.Fatalf("flow %+v: earlier rule %q has no failed matcher", f, v.Rule)
				}
				if v.NeedsAddress != (!f.Dst.IsValid() && (slices.Contains(v.Failed, MatchDst) || slices.Contains(v.Failed, MatchDstGeoIP) && f.Host != "")) {
					t.Fatalf("flow %+v: rule %q NeedsAddress %v with failed %v", f, v.Rule, v.NeedsAddress, v.Failed)
				}
				for _, m := range v.Failed {
					if onlyMatcher(t, cfg.Rules[v.Index], m).Route(context.Background(), f).Rule == v.Rule {
						t.Fatalf("flow %+v: rule %q: %s reported failed, but it alone matches", f, v.Rule, m)
					}
				}
			}
		}
	}
}

// onlyMatcher is a router of rule with every matcher but m dropped, in front of a catch-all.
func onlyMatcher(t *testing.T, rule configs.Rule, m Matcher) *RuleRouter {
	one := configs.Rule{Name: rule.Name, Action: rule.Action, Upstream: rule.Upstream}
	switch m {
	case MatchProtocol:
		one.Protocol = rule.Protocol
	case MatchInbound:
		one.Inbound = rule.Inbound
	case MatchSrc:
		one.Src = rule.Src
	case MatchDst:
		one.Dst = rule.Dst
	case MatchDstPorts:
		one.DstPorts = rule.DstPorts
	case MatchDomain:
		one.Domain = rule.Domain
	case MatchUser:
		one.User = rule.User
	case MatchDomainKeyword:
		one.DomainKeyword = rule.DomainKeyword
	case MatchDomainRegex:
		one.DomainRegex = rule.DomainRegex
	case MatchDstGeoIP:
		one.DstGeoIP = rule.DstGeoIP
	case MatchSrcGeoIP:
		one.SrcGeoIP = rule.SrcGeoIP
	}
	r := mustRouter(t, one)
	r.Resolve = func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("no lookups") }
	return r
}

func TestExplainNamesEveryFailedMatcher(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "lan-udp", Protocol: []Network{UDP}, Src: pfx("10.9.0.0/16"), Action: configs.ActionBlock},
		configs.Rule{Name: "cdn", Dst: pfx("198.51.100.0/24"), DstPorts: ports(443, 443), Action: configs.ActionDirect},
		configs.Rule{Name: "ads", Domain: []string{".ads.example"}, Inbound: []configs.Inbound{configs.InboundHTTP}, Action: configs.ActionBlock},
	)
	f := tcpFlow("203.0.113.5:80")
	f.Host = "x.ads.example"
	vs := r.Explain(f)
	got := map[string][]Matcher{}
	for _, v := range vs {
		got[v.Rule] = v.Failed
	}
	want := map[string][]Matcher{
		"lan-udp": {MatchProtocol, MatchSrc},
		"cdn":     {MatchDst, MatchDstPorts},
		"ads":     {MatchInbound},
		"default": nil,
	}
	for rule, w := range want {
		if !slices.Equal(got[rule], w) {
			t.Errorf("rule %s: failed %v, want %v", rule, got[rule], w)
		}
	}
	if last := vs[len(vs)-1]; !last.Matched || last.Rule != "default" {
		t.Errorf("last verdict %+v, want default matched", last)
	}

	// A name-only flow: the dst rule would need the name's addresses.
	vs = r.Explain(nameOnly("cdn.example", 443))
	if !vs[1].NeedsAddress || !slices.Equal(vs[1].Failed, []Matcher{MatchDst}) {
		t.Errorf("name-only flow at a dst rule: %+v, want NeedsAddress and dst failed", vs[1])
	}
}

// ExplainQuery agrees with RouteQuery, and reports the rules that cannot decide a query.
func TestExplainQueryAgreesWithRouteQuery(t *testing.T) {
	rng := newTestRand(9)
	for range 10 {
		cfg := randomRules(rng, 200)
		for i := range cfg.Rules {
			if rng.IntN(10) == 0 {
				cfg.Rules[i].Inbound = []configs.Inbound{configs.InboundDNS}
			}
		}
		r, err := NewRouter(cfg, testUpstreams())
		if err != nil {
			t.Fatal(err)
		}
		for range 500 {
			f := randomFlow(rng)
			name := []string{"example.com", "www.example.com", "a.test", "other.org"}[rng.IntN(4)]
			vs := r.ExplainQuery(f.Src.Addr(), name)
			last, want := vs[len(vs)-1], r.RouteQuery(f.Src.Addr(), name)
			if !last.Matched || last.Rule != want.Rule {
				t.Fatalf("query %q from %v: Explain ends at %q, RouteQuery says %q", name, f.Src.Addr(), last.Rule, want.Rule)
			}
			for _, v := range vs[:len(vs)-1] {
				c := cfg.Rules[v.Index]
				unfit := len(c.Dst) > 0 || len(c.DstPorts) > 0 || len(c.Protocol) > 0
				if v.Unfit != unfit || len(v.Failed) == 0 {
					t.Fatalf("query %q: rule %q unfit %v failed %v", name, v.Rule, v.Unfit, v.Failed)
				}
			}
		}
	}
}
