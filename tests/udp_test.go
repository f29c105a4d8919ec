//go:build linux

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// udpConfig is the transparent config with UDP capture on and a short idle timeout, everything
// through upstream "main". extraTransparent is added inside `transparent:`; extra is appended.
func udpConfig(upstreamURL, extraTransparent, extra string) string {
	return gatewayConfig(upstreamURL, fmt.Sprintf("transparent: {udp: true, udp_port: 12346, udp_idle: 1s%s}\n%s", extraTransparent, extra))
}

// udpStartDNS runs dnsmasq in wan answering web.test with 203.0.113.10 and 2001:db8:3::10, on
// UDP and TCP port 53 of both wan addresses.
func udpStartDNS(t *testing.T, tp *netlab.Topology) *netlab.Proc {
	t.Helper()
	needBin(t, "dnsmasq", "dig")
	pid := writeFile(t, "dnsmasq.pid", "")
	p := tp.WAN.Start("dnsmasq", "-k", "--no-resolv", "--no-hosts", "--log-queries", "--log-facility=-",
		"--address=/web.test/"+netlab.WAN4, "--address=/web.test/"+netlab.WAN6,
		"--listen-address="+netlab.WAN4+","+netlab.WAN6, "--bind-interfaces", "-p", "53",
		"--user=root", "--pid-file="+pid)
	tp.WAN.WaitListening(net.JoinHostPort(netlab.WAN4, "53"), 5*time.Second)
	return p
}

// udpDig asks server for name's record of type qtype from lan, with plain dig.
func udpDig(tp *netlab.Topology, server, name, qtype string) (string, error) {
	out, err := tp.LAN.Run("dig", "+short", "+time=2", "+tries=3", "@"+server, name, qtype)
	return strings.TrimSpace(out), err
}

// udpEcho runs a UDP echo in wan on port (both families) and counts what it received.
func udpEcho(t *testing.T, tp *netlab.Topology, port int) *atomic.Int64 {
	t.Helper()
	pc := tp.WAN.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
	var n atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			n.Add(1)
			pc.WriteTo(buf[:k], from)
		}
	}()
	return &n
}

// udpExchange sends payload from pc to dst until an answer comes from dst (up to tries times)
// and returns the answer and its source.
func udpExchange(pc net.PacketConn, dst netip.AddrPort, payload string, tries int, wait time.Duration) (string, netip.AddrPort, error) {
	buf := make([]byte, 2048)
	var lastErr error
	for range tries {
		if _, err := pc.WriteTo([]byte(payload), net.UDPAddrFromAddrPort(dst)); err != nil {
			return "", netip.AddrPort{}, err
		}
		pc.SetReadDeadline(time.Now().Add(wait))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			lastErr = err
			continue
		}
		ap := from.(*net.UDPAddr).AddrPort()
		return string(buf[:n]), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	return "", netip.AddrPort{}, lastErr
}

// ipRuleCount counts policy rules mentioning fwmark, per family, in ns.
func udpFwmarkRules(t *testing.T, ns *netlab.NS) (v4, v6 int) {
	t.Helper()
	o4, _ := ns.Run("ip", "-4", "rule", "show")
	o6, _ := ns.Run("ip", "-6", "rule", "show")
	return countLines(o4, "fwmark"), countLines(o6, "fwmark")
}

// dig from lan, with no configuration but the server address, gets its answer over IPv4 and
// IPv6 through dante's UDP ASSOCIATE; direct UDP from gw to wan is dropped by the lab. Each
// session ends after the idle timeout with one log line naming the upstream.
func TestUDPDNSThroughDante(t *testing.T) {
	tp := netlab.NewTopology(t)
	udpStartDNS(t, tp)
	d := startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://"+netlab.Proxy4+":1080", "", ""))

	for _, tc := range []struct{ server, qtype, want string }{
		{netlab.WAN4, "A", netlab.WAN4},
		{netlab.WAN6, "AAAA", netlab.WAN6},
		{netlab.WAN4, "AAAA", netlab.WAN6},
	} {
		out, err := udpDig(tp, tc.server, "web.test", tc.qtype)
		if err != nil || out != tc.want {
			t.Fatalf("dig @%s web.test %s: %v: %q, want %q\n%s", tc.server, tc.qtype, err, out, tc.want, gw.Output())
		}
	}
	for _, server := range []string{netlab.WAN4, netlab.WAN6} {
		want := msg("udp session").with("dst", net.JoinHostPort(server, "53"))
		if !waitFor(5*time.Second, func() bool {
			return hasLog(gw.Output(), want)
		}) {
			t.Fatalf("no udp session line with %v after the idle timeout:\n%s", want, gw.Output())
		}
		line := lastLog(gw.Output(), want)
		if !line.has(logFields{"upstream": "socks5://" + netlab.Proxy4 + ":1080", "end": "idle", "outcome": "ok"}) {
			t.Errorf("session line: %v", line)
		}
		for _, f := range []string{"src", "rule", "packets_up", "packets_down", "duration"} {
			if line.str(f) == "" {
				t.Errorf("session line lacks %s: %v", f, line)
			}
		}
	}
	// Dante's own log shows both associations carrying the queries: the path was the proxy.
	for _, want := range []string{netlab.WAN4 + ".53", netlab.WAN6 + ".53"} {
		if !waitFor(3*time.Second, func() bool {
			return strings.Contains(d.Output(), "udpassociate ]") && strings.Contains(d.Output(), want)
		}) {
			t.Fatalf("dante's log does not show the association to %s:\n%s", want, d.Output())
		}
	}
}

// Several lan clients at once, each from its own port, each talking to two echo ports over
// both families: every payload comes back to the client that sent it, from the address it
// was sent to; a rule blocking one destination blocks it even inside a live session; each
// session is logged once when it goes idle.
func TestUDPEchoManyClientsFullCone(t *testing.T) {
	const clients, packets = 6, 40
	tp := netlab.NewTopology(t)
	udpEcho(t, tp, 7007)
	udpEcho(t, tp, 7008)
	blockedHits := udpEcho(t, tp, 7009)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://["+netlab.Proxy6+"]:1080", "", `rules:
  - {name: no-7009, protocol: [udp], dst_ports: [7009], action: block}
  - {name: all, action: proxy, upstream: main}
`))

	var wg sync.WaitGroup
	errs := make(chan error, clients*packets*2)
	srcs := make([]uint16, clients)
	for c := range clients {
		wan := netlab.WAN4
		if c%2 == 1 {
			wan = netlab.WAN6
		}
		pc := tp.LAN.ListenPacket("udp", ":0")
		srcs[c] = pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		wg.Go(func() {
			for i := range packets {
				for _, port := range []uint16{7007, 7008} {
					dst := netip.AddrPortFrom(netip.MustParseAddr(wan), port)
					payload := fmt.Sprintf("client %d packet %d to %s %s", c, i, dst, strings.Repeat("x", i*13))
					got, from, err := udpExchange(pc, dst, payload, 4, time.Second)
					switch {
					case err != nil:
						errs <- fmt.Errorf("client %d to %s: %v", c, dst, err)
					case got != payload || from != dst:
						errs <- fmt.Errorf("client %d sent %q to %s, got %q from %s", c, payload, dst, got, from)
					}
				}
			}
			// The blocked destination stays blocked inside the live session.
			dst := netip.AddrPortFrom(netip.MustParseAddr(wan), 7009)
			if got, _, err := udpExchange(pc, dst, "blocked?", 1, 300*time.Millisecond); err == nil {
				errs <- fmt.Errorf("client %d: blocked destination answered %q", c, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if n := blockedHits.Load(); n != 0 {
		t.Fatalf("the blocked echo received %d datagrams", n)
	}
	sessions := udpEnded
	if !waitFor(5*time.Second, func() bool { return countLogs(gw.Output(), sessions) >= clients }) {
		t.Fatalf("%d session lines after the idle timeout, want %d:\n%s", countLogs(gw.Output(), sessions), clients, gw.Output())
	}
	for c, port := range srcs {
		var line logLine
		for _, l := range findLogs(gw.Output(), sessions) {
			if strings.HasSuffix(l.str("src"), fmt.Sprintf(":%d", port)) {
				line = l
			}
		}
		if !line.has(logFields{"end": "idle", "dests": "3", "rule": "all"}) {
			t.Errorf("client %d's session line: %v", c, line)
		}
	}
}

// The policy rules and routes follow the process: exactly one fwmark rule per family while
// running, none after SIGTERM; after SIGKILL with on_crash closed the table stays and lan UDP
// goes nowhere even with the lab's filter open; a restart replaces the state cleanly.
func TestUDPRulesLifecycle(t *testing.T) {
	tp := netlab.NewTopology(t)
	hits := udpEcho(t, tp, 7007)
	startDante(t, tp, danteOptions{})
	cfg := udpConfig("socks5://"+netlab.Proxy4+":1080", "", "")
	client := tp.LAN.ListenPacket("udp", ":0")
	dst4 := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7007)
	dst6 := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN6), 7007)
	works := func(when string) {
		t.Helper()
		for _, dst := range []netip.AddrPort{dst4, dst6} {
			if got, from, err := udpExchange(client, dst, "ping", 4, time.Second); err != nil || got != "ping" || from != dst {
				t.Fatalf("%s: echo via %s: %q from %s, %v", when, dst, got, from, err)
			}
		}
	}
	oneRuleEach := func(when string) {
		t.Helper()
		if v4, v6 := udpFwmarkRules(t, tp.GW); v4 != 1 || v6 != 1 {
			out, _ := tp.GW.Run("sh", "-c", "ip -4 rule; ip -6 rule")
			t.Fatalf("%s: %d IPv4 and %d IPv6 fwmark rules, want one each:\n%s", when, v4, v6, out)
		}
	}

	gw := startSocksgate(t, tp.GW, cfg)
	oneRuleEach("running")
	works("running")
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v\n%s", exited, err, gw.Output())
	}
	if v4, v6 := udpFwmarkRules(t, tp.GW); v4 != 0 || v6 != 0 {
		t.Fatalf("fwmark rules left after SIGTERM: %d, %d", v4, v6)
	}
	if routes, _ := tp.GW.Run("ip", "route", "show", "table", "all"); strings.Contains(routes, "table 100") {
		t.Fatalf("policy route left after SIGTERM:\n%s", routes)
	}
	if !hasLog(gw.Output(), msg("transparent UDP stopped")) {
		t.Fatalf("no UDP shutdown line:\n%s", gw.Output())
	}

	gw = startSocksgate(t, tp.GW, cfg)
	works("restarted")
	gw.Kill()
	if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
		t.Fatalf("%d socksgate tables after SIGKILL, want the one left to fail closed", got)
	}
	tp.AllowDirect(netlab.WAN4) // prove it is socksgate's drop rule, not the lab's filter, that holds
	tp.AllowDirect(netlab.WAN6)
	before := hits.Load()
	for _, dst := range []netip.AddrPort{dst4, dst6} {
		if got, _, err := udpExchange(client, dst, "leak?", 2, 500*time.Millisecond); err == nil {
			t.Fatalf("lan UDP reached %s while socksgate was dead with on_crash closed: %q", dst, got)
		}
	}
	if n := hits.Load() - before; n != 0 {
		t.Fatalf("the echo in wan received %d datagrams while socksgate was dead", n)
	}

	gw = startSocksgate(t, tp.GW, cfg)
	oneRuleEach("after SIGKILL and restart")
	if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
		t.Fatalf("%d socksgate tables after restart", got)
	}
	works("after SIGKILL and restart")
}

// A local daemon in gw holding the echo's port stops replies from that port only (counted and
// logged, rate-limited); other flows and clients go on.
func TestUDPLocalDaemonHoldingReplyPort(t *testing.T) {
	tp := netlab.NewTopology(t)
	udpEcho(t, tp, 7007)
	udpEcho(t, tp, 7008)
	startDante(t, tp, danteOptions{})
	tp.GW.ListenPacket("udp", "[::]:7007") // the local daemon, without SO_REUSEADDR
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://"+netlab.Proxy4+":1080", "", ""))

	held := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7007)
	free := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7008)
	a := tp.LAN.ListenPacket("udp", ":0")
	b := tp.LAN.ListenPacket("udp", ":0")
	if got, _, err := udpExchange(a, held, "to held", 2, 500*time.Millisecond); err == nil {
		t.Fatalf("a reply came from the held port: %q", got)
	}
	for i := range 20 {
		for _, pc := range []net.PacketConn{a, b} {
			payload := fmt.Sprintf("free %d", i)
			if got, from, err := udpExchange(pc, free, payload, 3, time.Second); err != nil || got != payload || from != free {
				t.Fatalf("echo on the free port: %q from %s, %v", got, from, err)
			}
		}
	}
	line, ok := waitLog(gw, 2*time.Second, msg("udp reply dropped"))
	if !ok {
		t.Fatalf("no log line for the dropped reply:\n%s", gw.Output())
	}
	if !line.has(logFields{"level": "warning", "error": "~address already in use"}) || line.str("reply_bind_errors") == "" {
		t.Fatalf("reply drop line: %v", line)
	}
	if n := countLogs(gw.Output(), msg("udp reply dropped")); n > 3 {
		t.Fatalf("%d reply-drop lines for a few seconds of drops; they should be rate-limited", n)
	}
}

// With an upstream that carries no UDP (dante as SOCKS4), DNS still works over TCP through it
// when dns_over_tcp is on, and other UDP is blocked by default.
func TestUDPDNSOverTCPThroughSOCKS4(t *testing.T) {
	tp := netlab.NewTopology(t)
	udpStartDNS(t, tp)
	hits := udpEcho(t, tp, 7007)
	d := startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, udpConfig("socks4://"+netlab.Proxy4+":1080", ", dns_over_tcp: true", ""))
	out, err := udpDig(tp, netlab.WAN4, "web.test", "A")
	if err != nil || out != netlab.WAN4 {
		t.Fatalf("dig over tcp: %v: %q\n%s", err, out, gw.Output())
	}
	if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), netlab.WAN4+".53") }) {
		t.Fatalf("dante's log does not show the TCP DNS connection:\n%s", d.Output())
	}
	client := tp.LAN.ListenPacket("udp", ":0")
	if got, _, err := udpExchange(client, netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7007), "x", 2, 500*time.Millisecond); err == nil {
		t.Fatalf("non-DNS UDP went out through a TCP-only upstream: %q", got)
	}
	if hits.Load() != 0 {
		t.Fatal("the echo received datagrams with udp_without_support: block")
	}
	if _, ok := waitLog(gw, 5*time.Second, logFields{"msg": "udp datagram dropped", "level": "warning", "error": "~upstream does not carry UDP"}); !ok {
		t.Fatalf("no line naming the missing UDP support:\n%s", gw.Output())
	}
	echo := msg("udp session").with("dst", netlab.WAN4+":7007")
	if l, ok := waitLog(gw, 5*time.Second, echo); !ok || !l.has(logFields{"packets_up": "0", "dropped": "~"}) || l.str("dropped") == "0" {
		t.Fatalf("the blocked session's line does not count its datagrams dropped: %v\n%s", l, gw.Output())
	}
}

// With udp_without_support: direct, UDP whose route gives a TCP-only upstream goes out of gw's
// own marked socket instead (no lab opening needed: gw's own traffic is not forwarded), and the
// reply still comes back from the address the client sent to.
func TestUDPWithoutSupportDirect(t *testing.T) {
	tp := netlab.NewTopology(t)
	hits := udpEcho(t, tp, 7007)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, udpConfig("socks4://"+netlab.Proxy4+":1080", ", udp_without_support: direct", ""))
	client := tp.LAN.ListenPacket("udp", ":0")
	for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(wan), 7007)
		if got, from, err := udpExchange(client, dst, "direct "+wan, 3, time.Second); err != nil || got != "direct "+wan || from != dst {
			t.Fatalf("echo via %s: %q from %s, %v\n%s", dst, got, from, err, gw.Output())
		}
	}
	if hits.Load() == 0 {
		t.Fatal("the echo saw nothing")
	}
}

// Full cone: a remote the client never sent to (the server answers from a second port) reaches
// the client through the same session, from its own address.
func TestUDPFullConeReplyFromAnotherRemote(t *testing.T) {
	tp := netlab.NewTopology(t)
	in := tp.WAN.ListenPacket("udp", "[::]:7011")
	out := tp.WAN.ListenPacket("udp", "[::]:7012")
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := in.ReadFrom(buf)
			if err != nil {
				return
			}
			out.WriteTo(buf[:n], from)
		}
	}()
	go func() { // the second port answers what it is sent itself
		buf := make([]byte, 2048)
		for {
			n, from, err := out.ReadFrom(buf)
			if err != nil {
				return
			}
			out.WriteTo(append([]byte("back:"), buf[:n]...), from)
		}
	}()
	// dante connects its relay socket to the first destination unless told not to; with
	// udp.connectdst off it relays replies from any remote (udpreply from 0/0).
	startDante(t, tp, danteOptions{Server: "udp.connectdst: no"}) // replies from any remote
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://"+netlab.Proxy4+":1080", "", ""))
	client := tp.LAN.ListenPacket("udp", ":0")
	for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(wan), 7011)
		want := netip.AddrPortFrom(dst.Addr(), 7012)
		if got, from, err := udpExchange(client, dst, "cone", 3, time.Second); err != nil || got != "cone" || from != want {
			t.Fatalf("sent to %s: %q from %s, %v; want the answer from %s\n%s", dst, got, from, err, want, gw.Output())
		}
		// Then the client writes to the remote that answered: still captured and carried
		// (the reply socket's datagram left no conntrack entry that would make it a "reply").
		if got, from, err := udpExchange(client, want, "again", 3, time.Second); err != nil || got != "back:again" || from != want {
			t.Fatalf("sent to %s, which had answered: %q from %s, %v\n%s", want, got, from, err, gw.Output())
		}
	}
}

// A datagram sent to the transparent UDP listener's own address (the rules let traffic to the
// router itself through, uncaptured) is dropped as a loop: relayed, it would come back to the
// listener from a new port, a new session each time, until the session table is full.
func TestUDPToTheListenerItselfIsNotALoop(t *testing.T) {
	tp := netlab.NewTopology(t)
	udpEcho(t, tp, 7)
	startDante(t, tp, danteOptions{})
	// Direct for the router's own addresses (the loop would be gw to gw), dante for the rest.
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://"+netlab.Proxy4+":1080", "",
		"rules:\n  - {dst: ["+netlab.GWLAN4+"/32, \""+netlab.GWLAN6+"/128\"], action: direct}\n  - {action: proxy, upstream: main}\n"))

	pc := tp.LAN.ListenPacket("udp", ":0")
	for _, to := range []string{netlab.GWLAN4, netlab.GWLAN6} {
		if _, err := pc.WriteTo([]byte("to the listener"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(to), 12346))); err != nil {
			t.Fatal(err)
		}
	}
	// Both sessions end after udp_idle (1s) and are logged once each.
	sessions := udpEnded
	if !waitFor(5*time.Second, func() bool { return countLogs(gw.Output(), sessions) >= 2 }) {
		t.Fatalf("no session lines:\n%s", gw.Output())
	}
	time.Sleep(1500 * time.Millisecond)
	if n := countLogs(gw.Output(), sessions); n != 2 {
		t.Fatalf("%d udp session lines for 2 datagrams to the listener, want 2 (a loop makes more)", n)
	}
	if line := lastLog(gw.Output(), sessions); !line.has(logFields{"error": "~loop"}) {
		t.Fatalf("the session line does not say loop: %v", line)
	}
	// Captured UDP still works.
	echo := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7)
	if got, _, err := udpExchange(pc, echo, "captured", 3, time.Second); err != nil || got != "captured" {
		t.Fatalf("captured echo after the loop attempt: %q, %v\n%s", got, err, gw.Output())
	}
}

// A LAN host answering a datagram that came from outside through a port forward (DNAT on the
// router) is answering, not starting a flow: its reply goes back the way the request came,
// instead of being captured as a UDP session of its own and sent to the upstream.
func TestUDPRepliesToAPortForwardAreNotCaptured(t *testing.T) {
	tp := netlab.NewTopology(t)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, udpConfig("socks5://"+netlab.Proxy4+":1080", "", ""))
	// The router forwards udp/5353 on its upstream address to the LAN host, and the lab's
	// filter lets that exchange through (it drops the LAN's own direct traffic otherwise).
	tp.GW.MustRun("nft", "add table ip labpf")
	tp.GW.MustRun("nft", "add chain ip labpf pre { type nat hook prerouting priority dstnat; policy accept; }")
	tp.GW.MustRun("nft", "add rule ip labpf pre iifname "+netlab.GWUpIf+" udp dport 5353 dnat to "+netlab.LAN4+":5353")
	tp.AllowDirect(netlab.WAN4)
	server := tp.LAN.ListenPacket("udp", "0.0.0.0:5353")
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := server.ReadFrom(buf)
			if err != nil {
				return
			}
			server.WriteTo(append([]byte("lan:"), buf[:n]...), from)
		}
	}()
	client := tp.WAN.ListenPacket("udp", "0.0.0.0:0")
	fwd := netip.AddrPortFrom(netip.MustParseAddr(netlab.GWUp4), 5353)
	if got, from, err := udpExchange(client, fwd, "hello", 3, time.Second); err != nil || got != "lan:hello" || from != fwd {
		t.Fatalf("through the port forward: %q from %s, %v\n%s", got, from, err, gw.Output())
	}
	time.Sleep(1500 * time.Millisecond) // a session would have ended (udp_idle 1s) and been logged
	if hasLog(gw.Output(), udpEnded) || hasLog(gw.Output(), logFields{"src": netlab.LAN4 + ":5353"}) {
		t.Fatalf("the LAN host's reply was taken for a session of its own:\n%s", gw.Output())
	}
}
