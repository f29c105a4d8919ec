package route

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/upstream"
)

// namedUpstream is an Upstream that only has a name, for routing tests.
type namedUpstream string

func (n namedUpstream) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, fmt.Errorf("%s: not dialable in tests", string(n))
}
func (n namedUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, upstream.ErrUDPUnsupported
}
func (n namedUpstream) String() string { return string(n) }

func testUpstreams() map[string]upstream.Upstream {
	return map[string]upstream.Upstream{
		configs.SchemeDirect: namedUpstream("direct"),
		"up1":                namedUpstream("up1"),
		"grp":                namedUpstream("grp"), // groups sit in the same map under their names
	}
}

func mustRouter(t testing.TB, rules ...configs.Rule) *RuleRouter {
	t.Helper()
	rules = append(rules, configs.Rule{Name: "default", Action: configs.ActionProxy, Upstream: "up1", Implicit: true})
	r, err := NewRouter(&configs.Config{Rules: rules}, testUpstreams())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// tcpFlow is a transparent TCP flow from 10.0.1.2.
func tcpFlow(dst string) Flow {
	return Flow{Network: TCP, Src: ap("10.0.1.2:40000"), Dst: ap(dst), Inbound: Redirect}
}

func block(name string) configs.Rule {
	return configs.Rule{Name: name, Action: configs.ActionBlock}
}

// nameOnly is a flow that came with a name only (SOCKS5 domain, CONNECT host).
func nameOnly(host string, port uint16) Flow {
	return Flow{Network: TCP, Src: ap("10.0.1.2:40000"), Host: host, Port: port, Inbound: SOCKS}
}

// Every matcher kind, alone, in front of the default rule: the rule takes exactly the flows it
// describes and the rest fall through to "default".
func TestRouteMatchers(t *testing.T) {
	with := func(f Flow, mod func(*Flow)) Flow { mod(&f); return f }
	cases := []struct {
		name string
		rule configs.Rule
		flow Flow
		want string
	}{
		{"dst v4 inside", configs.Rule{Dst: pfx("203.0.113.0/24")}, tcpFlow("203.0.113.10:80"), "r"},
		{"dst v4 outside", configs.Rule{Dst: pfx("203.0.113.0/24")}, tcpFlow("198.51.100.1:80"), "default"},
		{"dst v4 host prefix", configs.Rule{Dst: pfx("203.0.113.10/32")}, tcpFlow("203.0.113.10:80"), "r"},
		{"dst v4 neighbour of host prefix", configs.Rule{Dst: pfx("203.0.113.10/32")}, tcpFlow("203.0.113.11:80"), "default"},
		{"dst v4 zero prefix", configs.Rule{Dst: pfx("0.0.0.0/0")}, tcpFlow("198.51.100.1:80"), "r"},
		{"dst v4 zero prefix not v6", configs.Rule{Dst: pfx("0.0.0.0/0")}, tcpFlow("[2001:db8::1]:80"), "default"},
		{"dst v6 inside", configs.Rule{Dst: pfx("2001:db8:3::/64")}, tcpFlow("[2001:db8:3::10]:443"), "r"},
		{"dst v6 outside", configs.Rule{Dst: pfx("2001:db8:3::/64")}, tcpFlow("[2001:db8:4::10]:443"), "default"},
		{"dst v6 /128", configs.Rule{Dst: pfx("2001:db8:3::10/128")}, tcpFlow("[2001:db8:3::10]:443"), "r"},
		{"dst v6 zero prefix not v4", configs.Rule{Dst: pfx("::/0")}, tcpFlow("203.0.113.10:80"), "default"},
		{"dst v6 /33 odd length", configs.Rule{Dst: pfx("2001:db8:8000::/33")}, tcpFlow("[2001:db8:ffff::1]:80"), "r"},
		{"dst v4-mapped flow address", configs.Rule{Dst: pfx("203.0.113.0/24")}, tcpFlow("[::ffff:203.0.113.10]:80"), "r"},
		{"dst v4-mapped rule prefix", configs.Rule{Dst: pfx("::ffff:203.0.113.0/120")}, tcpFlow("203.0.113.10:80"), "r"},
		{"dst v4-mapped both", configs.Rule{Dst: pfx("::ffff:203.0.113.0/120")}, tcpFlow("[::ffff:203.0.113.99]:80"), "r"},
		{"dst any of several", configs.Rule{Dst: pfx("198.51.100.0/24", "2001:db8::/32", "203.0.113.0/25")}, tcpFlow("203.0.113.100:80"), "r"},
		{"dst never matches a name-only flow", configs.Rule{Dst: pfx("0.0.0.0/0", "::/0")}, nameOnly("example.com", 443), "default"},
		{"port single", configs.Rule{DstPorts: ports(443, 443)}, tcpFlow("203.0.113.10:443"), "r"},
		{"port single miss", configs.Rule{DstPorts: ports(443, 443)}, tcpFlow("203.0.113.10:80"), "default"},
		{"port range low edge", configs.Rule{DstPorts: ports(1000, 2000)}, tcpFlow("203.0.113.10:1000"), "r"},
		{"port range high edge", configs.Rule{DstPorts: ports(1000, 2000)}, tcpFlow("203.0.113.10:2000"), "r"},
		{"port range above", configs.Rule{DstPorts: ports(1000, 2000)}, tcpFlow("203.0.113.10:2001"), "default"},
		{"port of a name-only flow", configs.Rule{DstPorts: ports(443, 443)}, nameOnly("example.com", 443), "r"},
		{"src inside", configs.Rule{Src: pfx("10.0.1.0/24")}, tcpFlow("203.0.113.10:80"), "r"},
		{"src outside", configs.Rule{Src: pfx("10.0.9.0/24")}, tcpFlow("203.0.113.10:80"), "default"},
		{"src v6", configs.Rule{Src: pfx("fd00:1::/64")}, with(tcpFlow("[2001:db8:3::10]:80"), func(f *Flow) { f.Src = ap("[fd00:1::2]:5000") }), "r"},
		{"src v4-mapped", configs.Rule{Src: pfx("10.0.1.0/24")}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Src = ap("[::ffff:10.0.1.2]:5000") }), "r"},
		{"src link-local with a zone", configs.Rule{Src: pfx("fe80::/10")}, with(tcpFlow("[2001:db8:3::10]:80"), func(f *Flow) { f.Src = ap("[fe80::2%lan0]:5000") }), "r"},
		{"src link-local with a zone, many prefixes", configs.Rule{Src: pfx("fe80::/10", "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24", "10.5.0.0/24", "10.6.0.0/24", "10.7.0.0/24", "10.8.0.0/24")}, with(tcpFlow("[2001:db8:3::10]:80"), func(f *Flow) { f.Src = ap("[fe80::2%lan0]:5000") }), "r"},
		{"dst link-local with a zone", configs.Rule{Dst: pfx("fe80::/10")}, tcpFlow("[fe80::1%lan0]:80"), "r"},
		{"src many prefixes (indexed set)", configs.Rule{Src: manyPrefixes(100, "10.%d.0.0/16")}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Src = ap("10.57.3.4:1") }), "r"},
		{"src many prefixes miss", configs.Rule{Src: manyPrefixes(100, "10.%d.0.0/16")}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Src = ap("10.157.3.4:1") }), "default"},
		{"protocol tcp", configs.Rule{Protocol: []Network{TCP}}, tcpFlow("203.0.113.10:80"), "r"},
		{"protocol udp vs tcp flow", configs.Rule{Protocol: []Network{UDP}}, tcpFlow("203.0.113.10:80"), "default"},
		{"protocol udp", configs.Rule{Protocol: []Network{UDP}}, with(tcpFlow("203.0.113.10:53"), func(f *Flow) { f.Network = UDP; f.Inbound = TProxy }), "r"},
		{"inbound transparent covers redirect", configs.Rule{Inbound: []configs.Inbound{configs.InboundTransparent}}, tcpFlow("203.0.113.10:80"), "r"},
		{"inbound transparent covers tproxy", configs.Rule{Inbound: []configs.Inbound{configs.InboundTransparent}}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Inbound = TProxy }), "r"},
		{"inbound transparent not socks", configs.Rule{Inbound: []configs.Inbound{configs.InboundTransparent}}, nameOnly("example.com", 443), "default"},
		{"inbound router", configs.Rule{Inbound: []configs.Inbound{configs.InboundRouter}}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Inbound = FromRouter }), "r"},
		{"inbound router not redirect", configs.Rule{Inbound: []configs.Inbound{configs.InboundRouter}}, tcpFlow("203.0.113.10:80"), "default"},
		{"inbound transparent not router", configs.Rule{Inbound: []configs.Inbound{configs.InboundTransparent}}, with(tcpFlow("203.0.113.10:80"), func(f *Flow) { f.Inbound = FromRouter }), "default"},
		{"inbound socks", configs.Rule{Inbound: []configs.Inbound{configs.InboundSOCKS}}, nameOnly("example.com", 443), "r"},
		{"inbound http", configs.Rule{Inbound: []configs.Inbound{configs.InboundHTTP, configs.InboundSOCKS}}, with(nameOnly("example.com", 443), func(f *Flow) { f.Inbound = HTTP }), "r"},
		{"domain exact", configs.Rule{Domain: []string{"example.com"}}, nameOnly("example.com", 443), "r"},
		{"domain exact case and trailing dot", configs.Rule{Domain: []string{"example.com"}}, nameOnly("Example.COM.", 443), "r"},
		{"domain exact not a subdomain", configs.Rule{Domain: []string{"example.com"}}, nameOnly("www.example.com", 443), "default"},
		{"domain suffix apex", configs.Rule{Domain: []string{".example.com"}}, nameOnly("example.com", 443), "r"},
		{"domain suffix below", configs.Rule{Domain: []string{".example.com"}}, nameOnly("a.b.example.com", 443), "r"},
		{"domain suffix not a lookalike", configs.Rule{Domain: []string{".example.com"}}, nameOnly("badexample.com", 443), "default"},
		{"domain never matches a flow without a name", configs.Rule{Domain: []string{".example.com"}}, tcpFlow("203.0.113.10:443"), "default"},
		{"domain on a sniffed flow with an address", configs.Rule{Domain: []string{".test"}}, with(tcpFlow("203.0.113.10:443"), func(f *Flow) { f.Host = "name.test" }), "r"},
		{"dst and domain both needed", configs.Rule{Dst: pfx("203.0.113.0/24"), Domain: []string{".test"}}, with(tcpFlow("198.51.100.1:443"), func(f *Flow) { f.Host = "name.test" }), "default"},
		{"every matcher at once", configs.Rule{
			Protocol: []Network{TCP}, Dst: pfx("203.0.113.0/24"), DstPorts: ports(400, 500),
			Src: pfx("10.0.1.0/24"), Inbound: []configs.Inbound{configs.InboundTransparent}, Domain: []string{".test"},
		}, with(tcpFlow("203.0.113.10:443"), func(f *Flow) { f.Host = "name.test" }), "r"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.rule.Name, c.rule.Action = "r", configs.ActionBlock
			r := mustRouter(t, c.rule)
			if got := r.Route(context.Background(), c.flow).Rule; got != c.want {
				t.Fatalf("rule %q, want %q", got, c.want)
			}
			if got := r.linearRoute(c.flow, dstOf(&configs.Config{Rules: []configs.Rule{c.rule, {}}})).Rule; got != c.want {
				t.Fatalf("reference: rule %q, want %q", got, c.want)
			}
		})
	}
}

func manyPrefixes(n int, format string) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.MustParsePrefix(fmt.Sprintf(format, i))
	}
	return out
}

// Each action gives its decision: the upstream (or group) by name, direct with the direct
// upstream, block with none.
func TestRouteActions(t *testing.T) {
	cases := []struct {
		rule         configs.Rule
		wantAction   Action
		wantUpstream string
	}{
		{configs.Rule{Name: "p", Action: configs.ActionProxy, Upstream: "up1"}, ActionProxy, "up1"},
		{configs.Rule{Name: "g", Action: configs.ActionProxy, Upstream: "grp"}, ActionProxy, "grp"},
		{configs.Rule{Name: "d", Action: configs.ActionDirect}, ActionDirect, "direct"},
		{configs.Rule{Name: "b", Action: configs.ActionBlock}, ActionBlock, ""},
	}
	for _, c := range cases {
		t.Run(c.rule.Name, func(t *testing.T) {
			c.rule.Dst = pfx("203.0.113.0/24")
			d := mustRouter(t, c.rule).Route(context.Background(), tcpFlow("203.0.113.10:80"))
			if d.Action != c.wantAction || d.Rule != c.rule.Name {
				t.Fatalf("decision %v by %q, want %v by %q", d.Action, d.Rule, c.wantAction, c.rule.Name)
			}
			got := ""
			if d.Upstream != nil {
				got = d.Upstream.String()
			}
			if got != c.wantUpstream {
				t.Fatalf("upstream %q, want %q", got, c.wantUpstream)
			}
		})
	}
}

func TestNewRouterRefusesUnknownUpstream(t *testing.T) {
	_, err := NewRouter(&configs.Config{Rules: []configs.Rule{{Name: "x", Action: configs.ActionProxy, Upstream: "nope"}}}, testUpstreams())
	if err == nil {
		t.Fatal("a rule naming a missing upstream compiled")
	}
}

// First match wins across the two candidate sources (indexed dst rules and the rest), with
// nested prefixes listed by rules in any order.
func TestRouteFirstMatchWinsInRuleOrder(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "port-22", Action: configs.ActionBlock, DstPorts: ports(22, 22)},
		configs.Rule{Name: "host", Action: configs.ActionDirect, Dst: pfx("203.0.113.10/32")},
		configs.Rule{Name: "net-udp", Action: configs.ActionBlock, Protocol: []Network{UDP}, Dst: pfx("203.0.113.0/24")},
		configs.Rule{Name: "wide", Action: configs.ActionBlock, Dst: pfx("203.0.0.0/16", "2001:db8::/32")},
		configs.Rule{Name: "net", Action: configs.ActionBlock, Dst: pfx("203.0.113.0/24")},
		configs.Rule{Name: "src", Action: configs.ActionBlock, Src: pfx("10.0.1.0/24")},
	)
	cases := []struct {
		flow Flow
		want string
	}{
		{tcpFlow("203.0.113.10:22"), "port-22"},
		{tcpFlow("203.0.113.10:80"), "host"},
		{tcpFlow("203.0.113.11:80"), "wide"}, // "net" is shadowed by "wide"
		{tcpFlow("203.0.200.1:80"), "wide"},
		{tcpFlow("[2001:db8:1::1]:80"), "wide"},
		{tcpFlow("198.51.100.1:80"), "src"},
		{Flow{Network: UDP, Src: ap("10.0.1.2:1"), Dst: ap("203.0.113.11:53"), Inbound: TProxy}, "net-udp"},
		{Flow{Network: TCP, Src: ap("10.0.9.2:1"), Dst: ap("198.51.100.1:80"), Inbound: Redirect}, "default"},
	}
	for _, c := range cases {
		if got := r.Route(context.Background(), c.flow).Rule; got != c.want {
			t.Errorf("%v: rule %q, want %q", c.flow.Dst, got, c.want)
		}
	}
}

// The index and the linear reference agree on random rule sets and flows, nested and
// overlapping prefixes of both families included.
func TestRouteAgreesWithLinearScan(t *testing.T) {
	rng := newTestRand(1)
	for round := range 20 {
		cfg := randomRules(rng, 300)
		r, err := NewRouter(cfg, testUpstreams())
		if err != nil {
			t.Fatal(err)
		}
		dst := dstOf(cfg)
		for range 2000 {
			f := randomFlow(rng)
			got, want := r.Route(context.Background(), f), r.linearRoute(f, dst)
			if got.Rule != want.Rule {
				t.Fatalf("round %d, flow %+v: index says %q, linear scan %q", round, f, got.Rule, want.Rule)
			}
		}
	}
}

// Route allocates nothing for address-only flows, nor for named ones.
func TestRouteDoesNotAllocate(t *testing.T) {
	cfg := randomRules(newTestRand(2), 1000)
	r, err := NewRouter(cfg, testUpstreams())
	if err != nil {
		t.Fatal(err)
	}
	flows := []Flow{tcpFlow("203.0.113.10:443"), tcpFlow("[2001:db8:3::10]:80")}
	named := tcpFlow("203.0.113.10:443")
	named.Host = "www.Example.com"
	flows = append(flows, named)
	ctx := context.Background()
	for _, f := range flows {
		if n := testing.AllocsPerRun(200, func() { _ = r.Route(ctx, f) }); n != 0 {
			t.Errorf("%+v: %v allocations per Route", f, n)
		}
	}
}

// linearRoute is the reference implementation: every rule in order, every matcher checked
// directly. Tests compare Route against it; the benchmark shows what the index saves.
func (r *RuleRouter) linearRoute(f Flow, dst [][]netip.Prefix) Decision {
	k := flowKey{
		proto:   protoBit(f.Network),
		inbound: flowInbound(f.Inbound),
		src:     f.Src.Addr().Unmap().WithZone(""),
		port:    f.DstPort(),
		host:    f.Host,
	}
	a := f.Dst.Addr().Unmap().WithZone("") // a zone says which link, not which address
	for i := range r.rules {
		if len(dst[i]) > 0 {
			if !a.IsValid() {
				continue
			}
			in := false
			for _, p := range dst[i] {
				if normPrefix(p).Contains(a) {
					in = true
					break
				}
			}
			if !in {
				continue
			}
		}
		if r.rules[i].matchesRest(&k) {
			return r.rules[i].decision
		}
	}
	return noMatch
}

// dstOf lists each rule's dst prefixes, for linearRoute.
func dstOf(cfg *configs.Config) [][]netip.Prefix {
	out := make([][]netip.Prefix, len(cfg.Rules))
	for i := range cfg.Rules {
		out[i] = cfg.Rules[i].Dst
	}
	return out
}

func newTestRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x5eed)) }

// randomAddr draws from a few small regions so that random prefixes nest and overlap.
func randomAddr(rng *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		b[4] = byte(rng.IntN(4))
		b[15] = byte(rng.IntN(256))
		b[14] = byte(rng.IntN(4))
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{203, byte(rng.IntN(4)), byte(rng.IntN(16)), byte(rng.IntN(256))})
}

func randomPrefix(rng *rand.Rand) netip.Prefix {
	v6 := rng.IntN(3) == 0
	a := randomAddr(rng, v6)
	bits := 8 + rng.IntN(25)
	if v6 {
		bits = 30 + rng.IntN(99)
	}
	p, _ := a.Prefix(bits)
	if !v6 && rng.IntN(10) == 0 {
		return netip.PrefixFrom(netip.AddrFrom16(a.As16()), bits+96).Masked() // v4-mapped form
	}
	return p
}

func randomRules(rng *rand.Rand, n int) *configs.Config {
	cfg := &configs.Config{}
	for i := range n {
		r := configs.Rule{Name: fmt.Sprintf("r%d", i), Action: configs.ActionBlock}
		if rng.IntN(4) != 0 {
			for range 1 + rng.IntN(3) {
				r.Dst = append(r.Dst, randomPrefix(rng))
			}
		}
		if rng.IntN(6) == 0 {
			r.Src = pfx(fmt.Sprintf("10.0.%d.0/24", rng.IntN(3)))
		}
		if rng.IntN(5) == 0 {
			lo := uint16(rng.IntN(1000))
			r.DstPorts = ports(lo, lo+uint16(rng.IntN(200)))
		}
		if rng.IntN(8) == 0 {
			r.Protocol = []Network{[]Network{TCP, UDP}[rng.IntN(2)]}
		}
		if rng.IntN(8) == 0 {
			r.Inbound = []configs.Inbound{[]configs.Inbound{configs.InboundTransparent, configs.InboundHTTP, configs.InboundSOCKS}[rng.IntN(3)]}
		}
		if rng.IntN(10) == 0 {
			r.Domain = []string{[]string{".example.com", "www.example.com", ".test"}[rng.IntN(3)]}
		}
		cfg.Rules = append(cfg.Rules, r)
	}
	cfg.Rules = append(cfg.Rules, configs.Rule{Name: "default", Action: configs.ActionDirect})
	return cfg
}

func randomFlow(rng *rand.Rand) Flow {
	f := Flow{
		Network: []Network{TCP, UDP}[rng.IntN(2)],
		Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), 2}), 40000),
		Inbound: []Inbound{Redirect, TProxy, HTTP, SOCKS}[rng.IntN(4)],
	}
	port := uint16(rng.IntN(1300))
	switch rng.IntN(6) {
	case 0:
		f.Host, f.Port = []string{"example.com", "www.example.com", "a.test", "other.org"}[rng.IntN(4)], port
	case 1:
		f.Dst = netip.AddrPortFrom(netip.AddrFrom16(randomAddr(rng, false).As16()), port) // v4-mapped
	default:
		f.Dst = netip.AddrPortFrom(randomAddr(rng, rng.IntN(3) == 0), port)
		if rng.IntN(5) == 0 {
			f.Host = "www.example.com"
		}
	}
	return f
}

func ports(from, to uint16) []configs.PortRange { return []configs.PortRange{{From: from, To: to}} }

// A rule on addresses sees the addresses a name stands for: `dst: 127.0.0.1/32 → block`
// blocks `localhost` too, an address of a name that a block rule covers blocks it, the earliest
// rule any address matches decides (and the decision names that address, to be dialled); a name
// no address rule could claim is never resolved.
func TestAddressRulesSeeTheAddressesOfAName(t *testing.T) {
	var asked []string
	r := mustRouter(t,
		configs.Rule{Name: "no-loopback", Action: configs.ActionBlock, Dst: pfx("127.0.0.0/8", "::1/128")},
		configs.Rule{Name: "no-private", Action: configs.ActionBlock, Dst: pfx("10.0.0.0/8")},
		configs.Rule{Name: "doc2-direct", Action: configs.ActionDirect, Dst: pfx("203.0.113.0/24")},
		configs.Rule{Name: "names", Action: configs.ActionDirect, Domain: []string{"named.test"}},
	)
	r.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
		asked = append(asked, host)
		return defaultResolve(ctx, host)
	}
	for _, tt := range []struct {
		host, rule string
		addr       string
	}{
		{"localhost", "no-loopback", "127.0.0.1"},
		{"blocked-one.test", "no-private", "10.99.0.1"}, // one of its two addresses is private
		{"two.test", "doc2-direct", "203.0.113.7"},      // the earliest rule any address matches
		{"unknown.test", "default", ""},                 // cannot be resolved: the rules on names decide
	} {
		d := r.Route(context.Background(), nameOnly(tt.host, 80))
		if d.Rule != tt.rule || d.Addr.String() != tt.addr && tt.addr != "" {
			t.Errorf("%s: rule %q addr %v, want %q %s", tt.host, d.Rule, d.Addr, tt.rule, tt.addr)
		}
		if tt.rule == "doc2-direct" && !d.ByDst {
			t.Errorf("%s: decision does not say it matched by dst", tt.host)
		}
	}
	// A rule on names before every rule on addresses: nothing to resolve.
	asked = nil
	r2 := mustRouter(t,
		configs.Rule{Name: "names", Action: configs.ActionDirect, Domain: []string{".test"}},
		configs.Rule{Name: "no-loopback", Action: configs.ActionBlock, Dst: pfx("127.0.0.0/8")},
	)
	r2.Resolve = r.Resolve
	if d := r2.Route(context.Background(), nameOnly("two.test", 80)); d.Rule != "names" || len(asked) != 0 {
		t.Fatalf("rule %q, resolved %v; want the name rule and no lookup", d.Rule, asked)
	}
}

// A DNS query is decided by the first rule that can speak of a name alone: rules on addresses,
// ports and protocols are about flows and are passed over; src, domain and inbound are matched.
func TestRouteQuery(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "lan", Dst: pfx("0.0.0.0/0"), Action: configs.ActionDirect},
		configs.Rule{Name: "ssh", DstPorts: []configs.PortRange{{From: 22, To: 22}}, Action: configs.ActionDirect},
		configs.Rule{Name: "udp", Protocol: []configs.Network{configs.ProtocolUDP}, Action: configs.ActionBlock},
		configs.Rule{Name: "socks-only", Inbound: []configs.Inbound{configs.InboundSOCKS}, Action: configs.ActionBlock},
		configs.Rule{Name: "ads", Domain: []string{".ads.example"}, Action: configs.ActionBlock},
		configs.Rule{Name: "kid", Src: pfx("10.0.1.9/32"), Action: configs.ActionBlock},
		configs.Rule{Name: "dns-direct", Inbound: []configs.Inbound{configs.InboundDNS}, Domain: []string{"home.example"}, Action: configs.ActionDirect},
	)
	src := netip.MustParseAddr("10.0.1.2")
	for _, tc := range []struct {
		src  netip.Addr
		name string
		rule string
	}{
		{src, "x.ads.example", "ads"},
		{src, "ads.example", "ads"},
		{src, "home.example", "dns-direct"},
		{src, "example.org", "default"},
		{netip.MustParseAddr("10.0.1.9"), "example.org", "kid"},
		{netip.MustParseAddr("::ffff:10.0.1.9"), "example.org", "kid"},
	} {
		if got := r.RouteQuery(tc.src, tc.name).Rule; got != tc.rule {
			t.Errorf("RouteQuery(%v, %q) = rule %q, want %q", tc.src, tc.name, got, tc.rule)
		}
	}
}

// Each rule counts the flows it decided, once per CountHit, and the counts are per rule.
func TestRuleHitsCountPerRule(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
listen: {http: ["127.0.0.1:0"], socks: []}
rules:
  - {name: ssh, dst_ports: [22], action: block}
  - {name: rest, action: direct}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter(cfg, map[string]upstream.Upstream{configs.SchemeDirect: &upstream.Direct{}})
	if err != nil {
		t.Fatal(err)
	}
	dst := func(port uint16) Flow {
		return Flow{Network: TCP, Dst: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port), Inbound: Redirect}
	}
	for _, p := range []uint16{22, 80, 443, 22, 8080} {
		r.Route(context.Background(), dst(p)).CountHit()
	}
	r.Route(context.Background(), dst(22)) // routed, not counted: a second look at one flow
	if got := r.Hits(); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("hits %v, want [2 3]", got)
	}
	if d := r.Route(context.Background(), dst(80)); d.Way != configs.SchemeDirect {
		t.Errorf("a direct rule's way %q", d.Way)
	}
	Decision{}.CountHit() // a decision of no RuleRouter counts nowhere
}
