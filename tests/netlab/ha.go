//go:build linux

package netlab

import "testing"

// HATopology is two gateways on one LAN segment, an HA pair in front of the standard
// topology's proxy and wan:
//
//	        ┌─ gwa ─┐
//	lan ── sw       sw ── proxy ── wan
//	        └─ gwb ─┘
//	10.0.1.0/24            10.0.2.0/24       203.0.113.0/24
//	fd00:1::/64            fd00:2::/64       2001:db8:3::/64
//
// sw is a namespace holding two bridges, the LAN switch (br-lan: lan, gwa, gwb) and the
// upstream one (br-up: gwa, gwb, proxy). lan's default routes point at the virtual gateway
// addresses (VIP4, VIP6), which neither gateway holds until VRRP (the test's keepalived) puts
// them on one. Both gateways forward like plain routers, with no filter: a LAN packet that is
// not captured leaves for wan with the LAN host's address, where a test can see it. The
// proxy and wan hosts are the standard topology's, addresses included, so the helpers written
// for Topology work on Topology().
type HATopology struct {
	*Lab
	LAN, SW, GWA, GWB, Proxy, WAN *NS
}

// Addresses of the HA topology (the proxy and wan ones are Topology's).
const (
	HALAN4, HALAN6          = "10.0.1.100", "fd00:1::100"
	VIP4, VIP6              = "10.0.1.1", "fd00:1::1"
	GWALAN4, GWALAN6        = "10.0.1.2", "fd00:1::2"
	GWBLAN4, GWBLAN6        = "10.0.1.3", "fd00:1::3"
	GWAUp4, GWAUp6          = "10.0.2.11", "fd00:2::11"
	GWBUp4, GWBUp6          = "10.0.2.12", "fd00:2::12"
	HALANBridge, HAUpBridge = "br-lan", "br-up"
)

// NewHATopology builds the six namespaces, the two bridges, links, addresses and routes.
func NewHATopology(t testing.TB) *HATopology {
	t.Helper()
	l := New(t)
	h := &HATopology{Lab: l, LAN: l.NS("lan"), SW: l.NS("sw"), GWA: l.NS("gwa"), GWB: l.NS("gwb"),
		Proxy: l.NS("proxy"), WAN: l.NS("wan")}
	for _, br := range []string{HALANBridge, HAUpBridge} {
		// No multicast snooping: VRRP's adverts (224.0.0.18) and neighbour discovery reach
		// every port, as on a plain switch.
		h.SW.MustRun("ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0")
		h.SW.MustRun("ip", "link", "set", br, "up")
	}
	port := func(ns *NS, ifname, swPort, br string) {
		l.Link(h.SW, swPort, ns, ifname)
		h.SW.MustRun("ip", "link", "set", swPort, "master", br)
	}
	port(h.LAN, LANIf, "p-lan", HALANBridge)
	port(h.GWA, GWLANIf, "p-gwa", HALANBridge)
	port(h.GWB, GWLANIf, "p-gwb", HALANBridge)
	port(h.GWA, GWUpIf, "u-gwa", HAUpBridge)
	port(h.GWB, GWUpIf, "u-gwb", HAUpBridge)
	port(h.Proxy, ProxyGWIf, "u-proxy", HAUpBridge)
	l.Link(h.Proxy, "wan0", h.WAN, WANIf)

	h.LAN.Addr(LANIf, HALAN4+"/24", HALAN6+"/64")
	h.LAN.Route("default", "via", VIP4)
	h.LAN.MustRun("ip", "-6", "route", "add", "default", "via", VIP6)

	for _, gw := range []struct {
		ns                   *NS
		lan4, lan6, up4, up6 string
	}{{h.GWA, GWALAN4, GWALAN6, GWAUp4, GWAUp6}, {h.GWB, GWBLAN4, GWBLAN6, GWBUp4, GWBUp6}} {
		gw.ns.Addr(GWLANIf, gw.lan4+"/24", gw.lan6+"/64")
		gw.ns.Addr(GWUpIf, gw.up4+"/24", gw.up6+"/64")
		gw.ns.Route("default", "via", Proxy4)
		gw.ns.MustRun("ip", "-6", "route", "add", "default", "via", Proxy6)
		gw.ns.Forwarding()
	}

	h.Proxy.Addr(ProxyGWIf, Proxy4+"/24", Proxy6+"/64")
	h.Proxy.Addr("wan0", ProxyWAN4+"/24", ProxyWAN6+"/64")
	h.Proxy.Forwarding()

	h.WAN.Addr(WANIf, WAN4+"/24", WAN6+"/64")
	h.WAN.Route("default", "via", ProxyWAN4)
	h.WAN.MustRun("ip", "-6", "route", "add", "default", "via", ProxyWAN6)
	return h
}

// Topology is the standard topology's view of the pair, with gw the given gateway: for the
// helpers that start peers in proxy and wan, or reach them from gw.
func (h *HATopology) Topology(gw *NS) *Topology {
	return &Topology{Lab: h.Lab, LAN: h.LAN, GW: gw, Proxy: h.Proxy, WAN: h.WAN}
}

// Unplug takes a gateway's LAN cable out: its port on the LAN switch goes down, so the
// gateway's lan0 loses its carrier. Plug puts it back.
func (h *HATopology) Unplug(gw *NS) { h.SW.MustRun("ip", "link", "set", h.lanPort(gw), "down") }

// Plug undoes Unplug.
func (h *HATopology) Plug(gw *NS) { h.SW.MustRun("ip", "link", "set", h.lanPort(gw), "up") }

func (h *HATopology) lanPort(gw *NS) string {
	if gw == h.GWA {
		return "p-gwa"
	}
	return "p-gwb"
}
