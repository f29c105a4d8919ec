package route

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

func mac(s string) configs.MAC {
	m, err := configs.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// The src_mac and device matchers match the source's LAN device; a source without a known
// device matches neither; the device is asked for at most once per decision.
func TestRouteDeviceMatchers(t *testing.T) {
	r := mustRouter(t,
		configs.Rule{Name: "early", Dst: pfx("203.0.113.0/24"), Action: configs.ActionBlock},
		configs.Rule{Name: "by-mac", SrcMAC: []configs.MAC{mac("aa:bb:cc:dd:ee:01")}, Action: configs.ActionDirect},
		configs.Rule{Name: "by-name", Device: []string{"laptop"}, Action: configs.ActionBlock},
	)
	devs := map[netip.Addr]struct {
		mac  configs.MAC
		name string
	}{
		netip.MustParseAddr("10.0.1.2"): {mac("aa:bb:cc:dd:ee:01"), "phone"},
		netip.MustParseAddr("10.0.1.3"): {mac("aa:bb:cc:dd:ee:02"), "laptop.lan"},
		netip.MustParseAddr("10.0.1.4"): {mac("aa:bb:cc:dd:ee:03"), ""},
	}
	asked := 0
	r.Device = func(a netip.Addr) (configs.MAC, string, bool) {
		asked++
		d, ok := devs[a]
		return d.mac, d.name, ok
	}
	for _, tc := range []struct {
		src, dst string
		want     string
		asks     int
	}{
		{"10.0.1.2:1000", "198.51.100.1:443", "by-mac", 1},
		{"10.0.1.3:1000", "198.51.100.1:443", "by-name", 1},
		{"10.0.1.4:1000", "198.51.100.1:443", "default", 1}, // no name: device never matches
		{"10.0.1.9:1000", "198.51.100.1:443", "default", 1}, // unknown source
		{"10.0.1.2:1000", "203.0.113.5:443", "early", 1},    // asked once whichever rule decides
	} {
		asked = 0
		f := Flow{Network: TCP, Src: ap(tc.src), Dst: ap(tc.dst), Inbound: Redirect}
		if d := r.Route(context.Background(), f); d.Rule != tc.want || asked != tc.asks {
			t.Errorf("%s → %s: rule %s (asked %d), want %s (asked %d)", tc.src, tc.dst, d.Rule, asked, tc.want, tc.asks)
		}
		vs := r.Explain(f)
		if last := vs[len(vs)-1]; last.Rule != tc.want {
			t.Errorf("Explain %s: decides %s, want %s", tc.src, last.Rule, tc.want)
		}
	}
	// Explain names the device matchers that failed.
	vs := r.Explain(Flow{Network: TCP, Src: ap("10.0.1.4:1"), Dst: ap("198.51.100.1:443"), Inbound: Redirect})
	if !slices.Equal(vs[1].Failed, []Matcher{MatchSrcMAC}) || !slices.Equal(vs[2].Failed, []Matcher{MatchDevice}) {
		t.Errorf("failed matchers = %v, %v", vs[1].Failed, vs[2].Failed)
	}
	// DNS queries are decided per device too.
	if d := r.RouteQuery(netip.MustParseAddr("10.0.1.3"), "example.com"); d.Rule != "by-name" {
		t.Errorf("RouteQuery = %s, want by-name", d.Rule)
	}
	// Without a device source, such rules never match.
	r.Device = nil
	if d := r.Route(context.Background(), Flow{Network: TCP, Src: ap("10.0.1.2:1"), Dst: ap("198.51.100.1:443"), Inbound: Redirect}); d.Rule != "default" {
		t.Errorf("no device source: %s", d.Rule)
	}
}

func TestRouteWithDeviceRulesDoesNotAllocate(t *testing.T) {
	r := mustRouter(t, configs.Rule{Name: "by-mac", SrcMAC: []configs.MAC{mac("aa:bb:cc:dd:ee:01")}, Device: []string{"x"}, Action: configs.ActionDirect})
	m := mac("aa:bb:cc:dd:ee:01")
	r.Device = func(netip.Addr) (configs.MAC, string, bool) { return m, "x.lan", true }
	f := Flow{Network: TCP, Src: ap("10.0.1.2:1000"), Dst: ap("198.51.100.1:443"), Inbound: Redirect}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { r.Route(ctx, f) }); n != 0 {
		t.Errorf("Route allocates %v times", n)
	}
}
