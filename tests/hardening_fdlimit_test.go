//go:build linux

package tests

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/tests/netlab"
)

// fdlimitRequest sends one SOCKS5 request (no authentication) to server from ns and returns the
// control connection (nil unless it succeeded) and the reply; err is set when no reply came.
func fdlimitRequest(ns *netlab.NS, server string, r socks.Request) (net.Conn, socks.Reply, error) {
	ctx, cancel := hardeningCtx(10 * time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", server)
	if err != nil {
		return nil, socks.Reply{}, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	g, _ := socks.AppendGreeting(nil, socks.MethodNoAuth)
	req, _ := socks.AppendRequest(nil, r)
	c.Write(append(g, req...))
	if m, err := socks.ReadMethodSelection(c); err != nil || m != socks.MethodNoAuth {
		c.Close()
		return nil, socks.Reply{}, fmt.Errorf("method selection: %v %v", m, err)
	}
	rep, err := socks.ReadReply(c)
	if err != nil {
		c.Close()
		return nil, socks.Reply{}, fmt.Errorf("reply: %w", err)
	}
	if rep.Code != socks.ReplySucceeded {
		c.Close()
		return nil, rep, nil
	}
	c.SetDeadline(time.Time{})
	return c, rep, nil
}

// fdlimitConnect opens a SOCKS5 CONNECT to dst through server from ns.
func fdlimitConnect(ns *netlab.NS, server string, dst netip.AddrPort) (net.Conn, socks.ReplyCode, error) {
	c, rep, err := fdlimitRequest(ns, server, socks.Request{Cmd: socks.CmdConnect, Addr: socks.AddrFromAddrPort(dst)})
	return c, rep.Code, err
}

// fdlimitAssociate opens a SOCKS5 UDP association at server from ns (nil unless it succeeded).
func fdlimitAssociate(ns *netlab.NS, server string) (*explicitUDPClient, socks.ReplyCode, error) {
	c, rep, err := fdlimitRequest(ns, server, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: socks.Addr{IP: netip.IPv4Unspecified()}})
	if c == nil {
		return nil, rep.Code, err
	}
	relay, _ := rep.Addr.AddrPort()
	return &explicitUDPClient{ctrl: c, pc: ns.ListenPacket("udp4", ":0"), relay: relay}, rep.Code, nil
}

// Under RLIMIT_NOFILE 1024 (prlimit, max_flows derived from it: 384), more flows than the
// descriptors hold: 300 SOCKS CONNECT flows whose client reads nothing (each stalled while
// splicing bulk data: two sockets and a pipe), then SOCKS5 UDP associations (control connection,
// client socket, a path), then HTTP proxy requests and more CONNECTs. New clients get a clean
// refusal (a SOCKS reply, a 503) once descriptors run short, every flow and association that was
// admitted keeps working, and socksgate never runs into EMFILE.
func TestHardeningFileLimitRefusesNewFlowsBeforeLiveOnesDie(t *testing.T) {
	needBin(t, "prlimit", "curl")
	hardeningRaiseNofile(t, 4096)
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	explicitUDPEcho(t, tp)
	hardeningServeStream(t, tp.WAN, "[::]:7001")
	cfg := writeFile(t, "socksgate.yaml", withTestState(t, fmt.Sprintf(`log: {level: info}
lan: {interfaces: [%s]}
listen:
  http: ["lan:8080"]
  socks: ["lan:1080"]
transparent: {sniff: {enabled: false}}
admin: %s
timeouts: {dial: 3s, handshake: 5s, grace: 1s}
upstreams:
  - {name: unused, url: "socks5://%s:1080"}
rules:
  - {action: direct}
`, netlab.GWLANIf, hardeningAdmin, netlab.Proxy4)))
	gw := tp.GW.Start("prlimit", "--nofile=1024:1024", socksgateBin, "run", "-log-format", "json", "-c", cfg)
	if _, ok := waitLog(gw, 15*time.Second, msg("socksgate ready")); !ok {
		t.Fatalf("not ready:\n%s", gw.Output())
	}
	pid := gw.Cmd.Process.Pid
	stream := netip.MustParseAddrPort(netlab.WAN4 + ":7001")

	// 300 stalled bulk flows: the stream fills the client's socket, then the gateway's, and each
	// direction toward the client waits with its pipe in hand.
	const stalled = 300
	var flows []net.Conn
	t.Cleanup(func() {
		for _, c := range flows {
			c.Close()
		}
	})
	for i := range stalled {
		c, code, err := fdlimitConnect(tp.LAN, hardeningSOCKS, stream)
		if err != nil || c == nil {
			t.Fatalf("stalled flow %d: reply %v, %v (descriptors %v)\n%s", i, code, err, fdlimitKinds(pid), clipLog(gw.Output(), "refused"))
		}
		flows = append(flows, c)
	}
	// Wait (bounded, not asserted) until many of them splice: pipes on top of 600 sockets.
	waitFor(20*time.Second, func() bool { return hardeningFDs(t, pid) >= 2*stalled+100 })
	t.Logf("%d stalled flows: socksgate holds %d descriptors %v", stalled, hardeningFDs(t, pid), fdlimitKinds(pid))

	// Associations until the descriptors refuse them (at most up to the flow limit of 384).
	var assocs []*explicitUDPClient
	t.Cleanup(func() {
		for _, a := range assocs {
			a.ctrl.Close()
			a.pc.Close()
		}
	})
	echo := socks.Addr{IP: netip.MustParseAddr(netlab.WAN4), Port: 7}
	refused := 0
	for i := range 100 {
		a, code, err := fdlimitAssociate(tp.LAN, hardeningSOCKS)
		if err != nil {
			t.Fatalf("association %d got no clean reply: %v\n%s", i, err, gw.Output())
		}
		if a == nil {
			refused++
			continue
		}
		assocs = append(assocs, a)
		payload := explicitDNSLike(i, 64)
		if got, _, err := a.roundTrip(echo, payload); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("association %d (admitted, reply %v) carries no datagram: %v", i, code, err)
		}
	}
	t.Logf("associations: %d admitted, %d refused; socksgate holds %d descriptors", len(assocs), refused, hardeningFDs(t, pid))
	if refused == 0 {
		t.Fatalf("no association refused: the test did not reach the descriptor bound")
	}
	// An association needs four descriptors, a TCP flow two: up to three may be left. Stalled
	// flows take them, until one is refused too (at most a few).
	for range 4 {
		c, _, err := fdlimitConnect(tp.LAN, hardeningSOCKS, stream)
		if err != nil {
			t.Fatalf("a SOCKS client at the bound got no clean reply: %v", err)
		}
		if c == nil {
			break
		}
		flows = append(flows, c)
	}

	// New clients now: HTTP proxy requests answer 200 or 503, SOCKS CONNECTs get a reply.
	codes := map[string]int{}
	for range 10 {
		out, err := curl(tp.LAN, "-o", "/dev/null", "-w", "%{http_code}", "-x", "http://"+hardeningHTTP, urlFor(netlab.WAN4, "/"))
		if err != nil {
			t.Fatalf("curl through the HTTP proxy failed instead of a clean answer: %v: %s", err, out)
		}
		codes[out]++
	}
	for range 10 {
		c, code, err := fdlimitConnect(tp.LAN, hardeningSOCKS, stream)
		if err != nil {
			t.Fatalf("a new SOCKS client got no clean reply: %v", err)
		}
		if c != nil {
			c.Close()
		}
		codes[fmt.Sprintf("socks %v", code)]++
	}
	t.Logf("new clients: %v", codes)
	if codes["503"] == 0 {
		t.Errorf("no HTTP request was refused with 503 at the descriptor bound: %v", codes)
	}
	for k := range codes {
		if k != "200" && k != "503" && !strings.HasPrefix(k, "socks ") {
			t.Errorf("HTTP proxy answered %q: want 200 or 503", k)
		}
	}

	// Every admitted flow is still alive: the stalled ones still deliver, the associations
	// still echo.
	dead := 0
	for i, c := range flows {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 32<<10)); err != nil {
			dead++
			if dead <= 3 {
				t.Errorf("stalled flow %d died: %v", i, err)
			}
		}
	}
	for i, a := range assocs {
		payload := explicitDNSLike(1000+i, 64)
		if got, _, err := a.roundTrip(echo, payload); err != nil || !bytes.Equal(got, payload) {
			t.Errorf("association %d stopped carrying datagrams: %v", i, err)
		}
	}
	if dead > 0 {
		t.Errorf("%d of %d stalled flows died", dead, stalled)
	}
	out := gw.Output()
	if strings.Contains(out, "too many open files") {
		t.Errorf("socksgate ran out of descriptors (EMFILE):\n%s", clipLog(out, "too many open files"))
	}
	if !hasLog(out, logFields{"error": "~file descriptors nearly exhausted"}) {
		t.Errorf("no refusal logged for descriptors")
	}
	hardeningNoPanic(t, gw)
}

// fdlimitKinds counts pid's descriptors by kind (socket, pipe, anon_inode, files by path).
func fdlimitKinds(pid int) map[string]int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	kinds := map[string]int{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if i := strings.IndexByte(l, ':'); i > 0 {
			l = l[:i]
		}
		kinds[l]++
	}
	return kinds
}

// clipLog returns the first few lines of log that contain substr.
func clipLog(log, substr string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
			if len(out) == 5 {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
