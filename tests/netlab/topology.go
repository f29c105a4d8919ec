//go:build linux

package netlab

import "testing"

// Topology is the standard gateway lab, four hosts in a line:
//
//	lan ── gw ── proxy ── wan
//	10.0.1.0/24       10.0.2.0/24          203.0.113.0/24
//	fd00:1::/64       fd00:2::/64          2001:db8:3::/64
//
// lan's default route is gw (the router socksgate runs on); gw's default route is proxy, which
// forwards to wan like an ISP router would and also hosts the upstream proxy. gw forwards too,
// but a filter table in gw ("labfilter", not socksgate's) drops forwarded lan traffic, so a
// flow from lan reaches wan only if socksgate carries it (its own sockets are locally
// generated and never forwarded). AllowDirect opens that path for single addresses.
type Topology struct {
	*Lab
	LAN, GW, Proxy, WAN *NS
}

// Addresses of the standard topology.
const (
	LAN4, LAN6       = "10.0.1.2", "fd00:1::2"
	GWLAN4, GWLAN6   = "10.0.1.1", "fd00:1::1"
	GWUp4, GWUp6     = "10.0.2.1", "fd00:2::1"
	Proxy4, Proxy6   = "10.0.2.2", "fd00:2::2"
	ProxyWAN4        = "203.0.113.1"
	ProxyWAN6        = "2001:db8:3::1"
	WAN4, WAN6       = "203.0.113.10", "2001:db8:3::10"
	GWLANIf, GWUpIf  = "lan0", "up0"
	LANIf            = "eth0"
	ProxyGWIf, WANIf = "gw0", "eth0"
)

// NewTopology builds the four namespaces, links, addresses, routes and the forwarding filter.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	l := New(t)
	tp := &Topology{Lab: l, LAN: l.NS("lan"), GW: l.NS("gw"), Proxy: l.NS("proxy"), WAN: l.NS("wan")}
	l.Link(tp.LAN, LANIf, tp.GW, GWLANIf)
	l.Link(tp.GW, GWUpIf, tp.Proxy, ProxyGWIf)
	l.Link(tp.Proxy, "wan0", tp.WAN, WANIf)

	tp.LAN.Addr(LANIf, LAN4+"/24", LAN6+"/64")
	tp.LAN.Route("default", "via", GWLAN4)
	tp.LAN.MustRun("ip", "-6", "route", "add", "default", "via", GWLAN6)

	tp.GW.Addr(GWLANIf, GWLAN4+"/24", GWLAN6+"/64")
	tp.GW.Addr(GWUpIf, GWUp4+"/24", GWUp6+"/64")
	tp.GW.Route("default", "via", Proxy4)
	tp.GW.MustRun("ip", "-6", "route", "add", "default", "via", Proxy6)
	tp.GW.Forwarding()

	tp.Proxy.Addr(ProxyGWIf, Proxy4+"/24", Proxy6+"/64")
	tp.Proxy.Addr("wan0", ProxyWAN4+"/24", ProxyWAN6+"/64")
	tp.Proxy.Route("10.0.1.0/24", "via", GWUp4)
	tp.Proxy.MustRun("ip", "-6", "route", "add", "fd00:1::/64", "via", GWUp6)
	tp.Proxy.Forwarding()

	tp.WAN.Addr(WANIf, WAN4+"/24", WAN6+"/64")
	tp.WAN.Route("default", "via", ProxyWAN4)
	tp.WAN.MustRun("ip", "-6", "route", "add", "default", "via", ProxyWAN6)

	// Only what socksgate itself sends may leave gw toward wan. The lab's filter uses nft(8):
	// it is test scaffolding in a throwaway namespace, not socksgate's own rules.
	tp.GW.MustRun("nft", "add table inet labfilter")
	tp.GW.MustRun("nft", "add chain inet labfilter forward { type filter hook forward priority 0; policy accept; }")
	tp.GW.MustRun("nft", "add rule inet labfilter forward iifname "+GWLANIf+" oifname "+GWUpIf+" counter drop")
	return tp
}

// AllowDirect lets gw forward lan traffic to one destination address (for bypass and direct
// tests), inserted before the drop.
func (tp *Topology) AllowDirect(addr string) {
	tp.Lab.t.Helper()
	fam := "ip"
	if containsColon(addr) {
		fam = "ip6"
	}
	tp.GW.MustRun("nft", "insert rule inet labfilter forward "+fam+" daddr "+addr+" accept")
	tp.GW.MustRun("nft", "insert rule inet labfilter forward "+fam+" saddr "+addr+" accept")
}

// DirectDrops is how many lan packets gw's filter has dropped on their way to wan.
func (tp *Topology) DirectDrops() string {
	out, _ := tp.GW.Run("nft", "list chain inet labfilter forward")
	return out
}

func containsColon(s string) bool {
	for i := range len(s) {
		if s[i] == ':' {
			return true
		}
	}
	return false
}
