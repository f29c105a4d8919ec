//go:build linux

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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
// protocol and destination port are kept in a set, to say what leaked (for ICMP, its type,
// code and destination). Link-local IPv6
// (neighbour discovery, MLD) and the unspecified source (duplicate address detection) cannot
// be routed from the LAN and are not counted.
type leakWatch struct{ ns *netlab.NS }

func leakWatchStart(t *testing.T, tp *netlab.Topology) *leakWatch {
	t.Helper()
	rules := fmt.Sprintf(`table inet leakwatch {
	counter leaks { }
	set seen4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; size 4096; }
	set seen6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; size 4096; }
	set icmp4 { type icmp_type . icmp_code . ipv4_addr; flags dynamic; size 4096; }
	set icmp6 { type icmpv6_type . icmpv6_code . ipv6_addr; flags dynamic; size 4096; }
	chain pre {
		type filter hook prerouting priority -300; policy accept;
		iifname "lo" accept
		ip saddr %s accept
		ip6 saddr { %s, ::, fe80::/10 } accept
		counter name leaks
		meta nfproto ipv4 add @seen4 { ip saddr . meta l4proto . th dport }
		meta nfproto ipv6 add @seen6 { ip6 saddr . meta l4proto . th dport }
		meta l4proto icmp add @icmp4 { icmp type . icmp code . ip daddr }
		meta l4proto ipv6-icmp add @icmp6 { icmpv6 type . icmpv6 code . ip6 daddr }
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
	for _, set := range []string{"seen4", "seen6", "icmp4", "icmp6"} {
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
	w.ns.MustRun("nft", "flush", "set", "inet", "leakwatch", "icmp4")
	w.ns.MustRun("nft", "flush", "set", "inet", "leakwatch", "icmp6")
}

// leakLab is the lab the leak test runs its battery in: web (80), an origin on 443 (HTTPS on
// TCP, HTTP/3 on UDP: quicOrigin), the DNS origin (53), a UDP echo on 123 (NTP-like), dante,
// and a gw that forwards wan's addresses like a plain router would (the lab's filter would
// otherwise hide a leak by dropping it in gw).
type leakLab struct {
	tp       *netlab.Topology
	origin   *quicOrigin
	chromium bool // Debian's chromium is installed: it is one of the QUIC clients
	late     *lateReplier
}

// lateReplier is a UDP server in wan (port 124) that answers a datagram only when told: after
// the client has closed its socket, so the answer, relayed by socksgate, meets a closed port
// and the LAN host sends port unreachable toward wan.
type lateReplier struct {
	pc   net.PacketConn
	from chan net.Addr
}

func serveLateReplier(t *testing.T, tp *netlab.Topology) *lateReplier {
	t.Helper()
	r := &lateReplier{pc: tp.WAN.ListenPacket("udp", "[::]:124"), from: make(chan net.Addr, 16)}
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := r.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r.from <- from
		}
	}()
	return r
}

// icmpOutUnreach is how many destination unreachable messages ns has sent, of the family.
func icmpOutUnreach(ns *netlab.NS, v6 bool) int {
	file, key := "/proc/net/snmp", "OutDestUnreachs"
	if v6 {
		file, key = "/proc/net/snmp6", "Icmp6OutDestUnreachs"
	}
	out, _ := ns.Run("cat", file)
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		if v6 {
			if f := strings.Fields(line); len(f) == 2 && f[0] == key {
				n, _ := strconv.Atoi(f[1])
				return n
			}
			continue
		}
		// "Icmp: InMsgs ... OutDestUnreachs ..." then "Icmp: 1 ...": the names, then the values.
		if names := strings.Fields(line); len(names) > 0 && names[0] == "Icmp:" && i+1 < len(lines) {
			vals := strings.Fields(lines[i+1])
			for j, name := range names {
				if name == key && j < len(vals) {
					n, _ := strconv.Atoi(vals[j])
					return n
				}
			}
			return -1
		}
	}
	return -1
}

// unreachable sends a datagram from lan to wan's late replier and closes the socket before the
// answer comes: the LAN host answers the relayed answer with port unreachable, addressed to
// wan. It returns once lan has sent it.
func (l *leakLab) unreachable(wan string) error {
	pc := l.tp.LAN.ListenPacket("udp", ":0")
	before := icmpOutUnreach(l.tp.LAN, strings.Contains(wan, ":"))
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(wan), 124))
	if _, err := pc.WriteTo([]byte("late"), dst); err != nil {
		return err
	}
	var from net.Addr
	select {
	case from = <-l.late.from:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("udp to %s: never arrived", dst)
	}
	pc.Close()
	if _, err := l.late.pc.WriteTo([]byte("too late"), from); err != nil {
		return err
	}
	if !waitFor(5*time.Second, func() bool { return icmpOutUnreach(l.tp.LAN, strings.Contains(wan, ":")) > before }) {
		return fmt.Errorf("lan sent no destination unreachable for the late answer from %s", dst)
	}
	return nil
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

// quic fetches the origin's page over HTTP/3 from lan with a real client: quic-go's, or
// Chromium with QUIC forced on; the origin must have seen the request as HTTP/3.
func (l *leakLab) quic(t *testing.T, wan string, withChromium bool) error {
	before := l.origin.count("HTTP/3.0")
	var page string
	var err error
	if withChromium {
		page, err = chromium(t, l.tp, l.origin, wan, t.TempDir(), true)
	} else {
		page, err = quicGoGet(l.tp, l.origin, wan)
	}
	if err != nil || !strings.Contains(page, pageBody) {
		return fmt.Errorf("quic to %s: %v: %q", wan, err, page)
	}
	if l.origin.count("HTTP/3.0") == before {
		return fmt.Errorf("quic to %s: no HTTP/3 request at the origin (%v)", wan, l.origin.requests())
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
func (l *leakLab) battery(t *testing.T) []leakProbe {
	lan, gw := l.tp.LAN, l.tp.GW
	var ps []leakProbe
	for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
		ps = append(ps,
			leakProbe{"lan http " + wan, func() error { return l.curlLAN(urlFor(wan, "/")) }},
			leakProbe{"lan https " + wan, func() error { return l.curlLAN("https://" + net.JoinHostPort(wan, "443") + "/") }},
			leakProbe{"router http " + wan, func() error { return l.curlRouter(urlFor(wan, "/")) }},
			leakProbe{"router https " + wan, func() error { return l.curlRouter("https://" + net.JoinHostPort(wan, "443") + "/") }},
			leakProbe{"lan quic (quic-go) " + wan, func() error { return l.quic(t, wan, false) }},
			leakProbe{"lan udp/123 " + wan, func() error { return l.udp(lan, net.JoinHostPort(wan, "123")) }},
		)
		if l.chromium {
			ps = append(ps, leakProbe{"lan quic (chromium) " + wan, func() error { return l.quic(t, wan, true) }})
		}
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
	dnsStartOrigin(t, tp)
	udpEcho(t, tp, 123)
	_, err := exec.LookPath("chromium")
	lab := &leakLab{tp: tp, origin: serveQUICOrigin(t, tp), chromium: err == nil, late: serveLateReplier(t, tp)}
	if !lab.chromium {
		if os.Getenv("CI") != "" { // CI installs every peer (tests/deps.sh)
			t.Fatal("chromium is not installed; tests/deps.sh should have installed it")
		}
		t.Log("no chromium (Debian's chromium package): QUIC from quic-go's client only")
	}
	startDante(t, tp, danteOptions{})
	watch := leakWatchStart(t, tp)

	t.Run("leak-proof", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, leakProofConfig())
		watch.reset(t)
		for _, p := range lab.battery(t) {
			if err := p.run(); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
			if n, what := watch.count(t); n != 0 {
				t.Fatalf("%s: %d packets reached wan not from the upstream: %s\n%s", p.name, n, what, gw.Output())
			}
		}
		// transparent.icmp: block: a LAN host's port unreachable about a datagram socksgate
		// relayed never reaches wan (the remote never sent that datagram).
		for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
			if err := lab.unreachable(wan); err != nil {
				t.Errorf("port unreachable toward %s: %v", wan, err)
			}
			if n, what := watch.count(t); n != 0 {
				t.Fatalf("port unreachable toward %s: %d packets reached wan not from the upstream: %s", wan, n, what)
			}
		}
		// The LAN's pings to wan get no answer and never reach it; a ping to the router
		// itself still does.
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
		t.Logf("leak-proof: battery of %d probes, pings and kill -9: 0 packets", len(lab.battery(t)))
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
		{"transparent.icmp pass, port unreachable", strings.Replace(proof, "icmp: block", "icmp: pass", 1), false,
			func() error { return lab.unreachable(netlab.WAN4) }},
		{"transparent.icmp pass, port unreachable -6", strings.Replace(proof, "icmp: block", "icmp: pass", 1), false,
			func() error { return lab.unreachable(netlab.WAN6) }},
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
