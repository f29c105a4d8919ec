package gateway

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/device"
	"github.com/socksgate/socksgate/internal/tcpinfo"
	"github.com/socksgate/socksgate/route"
)

// The devices of the LAN (device.Tracker): the router's src_mac and device matchers ask it,
// /flows and /devices show it, and bytes are credited to it when a flow ends (finish, the UDP
// sessions' ends) and, for long flows, by one sampler pass every devices.sample (walkFlows):
// nothing per read, no goroutine or timer per flow.

// deviceBox holds the run's tracker and its settings for an atomic.Pointer.
type deviceBox struct {
	t   *device.Tracker
	top int // devices.metrics_top
}

// tracker is the run's device tracker, or nil when devices are off.
func (g *Gateway) tracker() *device.Tracker {
	if b := g.devices.Load(); b != nil {
		return b.t
	}
	return nil
}

// startDevices starts the device tracker when cfg has devices on.
func (rt *running) startDevices(cfg *configs.Config) {
	d := cfg.Devices
	if !d.On(len(cfg.LAN.Interfaces) > 0) {
		return
	}
	log := rt.log.WithField("part", "devices")
	resolver := ""
	if d.ReverseDNS {
		resolver = localResolver(cfg)
	}
	t := device.Start(device.Options{
		Interfaces: cfg.LAN.Interfaces,
		Leases:     d.Leases,
		Max:        d.Max,
		StateDir:   cfg.StateDir,
		Sample:     time.Duration(d.Sample),
		Walk:       rt.g.walkFlows,
		Resolver:   resolver,
		Dialer:     &net.Dialer{Control: rt.mark},
		Warn:       func(msg string, err error) { log.WithError(err).Warn(msg) },
	})
	rt.g.devices.Store(&deviceBox{t: t, top: d.MetricsTop})
	log.WithFields(logrus.Fields{
		"store": filepath.Join(cfg.StateDir, device.StoreFile), "leases": d.Leases, "sample": time.Duration(d.Sample).String(),
		"reverse_dns": resolver,
	}).Info("devices on")
}

// stopDevices writes the devices' totals and stops the tracker, once the flows have ended.
func (rt *running) stopDevices() {
	b := rt.g.devices.Swap(nil)
	if b == nil {
		return
	}
	if err := b.t.Close(); err != nil {
		rt.log.WithError(err).Warn("devices: saving totals")
	}
}

// localResolver is where reverse DNS is asked: socksgate's own DNS when it listens on a
// loopback address, else devices.resolver (the router's dnsmasq by default).
func localResolver(cfg *configs.Config) string {
	if cfg.DNS.On() {
		for _, l := range cfg.DNS.Listen {
			host, port, err := net.SplitHostPort(l)
			if a, perr := netip.ParseAddr(host); err == nil && perr == nil && a.IsLoopback() {
				return net.JoinHostPort(host, port)
			}
		}
	}
	return cfg.Devices.Resolver
}

// useDevices has the router ask the tracker for the src_mac and device matchers.
func (rt *running) useDevices(r route.Router) {
	rr, ok := r.(*route.RuleRouter)
	if !ok {
		return
	}
	if t := rt.g.tracker(); t != nil {
		rr.Device = t.Resolve
	}
}

// udpKey identifies a transparent UDP session to the device meter for its life.
type udpKey struct {
	src   netip.AddrPort
	start time.Time
}

// liveBytes is what a live TCP flow has moved so far: its client socket's TCP_INFO (bytes
// received from the client, bytes it acknowledged), or a forwarded flow's own counts.
func liveBytes(client any) (up, down uint64) {
	if fb, ok := client.(interface{ flowBytes() (uint64, uint64) }); ok {
		return fb.flowBytes()
	}
	return tcpinfo.Bytes(client)
}

// walkFlows is the sampler pass: it visits every live flow from the LAN with its counters so
// far.
func (g *Gateway) walkFlows(visit func(key any, src netip.Addr, up, down uint64)) {
	g.eachLiveFlow(true, visit)
}

// eachLiveFlow visits every live flow (only those from the LAN with lanOnly: not the router's
// own) with its counters so far: TCP flows, transparent UDP sessions, SOCKS5 associations.
// The flow table's lock is held only to copy it; the kernel is read without it.
func (g *Gateway) eachLiveFlow(lanOnly bool, visit func(key any, src netip.Addr, up, down uint64)) {
	type ref struct {
		lf     *liveFlow
		client net.Conn // read under g.mu: a forwarded flow gets its client once dialed
	}
	g.mu.Lock()
	tcp := make([]ref, 0, len(g.flows))
	for lf := range g.flows {
		if lf.client != nil && !(lanOnly && lf.Inbound == route.FromRouter) {
			tcp = append(tcp, ref{lf, lf.client})
		}
	}
	tbl := g.udpTable
	assocs := make([]*explicitUDP, 0, len(g.assocs))
	for u := range g.assocs {
		assocs = append(assocs, u)
	}
	g.mu.Unlock()
	for _, r := range tcp {
		up, down := liveBytes(r.client)
		visit(r.lf, r.lf.Src.Addr(), up, down)
	}
	if tbl != nil {
		for _, s := range tbl.Sessions() {
			visit(udpKey{s.Src, s.Start}, s.Src.Addr(), s.BytesUp, s.BytesDown)
		}
	}
	for _, u := range assocs {
		visit(u, u.src.Addr(), uint64(max(u.upBytes.Load(), 0)), uint64(max(u.downBytes.Load(), 0)))
	}
}

// deviceEnd credits an ended flow's bytes (what the sampler has not) to its device.
func (g *Gateway) deviceEnd(key any, f route.Flow, up, down int64) {
	t := g.tracker()
	if t == nil || f.Inbound == route.FromRouter {
		return
	}
	t.End(key, f.Src.Addr(), uint64(max(up, 0)), uint64(max(down, 0)))
}

// deviceOf fills a flow's MAC and Device for /flows.
func deviceOf(t *device.Tracker, af *admin.Flow, src netip.Addr) {
	if t == nil {
		return
	}
	if mac, name, ok := t.Lookup(src); ok {
		af.MAC, af.Device = mac.String(), name
	}
}

// Devices implements admin.DeviceSource: every device with its live flows now.
func (a AdminSource) Devices() []admin.Device {
	t := a.G.tracker()
	if t == nil {
		return nil
	}
	flows := map[configs.MAC]int{}
	count := func(src netip.Addr) {
		if mac, _, ok := t.Lookup(src); ok {
			flows[mac]++
		}
	}
	g := a.G
	g.mu.Lock()
	srcs := make([]netip.Addr, 0, len(g.flows)+len(g.assocs))
	for lf := range g.flows {
		srcs = append(srcs, lf.Src.Addr())
	}
	for u := range g.assocs {
		srcs = append(srcs, u.src.Addr())
	}
	tbl := g.udpTable
	g.mu.Unlock()
	for _, s := range srcs {
		count(s)
	}
	if tbl != nil {
		for _, s := range tbl.Sessions() {
			count(s.Src.Addr())
		}
	}
	ds := t.Devices()
	out := make([]admin.Device, 0, len(ds))
	for _, d := range ds {
		ad := admin.Device{
			MAC: d.MAC.String(), Name: d.Name, NameFrom: d.NameFrom, Flows: flows[d.MAC], LastSeen: d.LastSeen,
			Today: admin.Traffic(d.Today), Month: admin.Traffic(d.Month), Total: admin.Traffic(d.Total),
			Addresses: make([]string, 0, len(d.Addresses)),
		}
		for _, x := range d.Addresses {
			ad.Addresses = append(ad.Addresses, x.String())
		}
		out = append(out, ad)
	}
	return out
}

// DeviceBytes implements admin.DeviceSource.
func (a AdminSource) DeviceBytes() []admin.DeviceBytes {
	b := a.G.devices.Load()
	if b == nil {
		return nil
	}
	bs := b.t.MetricBytes(b.top)
	out := make([]admin.DeviceBytes, 0, len(bs))
	for _, x := range bs {
		out = append(out, admin.DeviceBytes{Device: x.Device, Total: admin.Traffic(x.Total)})
	}
	return slices.Clip(out)
}
