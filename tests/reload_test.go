//go:build linux

package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/tests/netlab"
)

// reloadEchoServer echoes lines on wan port 7000.
func reloadEchoServer(t *testing.T, tp *netlab.Topology) {
	ln := tp.WAN.Listen("tcp", "[::]:7000")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

func reloadEcho(t *testing.T, c net.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatalf("write on the live flow: %v", err)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo on the live flow: %q, %v", line, err)
	}
}

// Log lines of a reload: applied, or refused (by the gateway or already by the config check).
var (
	reloaded = msg("config reloaded")
	refused  = logFields{"msg": "~reload refused", "level": "error"}
)

// reloadTo writes yaml as gw's config file, sends SIGHUP and waits for one more log line
// holding wait, which it returns.
func reloadTo(t *testing.T, gw *netlab.Proc, cfgPath, yaml string, wait logFields) logLine {
	t.Helper()
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	n := countLogs(gw.Output(), wait)
	gw.Signal(syscall.SIGHUP)
	if !waitFor(10*time.Second, func() bool { return countLogs(gw.Output(), wait) > n }) {
		t.Fatalf("no %v after SIGHUP:\n%s", wait, gw.Output())
	}
	return lastLog(gw.Output(), wait)
}

// SIGHUP applies a new config without dropping live flows: new rules hold for new flows, the
// kernel table is replaced (still one), a changed capture port moves; an invalid config is
// refused with its errors and the running one stays in force.
func TestReloadKeepsLiveFlowsAndAppliesNewRules(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	reloadEchoServer(t, tp)
	startMicrosocks(t, tp, "", "")
	base := gatewayConfig("socks5://"+netlab.Proxy4+":1080", "")
	gw, cfgPath := startSocksgateFile(t, tp.GW, base)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	live, err := tp.LAN.Dial(ctx, "tcp", net.JoinHostPort(netlab.WAN4, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	lr := bufio.NewReader(live)
	reloadEcho(t, live, lr, "before")

	reloadWith := func(yaml string, wait logFields) { t.Helper(); reloadTo(t, gw, cfgPath, yaml, wait) }

	// New rules: web traffic to WAN4 is blocked from now on.
	reloadWith(base+"rules:\n  - {name: no-web4, dst: ["+netlab.WAN4+"/32], dst_ports: [80], action: block}\n  - {action: proxy, upstream: main}\n", reloaded)
	reloadEcho(t, live, lr, "after rules reload")
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor(netlab.WAN4, "/")); err == nil {
		t.Fatalf("a rule added by reload did not block: %q", out)
	}
	if out, err := curl(tp.LAN, urlFor(netlab.WAN6, "/")); err != nil || out != pageBody {
		t.Fatalf("curl after reload: %v: %q", err, out)
	}
	if !hasLog(gw.Output(), msg("flow blocked").with("rule", "no-web4")) {
		t.Fatalf("the blocked flow's log line does not name the new rule:\n%s", gw.Output())
	}

	// An invalid config is refused, with its error list, and changes nothing.
	reloadWith(base+"rules:\n  - {action: proxy, upstream: nowhere}\n", refused)
	if !hasLog(gw.Output(), logFields{"level": "error", "msg": "~no upstream or group named"}) {
		t.Fatalf("the refusal does not carry the validation error:\n%s", gw.Output())
	}
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor(netlab.WAN4, "/")); err == nil {
		t.Fatalf("the refused config replaced the running rules: %q", out)
	}
	reloadEcho(t, live, lr, "after refused reload")

	// The capture port moves: new listener, rules replaced in one batch, still one table.
	moved := strings.Replace(base, "lan:", "transparent: {tcp_port: 12399}\nlan:", 1)
	reloadWith(moved, reloaded)
	rules := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate")
	if strings.Count(rules, "redirect to :12399") != 1 || strings.Contains(rules, ":12345") {
		t.Fatalf("rules after moving the port:\n%s", rules)
	}
	if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
		t.Fatalf("%d socksgate tables after reloads", got)
	}
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("curl through the moved port: %v: %q", err, out)
	}
	reloadEcho(t, live, lr, "after port move")

	stopSocksgate(t, tp.GW, gw)
}

// A SIGHUP that arrives while socksgate is shutting down (a reload racing a stop) is ignored:
// the process still removes its rules and exits cleanly, instead of dying on the signal's
// default action with the rules left behind.
func TestReloadSignalDuringShutdown(t *testing.T) {
	tp := netlab.NewTopology(t)
	reloadEchoServer(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", ""))
	// A live flow holds the shutdown in its grace period (timeouts.grace: 2s).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	live, err := tp.LAN.Dial(ctx, "tcp", net.JoinHostPort(netlab.WAN4, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	reloadEcho(t, live, bufio.NewReader(live), "before")

	gw.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	gw.Signal(syscall.SIGHUP)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("exit after SIGTERM then SIGHUP: exited=%v err=%v\n%s", exited, err, gw.Output())
	}
	if !hasLog(gw.Output(), msg("stopped")) {
		t.Fatalf("no clean stop:\n%s", gw.Output())
	}
	if strings.Contains(nftTables(t, tp.GW), "socksgate") {
		t.Fatal("table left after SIGTERM and SIGHUP")
	}
}

// Reloads that change how TCP is captured: a new tcp_mode on the same port takes over the port
// (the old listener has to give it up first); turning capture off is refused as needing a
// restart, and capture keeps working through that reload and the next one (which once found
// no rules to replace and crashed).
func TestReloadCaptureModeAndToggle(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	base := gatewayConfig("socks5://"+netlab.Proxy4+":1080", "")
	gw, cfgPath := startSocksgateFile(t, tp.GW, base)
	reloadWith := func(yaml string) logLine { t.Helper(); return reloadTo(t, gw, cfgPath, yaml, reloaded) }
	web := func(when string) {
		t.Helper()
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl %s: %v: %q\n%s", when, err, out, gw.Output())
		}
	}
	web("at start")

	line := reloadWith(strings.Replace(base, "lan:", "transparent: {tcp_mode: tproxy}\nlan:", 1))
	if !line.has(logFields{"applied": "~tcp_mode"}) || hasLog(gw.Output(), logFields{"msg": "~reload: transparent TCP listener"}) {
		t.Fatalf("tcp_mode not applied: %v\n%s", line, gw.Output())
	}
	if rules := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate"); !strings.Contains(rules, "tproxy") {
		t.Fatalf("rules after the switch to tproxy:\n%s", rules)
	}
	web("after the switch to tproxy")

	// A new mark needs a restart: the rules keep exempting the mark socksgate's sockets carry
	// (rules with the new one would capture socksgate's own connections again).
	before := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate")
	line = reloadWith(strings.Replace(base, "lan:", "transparent: {tcp_mode: tproxy}\nmark: 0x7\nlan:", 1))
	if !line.has(logFields{"needs_restart": "~mark"}) {
		t.Fatalf("a new mark was not refused as needing a restart: %v", line)
	}
	if after := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate"); after != before {
		t.Fatalf("rules changed with the mark:\n%s\nwas:\n%s", after, before)
	}
	web("after a reload with a new mark")

	off := strings.Replace(base, "lan: {interfaces: ["+netlab.GWLANIf+"]}", "lan: {interfaces: []}", 1)
	if off == base {
		t.Fatal("test config: lan line not found")
	}
	for i := range 2 {
		line = reloadWith(off)
		if !line.has(logFields{"needs_restart": "~lan.interfaces"}) {
			t.Fatalf("reload %d turning capture off: %v", i, line)
		}
		if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
			t.Fatalf("reload %d turning capture off: %d socksgate tables, want the running one", i, got)
		}
		web(fmt.Sprintf("after reload %d turning capture off", i))
	}
	stopSocksgate(t, tp.GW, gw)

	// The other way: started without capture (explicit ports only), reloaded twice with it.
	explicitOnly := strings.Replace(off, "listen: {http: [], socks: []}", "listen: {http: [\""+netlab.GWLAN4+":8080\"], socks: [], allow: [10.0.1.0/24]}", 1)
	gw, cfgPath = startSocksgateFile(t, tp.GW, explicitOnly) // reloadWith follows both
	for i := range 2 {
		line = reloadWith(strings.Replace(base, "listen: {http: [], socks: []}", "listen: {http: [\""+netlab.GWLAN4+":8080\"], socks: [], allow: [10.0.1.0/24]}", 1))
		if !line.has(logFields{"needs_restart": "~lan.interfaces"}) {
			t.Fatalf("reload %d turning capture on: %v", i, line)
		}
		if strings.Contains(nftTables(t, tp.GW), "socksgate") {
			t.Fatalf("reload %d turning capture on installed rules", i)
		}
	}
	if out, err := curl(tp.LAN, "--proxy", "http://"+netlab.GWLAN4+":8080", urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("explicit proxy after the reloads: %v: %q\n%s", err, out, gw.Output())
	}
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("exit: %v %v\n%s", exited, err, gw.Output())
	}
}

// Moving the UDP capture port by reload: a port that cannot be opened (a daemon in gw holds it)
// leaves UDP capture where it was, rules included; a free one takes over, the new listener
// opening before the rules point at it.
func TestReloadMovesUDPPort(t *testing.T) {
	tp := netlab.NewTopology(t)
	udpEcho(t, tp, 7)
	startDante(t, tp, danteOptions{})
	base := udpConfig("socks5://"+netlab.Proxy4+":1080", "", "")
	gw, cfgPath := startSocksgateFile(t, tp.GW, base)
	pc := tp.LAN.ListenPacket("udp", ":0")
	echo := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7)
	exchange := func(when string) {
		t.Helper()
		if got, _, err := udpExchange(pc, echo, when, 3, time.Second); err != nil || got != when {
			t.Fatalf("udp echo %s: %q, %v\n%s", when, got, err, gw.Output())
		}
	}
	reloadWith := func(yaml string) logLine { t.Helper(); return reloadTo(t, gw, cfgPath, yaml, reloaded) }
	exchange("at start")

	tp.GW.ListenPacket("udp", "[::]:12350") // a local daemon holds the port
	reloadWith(strings.Replace(base, "udp_port: 12346", "udp_port: 12350", 1))
	if !hasLog(gw.Output(), logFields{"level": "error", "msg": "reload: transparent UDP listener; keeping the old one", "error": "~address already in use"}) {
		t.Fatalf("no error for the busy port:\n%s", gw.Output())
	}
	if rules := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate"); strings.Contains(rules, ":12350") || !strings.Contains(rules, ":12346") {
		t.Fatalf("rules point at the port that could not be opened:\n%s", rules)
	}
	exchange("after a refused move")

	line := reloadWith(strings.Replace(base, "udp_port: 12346", "udp_port: 12351", 1))
	if !line.has(logFields{"applied": "~transparent UDP"}) {
		t.Fatalf("UDP move not applied: %v", line)
	}
	if rules := tp.GW.MustRun("nft", "list", "table", "inet", "socksgate"); !strings.Contains(rules, ":12351") || strings.Contains(rules, ":12346") {
		t.Fatalf("rules after the move:\n%s", rules)
	}
	exchange("after the move")
}

// udp_without_support switched by reload applies to explicit SOCKS5 UDP clients as well: their
// datagrams routed to an upstream without UDP (SOCKS4 here) are dropped, then sent direct.
func TestReloadUDPWithoutSupportForExplicitClients(t *testing.T) {
	tp := netlab.NewTopology(t)
	explicitUDPEcho(t, tp)
	startDante(t, tp, danteOptions{})
	base := explicitConfig("socks4://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}", "")
	gw, cfgPath := startSocksgateFile(t, tp.GW, base)
	to := socks.Addr{IP: netip.MustParseAddr(netlab.WAN4), Port: 7}
	c := explicitAssociate(t, tp.LAN, explicitSOCKS4)
	if got, _, err := c.roundTrip(to, []byte("blocked")); err == nil {
		t.Fatalf("a datagram for an upstream without UDP came back under udp_without_support: block: %q", got)
	}
	c.ctrl.Close()

	direct := explicitConfig("socks4://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}", "transparent: {udp_without_support: direct}")
	if err := os.WriteFile(cfgPath, []byte(direct), 0o600); err != nil {
		t.Fatal(err)
	}
	gw.Signal(syscall.SIGHUP)
	if _, ok := waitLog(gw, 10*time.Second, reloaded); !ok {
		t.Fatalf("no reload:\n%s", gw.Output())
	}
	c = explicitAssociate(t, tp.LAN, explicitSOCKS4)
	if got, _, err := c.roundTrip(to, []byte("direct")); err != nil || string(got) != "direct" {
		t.Fatalf("after the reload to direct: %q, %v\n%s", got, err, gw.Output())
	}
}

// reloadListenConfig is a config with capture on, an HTTP proxy port at http, a SOCKS port at
// lan:1080 and extra appended; upstream "main" is microsocks in the proxy namespace.
func reloadListenConfig(http, extra string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [%q], socks: ["lan:1080"]}
timeouts: {dial: 3s, grace: 2s}
upstreams:
  - {name: main, url: "socks5://%s:1080"}
%s`, netlab.GWLANIf, http, netlab.Proxy4, extra)
}

// reloadListenInode is the socket inode of what listens on port in ns ("" if nothing does).
func reloadListenInode(t *testing.T, ns *netlab.NS, port string) string {
	t.Helper()
	out, err := ns.Run("ss", "-Hltne", "sport = :"+port)
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "ino:") {
			return f
		}
	}
	return ""
}

// reloadSlowDownload starts curl in lan fetching n bytes through proxyArgs at a limited rate
// into a file, and waits until the first bytes have arrived; it returns curl and the file.
func reloadSlowDownload(t *testing.T, tp *netlab.Topology, n int64, rate string, proxyArgs ...string) (*netlab.Proc, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "download")
	args := append([]string{"curl", "-sS", "--max-time", "90", "--limit-rate", rate, "-o", out}, proxyArgs...)
	p := tp.LAN.Start(append(args, urlFor(netlab.WAN4, "/bytes?n="+strconv.FormatInt(n, 10)))...)
	if !waitFor(15*time.Second, func() bool { st, err := os.Stat(out); return err == nil && st.Size() > 200_000 }) {
		t.Fatalf("the download did not start: %s", p.Output())
	}
	return p, out
}

func reloadFileSHA256(t *testing.T, path string) (int64, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return int64(len(b)), hex.EncodeToString(sum[:])
}

// A reload that changes only listen.http touches nothing else: the SOCKS port's socket stays
// open throughout (the same socket, and every connection attempted while the reload runs is
// accepted), and a download forwarded through the removed HTTP port goes on to its last byte;
// the new port serves, the removed one is closed.
func TestReloadListenKeepsUnchangedPortsAndFlows(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	// Small socket buffers, so that what is still to come of the download is not all already
	// in flight (buffered on the way) when the reload comes: a cut then shows.
	for _, ns := range []*netlab.NS{tp.LAN, tp.GW} {
		ns.MustRun("sysctl", "-q", "-w", "net.ipv4.tcp_rmem=4096 65536 262144", "net.ipv4.tcp_wmem=4096 65536 262144")
	}
	gw, cfgPath := startSocksgateFile(t, tp.GW, reloadListenConfig("lan:8080", ""))
	socksAddr := net.JoinHostPort(netlab.GWLAN4, "1080")
	inode := reloadListenInode(t, tp.GW, "1080")
	if inode == "" {
		t.Fatalf("nothing listens on 1080:\n%s", gw.Output())
	}

	// About 8 s at 2 MB/s: the reload comes in its first second, grace is 2 s.
	const size = 16 << 20
	dl, file := reloadSlowDownload(t, tp, size, "2M", "-x", "http://"+net.JoinHostPort(netlab.GWLAN4, "8080"))

	var refused, tried atomic.Int64
	stop := make(chan struct{})
	dialing := make(chan struct{})
	go func() {
		defer close(dialing)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := tp.LAN.Dial(ctx, "tcp", socksAddr)
			cancel()
			tried.Add(1)
			if err != nil {
				refused.Add(1)
			} else {
				c.Close()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	reloadTo(t, gw, cfgPath, reloadListenConfig("lan:8081", ""), reloaded)
	close(stop)
	<-dialing
	t.Logf("during the reload: %d of %d connections to the unchanged SOCKS port refused", refused.Load(), tried.Load())
	if refused.Load() > 0 {
		t.Errorf("%d of %d connections to the unchanged SOCKS port were refused during the reload", refused.Load(), tried.Load())
	}
	if now := reloadListenInode(t, tp.GW, "1080"); now != inode {
		t.Errorf("the SOCKS port was reopened by a reload that did not change it: %s, was %s", now, inode)
	}

	exited, err := dl.Wait(60 * time.Second)
	n, sum := reloadFileSHA256(t, file)
	t.Logf("download through the removed HTTP port: %d of %d bytes, curl err %v", n, size, err)
	if !exited || err != nil || n != size || sum != patternSHA256(size) {
		t.Fatalf("the forwarded download was cut by the reload: %d of %d bytes, exited=%v err=%v %s\n%s", n, size, exited, err, dl.Output(), gw.Output())
	}
	if out, err := curl(tp.LAN, "-x", "http://"+net.JoinHostPort(netlab.GWLAN4, "8081"), urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("the new HTTP port: %v %q\n%s", err, out, gw.Output())
	}
	if out, err := curl(tp.LAN, "--socks5", socksAddr, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("the kept SOCKS port: %v %q\n%s", err, out, gw.Output())
	}
	if out, err := curl(tp.LAN, "--max-time", "3", "-x", "http://"+net.JoinHostPort(netlab.GWLAN4, "8080"), urlFor(netlab.WAN4, "/")); err == nil {
		t.Fatalf("the removed HTTP port still serves: %q", out)
	}
	stopSocksgate(t, tp.GW, gw)
}

// A reload onto a port something else holds (it passes check) is refused as a whole, with the
// reason: the old ports keep serving and the rest of that config (a new rule) is not applied.
// /healthz answers 503 naming a listener that should be open and stopped (the kernel aborted
// it), and a reload opens it again.
func TestReloadOntoTakenPortIsRefused(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	const admin = "admin: 127.0.0.1:9091\n"
	base := reloadListenConfig("lan:8080", admin)
	// Go listens with MPTCP where the kernel has it, and ss -K cannot abort an MPTCP listener:
	// plain TCP here, so that the kernel can stop the listener below.
	t.Setenv("GODEBUG", "multipathtcp=0")
	gw, cfgPath := startSocksgateFile(t, tp.GW, base)
	proxy := "http://" + net.JoinHostPort(netlab.GWLAN4, "8080")
	web := func(when string) {
		t.Helper()
		if out, err := curl(tp.LAN, "-x", proxy, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl through %s %s: %v %q\n%s", proxy, when, err, out, gw.Output())
		}
	}
	var body string
	checkHealthz := func(ok bool, want, when string) {
		t.Helper()
		var err error
		body, err = opsGet(tp.GW, "http://127.0.0.1:9091/healthz") // an error for any status but 200
		if (err == nil) != ok || !strings.Contains(body, want) {
			t.Fatalf("healthz %s: %v %q, want ok=%v with %q", when, err, body, ok, want)
		}
	}
	web("at start")

	tp.GW.Listen("tcp", net.JoinHostPort(netlab.GWLAN4, "8082")) // another daemon holds it
	taken := reloadListenConfig("lan:8082", admin+"rules:\n  - {name: no-web4, dst: ["+netlab.WAN4+"/32], dst_ports: [80], action: block}\n  - {action: proxy, upstream: main}\n")
	applied := countLogs(gw.Output(), reloaded)
	line := reloadTo(t, gw, cfgPath, taken, refused)
	if !line.has(logFields{"error": "~address already in use"}) || !line.has(logFields{"error": "~listen.http[0]"}) {
		t.Fatalf("the refusal does not say why: %v", line)
	}
	if countLogs(gw.Output(), reloaded) != applied {
		t.Fatalf("a refused reload was reported applied:\n%s", gw.Output())
	}
	web("after the refused reload (the old port, and no new rule)")
	checkHealthz(true, "ok", "after the refused reload")

	// The kernel aborts the listening socket (ss -K): accept fails for good.
	if out, err := tp.GW.Run("ss", "-K", "state", "listening", "sport = :8080"); err != nil {
		t.Fatalf("ss -K: %v %s", err, out)
	}
	if _, ok := waitLog(gw, 10*time.Second, logFields{"msg": "explicit listener stopped", "level": "error", "addr": netlab.GWLAN4 + ":8080"}); !ok {
		t.Fatalf("no report of the stopped listener:\n%s", gw.Output())
	}
	checkHealthz(false, "listen.http "+netlab.GWLAN4+":8080 stopped", "with the HTTP port stopped")
	t.Logf("healthz with a listener down: %q", body)

	reloadTo(t, gw, cfgPath, base, reloaded)
	checkHealthz(true, "ok", "after a reload reopened the port")
	web("after a reload reopened the port")
	stopSocksgate(t, tp.GW, gw)
}

// A reload that moves an explicit port between a wildcard and one address on the same port
// (0.0.0.0:8080 → 10.0.1.1:8080 and back) is applied: the kernel lets the two share no port,
// so the old listener gives it up just before the new one opens. A download through the old
// one goes on to its end. When the reload fails for another address, the old listener is
// reopened and serves again.
func TestReloadMovesAPortBetweenWildcardAndOneAddress(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	lanProxy := "http://" + net.JoinHostPort(netlab.GWLAN4, "8080")
	web := func(ns *netlab.NS, proxy string, ok bool, when string) {
		t.Helper()
		out, err := curl(ns, "--max-time", "5", "-x", proxy, urlFor(netlab.WAN4, "/"))
		if ok && (err != nil || out != pageBody) || !ok && err == nil {
			t.Fatalf("curl through %s %s: %v %q, want it to work: %v", proxy, when, err, out, ok)
		}
	}
	gw, cfgPath := startSocksgateFile(t, tp.GW, reloadListenConfig("0.0.0.0:8080", ""))
	web(tp.GW, "http://127.0.0.1:8080", true, "on the wildcard")

	const size = 4 << 20
	dl, file := reloadSlowDownload(t, tp, size, "2M", "-x", lanProxy)
	line := reloadTo(t, gw, cfgPath, reloadListenConfig(netlab.GWLAN4+":8080", ""), reloaded)
	if hasLog(gw.Output(), refused) {
		t.Fatalf("the move to one address was refused:\n%s", gw.Output())
	}
	t.Logf("%v", line)
	web(tp.LAN, lanProxy, true, "after the move to one address")
	web(tp.GW, "http://127.0.0.1:8080", false, "on loopback, no longer listened on")
	exited, err := dl.Wait(60 * time.Second)
	if n, sum := reloadFileSHA256(t, file); !exited || err != nil || n != size || sum != patternSHA256(size) {
		t.Fatalf("the download through the old listener was cut: %d of %d bytes, err %v\n%s", n, size, err, gw.Output())
	}

	// Back to the wildcard, with another address whose port is taken: refused as a whole, and
	// the one address's listener, closed to hand its port over, serves again.
	tp.GW.Listen("tcp", net.JoinHostPort(netlab.GWLAN4, "8082"))
	taken := strings.Replace(reloadListenConfig("0.0.0.0:8080", ""), `http: ["0.0.0.0:8080"]`, `http: ["0.0.0.0:8080", "`+netlab.GWLAN4+`:8082"]`, 1)
	if line := reloadTo(t, gw, cfgPath, taken, refused); !line.has(logFields{"error": "~listen.http[1]"}) {
		t.Fatalf("the refusal does not name the taken port: %v", line)
	}
	web(tp.LAN, lanProxy, true, "after the refused reload")
	web(tp.GW, "http://127.0.0.1:8080", false, "on loopback after the refused reload")

	reloadTo(t, gw, cfgPath, reloadListenConfig("0.0.0.0:8080", ""), reloaded)
	web(tp.GW, "http://127.0.0.1:8080", true, "back on the wildcard")
	web(tp.LAN, lanProxy, true, "back on the wildcard")
	stopSocksgate(t, tp.GW, gw)
}

// The transparent UDP listener aborted by the kernel (ss -K) stops for good: /healthz answers
// 503 naming it, until a reload, even one that changes nothing, reopens it.
func TestHealthzReportsTheTransparentUDPListenerStopped(t *testing.T) {
	tp := netlab.NewTopology(t)
	startMicrosocks(t, tp, "", "")
	cfg := udpConfig("socks5://"+netlab.Proxy4+":1080", "", "admin: 127.0.0.1:9091\n")
	gw, cfgPath := startSocksgateFile(t, tp.GW, cfg)
	healthz := func() (string, error) { return opsGet(tp.GW, "http://127.0.0.1:9091/healthz") }
	if body, err := healthz(); err != nil {
		t.Fatalf("healthz at start: %v %q", err, body)
	}
	if out, err := tp.GW.Run("ss", "-K", "-u", "-a", "sport = :12346"); err != nil {
		t.Skipf("ss -K cannot abort a UDP socket here: %v %s", err, out)
	}
	if _, ok := waitLog(gw, 10*time.Second, logFields{"msg": "transparent UDP listener stopped", "level": "error"}); !ok {
		t.Skipf("the kernel did not abort the UDP listener (no SOCK_DESTROY for UDP?):\n%s", gw.Output())
	}
	body, err := healthz()
	if err == nil || !strings.Contains(body, "transparent udp [::]:12346 stopped") {
		t.Fatalf("healthz with the UDP listener stopped: %v %q", err, body)
	}
	t.Logf("healthz: %q", body)
	reloadTo(t, gw, cfgPath, cfg, reloaded)
	if body, err := healthz(); err != nil {
		t.Fatalf("healthz after a reload reopened it: %v %q", err, body)
	}
	stopSocksgate(t, tp.GW, gw)
}
