//go:build linux

package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The lab's DNS peers work on their own: dnsmasq answers and logs who asked, a large TXT is
// truncated over UDP at 1232 bytes and whole over TCP, and dnsdist serves DoT and DoH in front
// of dnsmasq to kdig with the test CA. Asked from gw, whose own traffic reaches wan.
func TestDNSLabPeers(t *testing.T) {
	needBin(t, "kdig", "dnsdist")
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	if out, err := digShort(tp.GW, netlab.WAN4, "cached.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig cached.test: %v %q", err, out)
	}
	if n := dnsAsked(origin, "A", "cached.test", dnsFromGW); n != 1 {
		t.Fatalf("dnsmasq logged %d queries for cached.test from gw:\n%s", n, origin.Output())
	}
	out, _ := dig(tp.GW, "+ignore", "+bufsize=1232", "@"+netlab.WAN4, "big.test", "TXT")
	if !strings.Contains(out, " tc") {
		t.Fatalf("big.test over UDP at 1232 is not truncated:\n%s", out)
	}
	out, err := dig(tp.GW, "+tcp", "+short", "@"+netlab.WAN4, "big.test", "TXT")
	if err != nil || strings.Count(out, "xxxxxxxxxx") < dnsBigTXT {
		t.Fatalf("big.test over TCP: %v\n%s", err, out)
	}
	cert, key := dnsTestCA(t, "dot.test")
	dd := dnsStartDNSDist(t, tp, cert, key)
	out, err = tp.GW.Run("kdig", "+short", "+tls-ca="+cert, "+tls-hostname=dot.test", "@"+netlab.WAN4, "dot.test", "A")
	if err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("kdig +tls: %v\n%s\ndnsdist:\n%s", err, out, dd.Output())
	}
	out, err = tp.GW.Run("kdig", "+short", "+https=/dns-query", "+tls-ca="+cert, "+tls-hostname=dot.test", "@"+netlab.WAN4, "doh.test", "A")
	if err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("kdig +https: %v\n%s\ndnsdist:\n%s", err, out, dd.Output())
	}
	// Without the CA, kdig refuses the certificate: the lab's TLS is real.
	if out, err := tp.GW.Run("kdig", "+short", "+tls-ca", "+tls-hostname=dot.test", "@"+netlab.WAN4, "dot.test", "A"); err == nil && strings.TrimSpace(out) == netlab.WAN4 {
		t.Fatalf("kdig +tls trusted the test certificate without its CA:\n%s", out)
	}
}

// dnsAsk is one query dnsNoAnswer makes: from ns to server:port.
type dnsAsk struct {
	ns           *netlab.NS
	server, port string
}

// dnsNoAnswer makes each query for name at once, and fails unless none is answered (dig exits
// 9 when no server replied; it waits 1 s).
func dnsNoAnswer(t *testing.T, name string, asks ...dnsAsk) {
	t.Helper()
	errs := make(chan string, len(asks))
	for _, a := range asks {
		go func() {
			out, err := a.ns.Run("dig", "+time=1", "+tries=1", "-p", a.port, "@"+a.server, name, "A")
			if err == nil || digStatus(out) != "" {
				errs <- fmt.Sprintf("%s asked %s port %s and got an answer:\n%s", a.ns.Role, a.server, a.port, out)
				return
			}
			errs <- ""
		}()
	}
	for range asks {
		if e := <-errs; e != "" {
			t.Error(e)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// With dns.hijack, LAN DNS to any address is answered by socksgate: to the router's own
// address and to a wan resolver, UDP and TCP, IPv4 and IPv6, dig and kdig. Names are routed by
// the rules: a direct name is asked from gw, a proxied one from the proxy (through dante),
// never from gw; a blocked name is NXDOMAIN and never reaches dnsmasq; a cache hit never reaches
// it either; a large answer is truncated over UDP and whole over TCP. The wan side is never
// answered.
func TestDNSHijack(t *testing.T) {
	needBin(t, "kdig")
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, dnsConfig("  hijack: true\n", "")+"admin: \"127.0.0.1:9091\"\n")

	// To the router itself and to wan's resolver: socksgate answers both (dnsmasq is never
	// asked by lan's address; the lab's filter would drop lan's packets to wan anyway).
	for _, server := range []string{netlab.GWLAN4, netlab.WAN4, netlab.GWLAN6, netlab.WAN6} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			if out, err := digShort(tp.LAN, server, "router.test", "A", proto); err != nil || out != netlab.WAN4 {
				t.Fatalf("dig %s @%s router.test: %v %q\n%s", proto, server, err, out, gw.Output())
			}
		}
	}
	if _, ok := dnsQueryLogged(gw, "router.test"); !ok {
		t.Fatalf("no dns query record for router.test:\n%s", gw.Output())
	}
	if n := dnsAsked(origin, "A", "router.test", netlab.LAN4); n != 0 {
		t.Fatalf("dnsmasq was asked by lan itself %d times:\n%s", n, origin.Output())
	}
	for _, args := range [][]string{{"@" + netlab.GWLAN4}, {"+tcp", "@" + netlab.WAN4}} {
		out, err := tp.LAN.Run(append([]string{"kdig", "+short", "+timeout=2", "+retry=0"}, append(args, "wan.test", "A")...)...)
		if err != nil || strings.TrimSpace(out) != netlab.WAN4 {
			t.Fatalf("kdig %v wan.test: %v %q", args, err, out)
		}
	}

	// Who asked the origin: the direct rule from gw's own address, the proxy rule from dante's.
	if out, err := digShort(tp.LAN, netlab.WAN4, "direct.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig direct.test: %v %q", err, out)
	}
	if out, err := digShort(tp.LAN, netlab.WAN4, "proxied.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig proxied.test: %v %q\n%s", err, out, gw.Output())
	}
	if a, p := dnsAsked(origin, "A", "direct.test", dnsFromGW), dnsAsked(origin, "A", "proxied.test", dnsFromProxy); a != 1 || p != 1 {
		t.Fatalf("dnsmasq: direct.test asked %d times from gw, proxied.test %d times from the proxy (want 1, 1):\n%s", a, p, origin.Output())
	}
	if n := dnsAsked(origin, "A", "proxied.test", dnsFromGW); n != 0 {
		t.Fatalf("a proxied name was asked from gw's own address %d times: it leaked\n%s", n, origin.Output())
	}
	if l, ok := dnsQueryLogged(gw, "proxied.test"); !ok || l.str("rule") != "proxied" {
		t.Fatalf("dns query record for proxied.test: %v\n%s", l, gw.Output())
	}
	// A local name goes to dns.local (here wan's dnsmasq, asked from gw), whatever the rules
	// say: printer.lan is in the proxied rule's list, and must never go through the proxy.
	if out, err := digShort(tp.LAN, netlab.GWLAN4, "printer.lan", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig printer.lan: %v %q", err, out)
	}
	if l, p := dnsAsked(origin, "A", "printer.lan", dnsFromGW), dnsAsked(origin, "A", "printer.lan", dnsFromProxy); l != 1 || p != 0 {
		t.Fatalf("printer.lan asked %d times from gw and %d through the proxy, want 1 and 0:\n%s", l, p, origin.Output())
	}

	// Blocked: NXDOMAIN, and dnsmasq never hears of it.
	for _, name := range []string{"blocked.test", "ads.blocked.test"} {
		out, _ := dig(tp.LAN, "@"+netlab.WAN4, name, "A")
		if st := digStatus(out); st != "NXDOMAIN" {
			t.Fatalf("dig %s: status %q, want NXDOMAIN:\n%s", name, st, out)
		}
		if n := dnsAskedAny(origin, name); n != 0 {
			t.Fatalf("dnsmasq heard of blocked %s %d times", name, n)
		}
	}

	// A cache hit never reaches dnsmasq.
	for i := range 3 {
		if out, err := digShort(tp.LAN, netlab.GWLAN4, "cached.test", "A"); err != nil || out != netlab.WAN4 {
			t.Fatalf("dig cached.test #%d: %v %q", i, err, out)
		}
	}
	if n := dnsAskedAny(origin, "cached.test"); n != 1 {
		t.Fatalf("dnsmasq was asked cached.test %d times, want 1:\n%s", n, origin.Output())
	}
	if !waitFor(2*time.Second, func() bool {
		return countLogs(gw.Output(), logFields{"msg": "dns query", "name": "~cached.test", "cache": "hit"}) == 2
	}) {
		t.Fatalf("want 2 cache hits logged for cached.test:\n%s", gw.Output())
	}

	// Too big for the client's UDP size: TC over UDP, whole over TCP (and dig's own retry).
	out, _ := dig(tp.LAN, "+ignore", "+bufsize=1232", "@"+netlab.GWLAN4, "big.test", "TXT")
	if !strings.Contains(out, " tc") || digStatus(out) != "NOERROR" {
		t.Fatalf("big.test over UDP at 1232 bytes: want TC:\n%s", out)
	}
	out, _ = dig(tp.LAN, "+ignore", "+noedns", "@"+netlab.GWLAN4, "big.test", "TXT")
	if !strings.Contains(out, " tc") {
		t.Fatalf("big.test over UDP without EDNS: want TC:\n%s", out)
	}
	for _, proto := range []string{"+tcp", "+notcp"} {
		out, err := digShort(tp.LAN, netlab.GWLAN4, "big.test", "TXT", proto)
		if err != nil || strings.Count(out, strings.Repeat("x", 249)) != dnsBigTXT {
			t.Fatalf("big.test with %s: want %d strings whole: %v\n%s", proto, dnsBigTXT, err, out)
		}
	}

	// The hijack port and port 53 of gw answer only the LAN.
	dnsNoAnswer(t, "wanask.test", dnsAsk{tp.WAN, netlab.GWUp4, "15353"}, dnsAsk{tp.WAN, netlab.GWLAN4, "53"},
		dnsAsk{tp.WAN, netlab.GWLAN4, "15353"}, dnsAsk{tp.Proxy, netlab.GWUp4, "53"})
	if n := dnsAskedAny(origin, "wanask.test"); n != 0 {
		t.Fatalf("a query from wan was resolved (%d times)", n)
	}

	// The metrics count what happened, by rule and action, and the cache's hits.
	metrics, err := curl(tp.GW, "http://127.0.0.1:9091/metrics")
	if err != nil {
		t.Fatalf("metrics: %v %s", err, metrics)
	}
	for _, want := range []string{
		`socksgate_dns_queries_total{action="block",rule="blocked"} 2`,
		`socksgate_dns_queries_total{action="resolve",rule="proxied"} 1`,
		`socksgate_dns_answers_total{source="hit"} `,
		`socksgate_dns_upstream_duration_seconds_count{resolver=`,
		`socksgate_dns_table_size{table="mappings"} `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Fatalf("metrics:\n%s", metrics)
	}
	stopSocksgate(t, tp.GW, gw)
}

// Without hijack, dns.listen "lan:53" answers on the router's LAN addresses; block_answer
// unspecified answers 0.0.0.0 and ::; a listener on every address answers the LAN and
// loopback and never the wan namespace.
func TestDNSListen(t *testing.T) {
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, dnsConfig("  listen: [\"lan:53\", \"0.0.0.0:5353\"]\n  block_answer: unspecified\n", ""))
	for _, server := range []string{netlab.GWLAN4, netlab.GWLAN6} {
		if out, err := digShort(tp.LAN, server, "listen.test", "A"); err != nil || out != netlab.WAN4 {
			t.Fatalf("dig @%s listen.test: %v %q\n%s", server, err, out, gw.Output())
		}
	}
	if n := dnsAsked(origin, "A", "listen.test", dnsFromGW); n != 1 {
		t.Fatalf("dnsmasq asked listen.test %d times from gw, want 1:\n%s", n, origin.Output())
	}
	for qtype, want := range map[string]string{"A": "0.0.0.0", "AAAA": "::"} {
		if out, err := digShort(tp.LAN, netlab.GWLAN4, "blocked.test", qtype); err != nil || out != want {
			t.Fatalf("blocked.test %s with block_answer unspecified: %v %q, want %s", qtype, err, out, want)
		}
	}
	if n := dnsAskedAny(origin, "blocked.test"); n != 0 {
		t.Fatalf("dnsmasq heard of a blocked name")
	}
	// 0.0.0.0:5353: the LAN and gw itself are answered, wan and the proxy are not. Not
	// hijacked, lan's query to wan's resolver goes as any UDP would: here nowhere (UDP is
	// not captured and the lab drops lan's own packets to wan).
	if out, err := dig(tp.LAN, "+short", "-p", "5353", "@"+netlab.GWUp4, "listen.test", "A"); err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("lan asked gw's upstream address on 5353: %v %q", err, out)
	}
	if out, err := dig(tp.GW, "+short", "-p", "5353", "@127.0.0.1", "listen.test", "A"); err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("loopback on 5353: %v %q", err, out)
	}
	dnsNoAnswer(t, "wanask.test", dnsAsk{tp.WAN, netlab.GWUp4, "5353"}, dnsAsk{tp.Proxy, netlab.GWUp4, "5353"},
		dnsAsk{tp.WAN, netlab.GWLAN4, "53"}, dnsAsk{tp.LAN, netlab.WAN4, "53"})
	if n := dnsAskedAny(origin, "wanask.test"); n != 0 {
		t.Fatalf("a query from outside the LAN was resolved (%d times)", n)
	}
}

// dnsLAN2 is a second lan address: a client that never asked DNS.
const dnsLAN2 = "10.0.1.3"

// A plain TCP flow (nothing to sniff) to an address from an answer is routed by the domain rule
// of the name the client asked, and the upstream is handed that name: dante's request line
// shows a domain (ATYP 3, echo.test). The same flow from a client that never asked goes by its
// address: dante sees ATYP 1 and the address.
func TestDNSNamesForFlows(t *testing.T) {
	needBin(t, "socat")
	tp := netlab.NewTopology(t)
	tp.LAN.Addr(netlab.LANIf, dnsLAN2+"/24")
	origin := dnsStartOrigin(t, tp)
	dnsEcho(t, tp)
	nsHosts(t, tp.Proxy, dnsEcho4+" echo.test\n") // dante resolves the names it is handed
	d := startDante(t, tp, danteOptions{Server: "debug: 1"})
	rules := "  - {name: other, src: [" + dnsLAN2 + "/32], action: proxy, upstream: dante}\n"
	gw := startSocksgate(t, tp.GW, dnsConfig("  hijack: true\n", rules))

	if out, err := digShort(tp.LAN, netlab.GWLAN4, "echo.test", "A"); err != nil || out != dnsEcho4 {
		t.Fatalf("dig echo.test: %v %q", err, out)
	}
	if n := dnsAsked(origin, "A", "echo.test", dnsFromProxy); n != 1 {
		t.Fatalf("echo.test asked %d times through dante:\n%s", n, origin.Output())
	}
	if out, err := dnsEchoFrom(tp, netlab.LAN4, dnsEcho4); err != nil || strings.TrimSpace(out) != "plain-tcp" {
		t.Fatalf("echo from %s: %v %q\n%s", netlab.LAN4, err, out, gw.Output())
	}
	l, ok := waitLog(gw, 5*time.Second, flowEnded.with("src", "~"+netlab.LAN4+":"))
	if !ok || l.str("rule") != "proxied" || l.str("dst") != "echo.test:"+dnsEchoPort || l.str("ip") != dnsEcho4+":"+dnsEchoPort || l.str("name_from") != "dns" {
		t.Fatalf("the flow to echo.test's address: want rule proxied, dst echo.test:%s, ip %s, name_from dns; got %v\n%s", dnsEchoPort, dnsEcho4, l, gw.Output())
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.Output(), "ATYP: 3 address: echo.test."+dnsEchoPort) }) {
		t.Fatalf("dante was not handed the name:\n%s", d.Output())
	}

	// The other client never asked: its flow goes by the address, and dante sees the address.
	if out, err := dnsEchoFrom(tp, dnsLAN2, dnsEcho4); err != nil || strings.TrimSpace(out) != "plain-tcp" {
		t.Fatalf("echo from %s: %v %q\n%s", dnsLAN2, err, out, gw.Output())
	}
	l, ok = waitLog(gw, 5*time.Second, flowEnded.with("src", "~"+dnsLAN2+":"))
	if !ok || l.str("rule") != "other" || l.str("dst") != dnsEcho4+":"+dnsEchoPort || l.str("name_from") != "" {
		t.Fatalf("the flow from the client that never asked: want rule other, dst %s:%s; got %v", dnsEcho4, dnsEchoPort, l)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.Output(), "ATYP: 1 address: "+dnsEcho4+"."+dnsEchoPort) }) {
		t.Fatalf("dante was not handed the address for the client without DNS:\n%s", d.Output())
	}
}

// Fake-ip end to end: lan's resolver is the router, curl asks for a name, gets a fake address,
// and the flow to it is routed by the name (proxied through dante, which is handed the name;
// or direct, resolved on gw). After a restart with the same state_dir, the names keep their
// addresses.
func TestDNSFakeIP(t *testing.T) {
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	serveWeb(t, tp)
	nsHosts(t, tp.Proxy, netlab.WAN4+" fake.example\n")
	d := startDante(t, tp, danteOptions{Server: "debug: 1"})
	nsResolvConf(t, tp.LAN, netlab.GWLAN4)
	stateDir := t.TempDir()
	cfg := dnsConfig("  hijack: true\n  fake_ip: {enabled: true}\n", "") + "state_dir: " + stateDir + "\n"
	gw := startSocksgate(t, tp.GW, cfg)

	fake := map[string]string{}
	for _, name := range []string{"fake.example", "keep.example"} {
		out, err := digShort(tp.LAN, netlab.GWLAN4, name, "A")
		if err != nil || !strings.HasPrefix(out, "198.18.") && !strings.HasPrefix(out, "198.19.") {
			t.Fatalf("dig %s in fake-ip mode: %v %q, want an address of 198.18.0.0/15", name, err, out)
		}
		fake[name] = out
	}
	if fake["fake.example"] == fake["keep.example"] {
		t.Fatalf("two names got one fake address: %v", fake)
	}
	if n := dnsAskedAny(origin, "fake.example") + dnsAskedAny(origin, "keep.example"); n != 0 {
		t.Fatalf("fake-ip answers asked the origin %d times:\n%s", n, origin.Output())
	}
	// curl resolves through the router (lan's resolv.conf), A and AAAA.
	for _, name := range []string{"fake.example", "keep.example"} {
		if out, err := curl(tp.LAN, "http://"+name+"/"); err != nil || out != pageBody {
			t.Fatalf("curl http://%s/: %v %q\n%s", name, err, out, gw.Output())
		}
	}
	l, ok := waitLog(gw, 5*time.Second, flowEnded.with("dst", "fake.example:80"))
	if !ok || l.str("rule") != "proxied" || l.str("name_from") != "fakeip" || l.str("ip") != "" {
		t.Fatalf("the flow to fake.example: want rule proxied, name_from fakeip, no ip; got %v\n%s", l, gw.Output())
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.Output(), "ATYP: 3 address: fake.example.80") }) {
		t.Fatalf("dante was not handed fake.example:\n%s", d.Output())
	}
	if l, ok := waitLog(gw, 5*time.Second, flowEnded.with("dst", "keep.example:80")); !ok || l.str("rule") != "default" || l.str("action") != "direct" {
		t.Fatalf("the flow to keep.example: %v\n%s", l, gw.Output())
	}
	// The direct flow was resolved on gw: dnsmasq was asked keep.example from gw.
	if n := dnsAsked(origin, "A", "keep.example", dnsFromGW); n < 1 {
		t.Fatalf("keep.example was not resolved on gw for its direct flow:\n%s", origin.Output())
	}

	stopSocksgate(t, tp.GW, gw)
	if _, err := os.Stat(filepath.Join(stateDir, "fakeip.json")); err != nil {
		t.Fatalf("no fake-ip state after shutdown: %v", err)
	}
	gw = startSocksgate(t, tp.GW, cfg)
	// Asked in the other order: a fresh pool would hand out its first address to keep.example.
	for _, name := range []string{"keep.example", "fake.example"} {
		if out, err := digShort(tp.LAN, netlab.GWLAN4, name, "A"); err != nil || out != fake[name] {
			t.Fatalf("after a restart %s is %q (%v), was %s\n%s", name, out, err, fake[name], gw.Output())
		}
	}
	if out, err := curl(tp.LAN, "http://fake.example/"); err != nil || out != pageBody {
		t.Fatalf("curl http://fake.example/ after a restart: %v %q\n%s", err, out, gw.Output())
	}
}

// DoT and DoH servers reached through dante: dnsdist in wan in front of dnsmasq, with a test
// certificate socksgate trusts (dns.ca_file). The query reaches
// dnsmasq from dnsdist, and dante carried the TLS connection.
func TestDNSOverTLSThroughProxy(t *testing.T) {
	needBin(t, "dnsdist")
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	cert, key := dnsTestCA(t, "dot.test")
	dnsStartDNSDist(t, tp, cert, key)
	d := startDante(t, tp, danteOptions{})
	for _, tc := range []struct{ server, name, port string }{
		{"tls://" + netlab.WAN4 + ":853#dot.test", "dot.test", "853"},
		{"https://dot.test/dns-query#" + netlab.WAN4, "doh.test", "443"},
	} {
		cfg := strings.Replace(dnsConfig("  hijack: true\n  ca_file: "+cert+"\n", ""), "servers: [\""+netlab.WAN4+"\"]", "servers: [\""+tc.server+"\"]", 1)
		gw := startSocksgate(t, tp.GW, cfg)
		if out, err := digShort(tp.LAN, netlab.GWLAN4, tc.name, "A"); err != nil || out != netlab.WAN4 {
			t.Fatalf("%s via %s: %v %q\n%s", tc.name, tc.server, err, out, gw.Output())
		}
		if n := dnsAsked(origin, "A", tc.name, netlab.WAN4); n != 1 {
			t.Fatalf("%s: dnsmasq was asked %d times by dnsdist:\n%s", tc.name, n, origin.Output())
		}
		if n := dnsAsked(origin, "A", tc.name, dnsFromGW) + dnsAsked(origin, "A", tc.name, dnsFromProxy); n != 0 {
			t.Fatalf("%s: asked in plain DNS outside the TLS:\n%s\n%s", tc.name, origin.Output(), gw.Output())
		}
		if !waitFor(5*time.Second, func() bool { return strings.Contains(d.Output(), netlab.WAN4+"."+tc.port) }) {
			t.Fatalf("dante did not carry the connection to %s:%s:\n%s", netlab.WAN4, tc.port, d.Output())
		}
		stopSocksgate(t, tp.GW, gw)
	}
}

// The router's own dnsmasq in front: it keeps port 53 on the LAN and forwards everything to
// socksgate on 127.0.0.1:5353 (server=127.0.0.1#5353, no-resolv), which routes by the rules as
// before. dns.direct points at wan's resolver, never back at dnsmasq.
func TestDNSBehindDnsmasq(t *testing.T) {
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	serveWeb(t, tp)
	nsHosts(t, tp.Proxy, netlab.WAN4+" proxied.test\n") // dante resolves the name it is handed
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, dnsConfig("  listen: [\"127.0.0.1:5353\"]\n", ""))
	// add-subnet=32,128: dnsmasq tells socksgate which LAN client asked (an EDNS client-subnet
	// option, trusted from loopback only and never passed on), so flows still get their names.
	front := tp.GW.Start("dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--server=127.0.0.1#5353", "--listen-address="+netlab.GWLAN4, "--bind-interfaces", "-p", "53",
		"--add-subnet=32,128", "--cache-size=0",
		"--user=root", "--pid-file="+writeFile(t, "front.pid", ""), "--log-queries", "--log-facility=-")
	tp.LAN.WaitListening(net.JoinHostPort(netlab.GWLAN4, "53"), 5*time.Second)
	if out, err := digShort(tp.LAN, netlab.GWLAN4, "proxied.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig proxied.test through dnsmasq: %v %q\n%s\n%s", err, out, front.Output(), gw.Output())
	}
	if p, g := dnsAsked(origin, "A", "proxied.test", dnsFromProxy), dnsAsked(origin, "A", "proxied.test", dnsFromGW); p != 1 || g != 0 {
		t.Fatalf("proxied.test asked %d times from the proxy and %d from gw, want 1 and 0:\n%s", p, g, origin.Output())
	}
	if l, ok := dnsQueryLogged(gw, "proxied.test"); !ok || l.str("src") != netlab.LAN4+":0" {
		t.Fatalf("socksgate's record of proxied.test (asked by dnsmasq for %s): %v", netlab.LAN4, l)
	}
	if strings.Contains(origin.Output(), "subnet") {
		t.Fatalf("the client-subnet option reached the origin:\n%s", origin.Output())
	}
	// The client connects to the address it was answered: the flow carries the name.
	nsResolvConf(t, tp.LAN, netlab.GWLAN4)
	if out, err := curl(tp.LAN, "http://proxied.test/"); err != nil || out != pageBody {
		t.Fatalf("curl http://proxied.test/ through dnsmasq: %v %q\n%s", err, out, gw.Output())
	}
	if l, ok := waitLog(gw, 5*time.Second, flowEnded.with("dst", "proxied.test:80")); !ok || l.str("name_from") != "dns" || l.str("rule") != "proxied" {
		t.Fatalf("the flow to proxied.test's address behind dnsmasq: want rule proxied, name_from dns; got %v\n%s", l, gw.Output())
	}
	out, _ := dig(tp.LAN, "@"+netlab.GWLAN4, "blocked.test", "A")
	if st := digStatus(out); st != "NXDOMAIN" {
		t.Fatalf("blocked.test through dnsmasq: status %q:\n%s", st, out)
	}
	if out, err := digShort(tp.LAN, netlab.GWLAN4, "direct.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig direct.test through dnsmasq: %v %q", err, out)
	}
	if n := dnsAsked(origin, "A", "direct.test", dnsFromGW); n != 1 {
		t.Fatalf("direct.test asked %d times from gw:\n%s", n, origin.Output())
	}
}

// dns.proxy_udp: a proxied name is asked over a UDP association through dante (SOCKS5 UDP
// ASSOCIATE) instead of TCP; dnsmasq still hears it from the proxy, never from gw.
func TestDNSProxyUDP(t *testing.T) {
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	d := startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, dnsConfig("  hijack: true\n  proxy_udp: true\n", ""))
	if out, err := digShort(tp.LAN, netlab.GWLAN4, "proxied.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig proxied.test with proxy_udp: %v %q\n%s", err, out, gw.Output())
	}
	if p, g := dnsAsked(origin, "A", "proxied.test", dnsFromProxy), dnsAsked(origin, "A", "proxied.test", dnsFromGW); p != 1 || g != 0 {
		t.Fatalf("proxied.test asked %d times from the proxy and %d from gw, want 1 and 0:\n%s", p, g, origin.Output())
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.Output(), "udp/udpassociate") }) {
		t.Fatalf("dante shows no UDP association:\n%s", d.Output())
	}
	if strings.Contains(d.Output(), "tcp/connect [: ") {
		t.Fatalf("the query went over TCP through dante with proxy_udp:\n%s", d.Output())
	}
}
