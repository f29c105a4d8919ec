//go:build linux

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/tests/netlab"
)

// leakProofConfig is the configuration docs/deployment.md ("Leak-proof settings") documents,
// with the lab's addresses: everything through dante, UDP captured, QUIC routed by its
// Initials' server name, the LAN's pings dropped, LAN DNS hijacked and asked through the
// upstream, the router's own traffic captured, and the rules left in place when socksgate dies. The resolvers are wan's
// dnsmasq (a test never asks the machine's resolver); dns.local and dns.direct are asked
// direct by design, and the battery asks no local name and no rule sends a name direct.
func leakProofConfig() string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 3s, grace: 1s}
upstreams:
  - {name: dante, url: "socks5://%s:1080"}
transparent:
  udp: true
  udp_idle: 1s
  udp_without_support: block
  quic: sniff
  icmp: block
  sniff: {enabled: true, ports: [80, 443]}
router: {capture: true}
rules:
  - {name: default, action: proxy, upstream: dante}
dns:
  hijack: true
  servers: [%q]
  direct: [%q]
  local: [%q]
  rate: -1
on_crash: closed
`, netlab.GWLANIf, netlab.Proxy4, netlab.WAN4, netlab.WAN4, netlab.WAN4)
}

// leakWatch is an nftables counter in wan's prerouting hook: every packet that arrives at wan
// from anyone but the upstream proxy (dante's wan addresses) is counted, and its source,
// protocol and destination port are kept in a set, to say what leaked. Link-local IPv6
// (neighbour discovery, MLD) and the unspecified source (duplicate address detection) cannot
// be routed from the LAN and are not counted.
type leakWatch struct{ ns *netlab.NS }

func leakWatchStart(t *testing.T, tp *netlab.Topology) *leakWatch {
	t.Helper()
	rules := fmt.Sprintf(`table inet leakwatch {
	counter leaks { }
	set seen4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; size 4096; }
	set seen6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; size 4096; }
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		iifname "lo" accept
		ip saddr %s accept
		ip6 saddr { %s, ::, fe80::/10 } accept
		counter name leaks
		meta nfproto ipv4 add @seen4 { ip saddr . meta l4proto . th dport }
		meta nfproto ipv6 add @seen6 { ip6 saddr . meta l4proto . th dport }
	}
}
`, netlab.ProxyWAN4, netlab.ProxyWAN6)
	tp.WAN.MustRun("nft", "-f", writeFile(t, "leakwatch.nft", rules))
	return &leakWatch{ns: tp.WAN}
}

var leakPackets = regexp.MustCompile(`packets (\d+)`)

// count is how many packets leaked since the last reset, and what they were.
func (w *leakWatch) count(t *testing.T) (int, string) {
	t.Helper()
	out := w.ns.MustRun("nft", "list", "counter", "inet", "leakwatch", "leaks")
	m := leakPackets.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	var seen []string
	for _, set := range []string{"seen4", "seen6"} {
		s := w.ns.MustRun("nft", "list", "set", "inet", "leakwatch", set)
		if _, el, ok := strings.Cut(s, "elements = {"); ok {
			el, _, _ = strings.Cut(el, "}")
			seen = append(seen, strings.Join(strings.Fields(el), " "))
		}
	}
	return n, strings.Join(seen, " ")
}

func (w *leakWatch) reset(t *testing.T) {
	t.Helper()
	w.ns.MustRun("nft", "reset", "counter", "inet", "leakwatch", "leaks")
	w.ns.MustRun("nft", "flush", "set", "inet", "leakwatch", "seen4")
	w.ns.MustRun("nft", "flush", "set", "inet", "leakwatch", "seen6")
}

// leakLab is the lab the leak test runs its battery in: web (80), TLS (443), the DNS origin
// (53), UDP echoes on 123 (NTP-like) and 443 (QUIC), dante, and a gw that forwards wan's
// addresses like a plain router would (the lab's filter would otherwise hide a leak by
// dropping it in gw).
type leakLab struct {
	tp         *netlab.Topology
	quicHits   *atomic.Int64
	quicDgrams [][]byte
}

func (l *leakLab) curlLAN(url string) error    { return leakCurl(l.tp.LAN, url) }
func (l *leakLab) curlRouter(url string) error { return leakCurl(l.tp.GW, url) }

func leakCurl(ns *netlab.NS, url string) error {
	out, err := curl(ns, "-k", url)
	if err != nil || out != pageBody {
		return fmt.Errorf("curl %s: %v: %q", url, err, out)
	}
	return nil
}

func (l *leakLab) dig(ns *netlab.NS, server string) error {
	out, err := digShort(ns, server, "wan.test", "A")
	if err != nil || out != netlab.WAN4 {
		return fmt.Errorf("dig @%s wan.test: %v: %q", server, err, out)
	}
	return nil
}

func (l *leakLab) udp(ns *netlab.NS, dst string) error {
	pc := ns.ListenPacket("udp", ":0")
	defer pc.Close()
	ap := netip.MustParseAddrPort(dst)
	got, _, err := udpExchange(pc, ap, "ntp-like", 3, 2*time.Second)
	if err != nil || got != "ntp-like" {
		return fmt.Errorf("udp to %s: %v: %q", dst, err, got)
	}
	return nil
}

// quic replays a real Chromium client's first Initials from lan to wan's UDP 443.
func (l *leakLab) quic(wan string) error {
	pc := l.tp.LAN.ListenPacket("udp", ":0")
	defer pc.Close()
	before := l.quicHits.Load()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(wan), 443))
	for _, d := range l.quicDgrams {
		if _, err := pc.WriteTo(d, dst); err != nil {
			return err
		}
	}
	want := before + int64(len(l.quicDgrams))
	if !waitFor(5*time.Second, func() bool { return l.quicHits.Load() >= want }) {
		return fmt.Errorf("quic to %s: the server got %d datagrams, want %d", wan, l.quicHits.Load()-before, len(l.quicDgrams))
	}
	return nil
}

// ping sends one echo request from ns to dst (ping -4 or -6 by dst's family) and waits 2s for
// the reply.
func (l *leakLab) ping(ns *netlab.NS, dst string) error {
	fam := "-4"
	if strings.Contains(dst, ":") {
		fam = "-6"
	}
	out, err := ns.Run("ping", fam, "-n", "-c", "1", "-W", "2", dst)
	if err != nil {
		return fmt.Errorf("ping %s %s: %v: %s", fam, dst, err, out)
	}
	return nil
}

type leakProbe struct {
	name string
	run  func() error
}

// battery is what a LAN host and the router send: every probe must get its answer.
func (l *leakLab) battery() []leakProbe {
	lan, gw := l.tp.LAN, l.tp.GW
	var ps []leakProbe
	for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
		ps = append(ps,
			leakProbe{"lan http " + wan, func() error { return l.curlLAN(urlFor(wan, "/")) }},
			leakProbe{"lan https " + wan, func() error { return l.curlLAN("https://" + net.JoinHostPort(wan, "443") + "/") }},
			leakProbe{"router http " + wan, func() error { return l.curlRouter(urlFor(wan, "/")) }},
			leakProbe{"router https " + wan, func() error { return l.curlRouter("https://" + net.JoinHostPort(wan, "443") + "/") }},
			leakProbe{"lan quic " + wan, func() error { return l.quic(wan) }},
			leakProbe{"lan udp/123 " + wan, func() error { return l.udp(lan, net.JoinHostPort(wan, "123")) }},
		)
	}
	for _, server := range []string{netlab.GWLAN4, netlab.GWLAN6, netlab.WAN4, netlab.WAN6} {
		ps = append(ps, leakProbe{"lan dns @" + server, func() error { return l.dig(lan, server) }})
	}
	ps = append(ps,
		leakProbe{"router dns @" + netlab.WAN4, func() error { return l.dig(gw, netlab.WAN4) }},
		leakProbe{"router udp/123 " + netlab.WAN4, func() error { return l.udp(gw, net.JoinHostPort(netlab.WAN4, "123")) }},
	)
	return ps
}

// With the documented leak-proof settings, nothing a LAN host or the router sends reaches wan
// but through the upstream: HTTP and HTTPS over both families from both, DNS to the router and
// to wan's resolver, QUIC, NTP-like UDP, pings over both families (transparent.icmp: block), and
// after a kill -9 nothing either. Without each setting the counter shows what leaks; ICMP is
// routed, not proxied, so with icmp: pass a ping reaches wan directly.
func TestLeak(t *testing.T) {
	needBin(t, "curl", "dig", "ping")
	tp := netlab.NewTopology(t)
	tp.AllowDirect(netlab.WAN4)
	tp.AllowDirect(netlab.WAN6)
	serveWeb(t, tp)
	serveTLS(t, tp, "wan.test")
	dnsStartOrigin(t, tp)
	udpEcho(t, tp, 123)
	lab := &leakLab{tp: tp, quicHits: udpEcho(t, tp, 443), quicDgrams: testutil.ChromiumQUICInitials(t)}
	startDante(t, tp, danteOptions{})
	watch := leakWatchStart(t, tp)

	t.Run("leak-proof", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, leakProofConfig())
		watch.reset(t)
		for _, p := range lab.battery() {
			if err := p.run(); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
			if n, what := watch.count(t); n != 0 {
				t.Fatalf("%s: %d packets reached wan not from the upstream: %s\n%s", p.name, n, what, gw.Output())
			}
		}
		// transparent.icmp: block: the LAN's pings to wan get no answer and never reach it; a
		// ping to the router itself still does.
		for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
			if err := lab.ping(tp.LAN, wan); err == nil {
				t.Errorf("lan ping %s answered with icmp: block", wan)
			}
			if n, what := watch.count(t); n != 0 {
				t.Fatalf("lan ping %s: %d packets reached wan not from the upstream: %s", wan, n, what)
			}
		}
		for _, router := range []string{netlab.GWLAN4, netlab.GWLAN6} {
			if err := lab.ping(tp.LAN, router); err != nil {
				t.Errorf("lan ping to the router: %v", err)
			}
		}
		// on_crash: closed: killed, socksgate leaves its table, and the LAN is cut off, not direct.
		gw.Kill()
		if err := lab.curlLAN(urlFor(netlab.WAN4, "/")); err == nil {
			t.Errorf("lan curl reached wan with socksgate killed")
		}
		if err := lab.udp(tp.LAN, net.JoinHostPort(netlab.WAN4, "123")); err == nil {
			t.Errorf("lan udp reached wan with socksgate killed")
		}
		if n, what := watch.count(t); n != 0 {
			t.Fatalf("after kill -9: %d packets reached wan not from the upstream: %s", n, what)
		}
		t.Logf("leak-proof: battery of %d probes, pings and kill -9: 0 packets", len(lab.battery()))
	})

	// Each setting off (or a rule against it): the probe it guards reaches wan directly.
	proof := leakProofConfig()
	for _, tc := range []struct {
		name, cfg string
		kill      bool
		probe     func() error
	}{
		{"router.capture off", strings.Replace(proof, "router: {capture: true}", "router: {capture: false}", 1), false,
			func() error { return lab.curlRouter(urlFor(netlab.WAN4, "/")) }},
		{"transparent.udp off", strings.Replace(proof, "  udp: true\n", "  udp: false\n", 1), false,
			func() error { return lab.udp(tp.LAN, net.JoinHostPort(netlab.WAN4, "123")) }},
		{"dns.hijack off, resolver routed direct",
			strings.Replace(strings.Replace(proof, "hijack: true", "hijack: false", 1), "rules:\n",
				"rules:\n  - {name: resolver-direct, dst: ["+netlab.WAN4+"/32], dst_ports: [53], action: direct}\n", 1), false,
			func() error { return lab.dig(tp.LAN, netlab.WAN4) }},
		{"on_crash open, killed", strings.Replace(proof, "on_crash: closed", "on_crash: open", 1), true,
			func() error { return lab.curlLAN(urlFor(netlab.WAN4, "/")) }},
		{"transparent.icmp pass, ping -4", strings.Replace(proof, "icmp: block", "icmp: pass", 1), false,
			func() error { return lab.ping(tp.LAN, netlab.WAN4) }},
		{"transparent.icmp pass, ping -6", strings.Replace(proof, "icmp: block", "icmp: pass", 1), false,
			func() error { return lab.ping(tp.LAN, netlab.WAN6) }},
		// The router's own pings pass with icmp: block (watchdogs and multi-WAN trackers need
		// them): the choice, measured.
		{"icmp block, the router's own ping -4", proof, false,
			func() error { return lab.ping(tp.GW, netlab.WAN4) }},
		{"icmp block, the router's own ping -6", proof, false,
			func() error { return lab.ping(tp.GW, netlab.WAN6) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startSocksgate(t, tp.GW, tc.cfg)
			if tc.kill {
				gw.Kill()
			}
			watch.reset(t)
			err := tc.probe()
			n, what := watch.count(t)
			if n == 0 {
				t.Fatalf("nothing leaked (probe: %v)\n%s", err, gw.Output())
			}
			t.Logf("%s: %d packets reached wan directly (probe answered: %v): %s", tc.name, n, err == nil, what)
			if !tc.kill {
				stopSocksgate(t, tp.GW, gw)
			}
		})
	}
}
