//go:build linux

package tests

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// A lan host with no proxy settings reaches wan servers, over IPv4 and IPv6, only through the
// SOCKS5 upstream: gw's forwarding filter drops anything else.
func TestTransparentTCPThroughSOCKS5(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", ""))

	for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
		out, err := curl(tp.LAN, urlFor(dst, "/"))
		if err != nil || out != pageBody {
			t.Fatalf("curl %s: %v: %q", dst, err, out)
		}
		want := net.JoinHostPort(dst, "80")
		if _, ok := waitLog(gw, 2*time.Second, msg("flow").with("dst", want)); !ok {
			t.Fatalf("no flow log line with dst %s:\n%s", want, gw.Output())
		}
	}
	line := lastLog(gw.Output(), msg("flow"))
	if !line.has(logFields{"upstream": "socks5://" + netlab.Proxy4 + ":1080", "rule": "default",
		"action": "proxy", "outcome": "ok", "inbound": "redirect", "network": "tcp"}) {
		t.Errorf("flow log line: %v", line)
	}
	for _, f := range []string{"src", "up", "down", "duration"} {
		if line.str(f) == "" {
			t.Errorf("flow log line lacks %s: %v", f, line)
		}
	}
	if !strings.Contains(tp.DirectDrops(), "drop") {
		t.Fatal("the lab's forwarding filter is missing")
	}
	// microsocks never answers a request sent with the greeting: the first flow's probe finds
	// it out, and flows go on waiting for the method choice.
	if _, ok := waitLog(gw, 5*time.Second, logFields{"msg": "~does not answer a request sent with its greeting"}); !ok {
		t.Fatalf("no pipelining verdict for microsocks:\n%s", gw.Output())
	}
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("curl after the probe: %v: %q", err, out)
	}
}

// Username/password (RFC 1929) against microsocks: the right credentials work; wrong ones make
// the client's connection close promptly and the log names the failure without the password.
func TestTransparentSOCKS5Auth(t *testing.T) {
	const user, pass = "alice", "s3cret-Pw"
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, user, pass)

	t.Run("right credentials", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+user+":"+pass+"@"+netlab.Proxy4+":1080", ""))
		out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/"))
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q", err, out)
		}
		gw.Signal(syscall.SIGTERM)
		gw.Wait(10 * time.Second)
		if strings.Contains(gw.Output(), pass) {
			t.Fatalf("the password appears in the log:\n%s", gw.Output())
		}
	})
	t.Run("wrong credentials", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+user+":wrong-Pw@"+netlab.Proxy4+":1080", ""))
		start := time.Now()
		out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/"))
		if err == nil {
			t.Fatalf("curl succeeded with wrong credentials: %q", out)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the client waited %v for a refused flow", d)
		}
		if _, ok := waitLog(gw, 2*time.Second, logFields{"msg": "flow failed", "error": "~auth"}); !ok {
			t.Fatalf("the log does not name the auth failure:\n%s", gw.Output())
		}
		if strings.Contains(gw.Output(), "wrong-Pw") {
			t.Fatalf("the password appears in the log:\n%s", gw.Output())
		}
	})
}

// A destination in the bypass list is never captured: it is routed by the kernel as usual,
// even with the upstream down.
func TestTransparentBypassGoesDirect(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	tp.AllowDirect(netlab.WAN4)
	// No upstream proxy is running at all: only the kernel's routing can carry the flow.
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080",
		"transparent: {bypass: ["+netlab.WAN4+"/32]}\n"))
	out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/"))
	if err != nil || out != pageBody {
		t.Fatalf("curl to a bypassed address: %v: %q", err, out)
	}
	if l := lastLog(gw.Output(), flowEnded); l != nil {
		t.Fatalf("a bypassed flow reached socksgate:\n%s", gw.Output())
	}
}

// A 256 MiB download through the gateway arrives byte for byte.
func TestTransparentLargeTransferIntact(t *testing.T) {
	const n = 256 << 20
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", ""))
	out, err := tp.LAN.Run("sh", "-c", "curl -sS --max-time 120 '"+urlFor(netlab.WAN6, "/bytes?n=268435456")+"' | sha256sum")
	if err != nil {
		t.Fatalf("download: %v: %s", err, out)
	}
	if got, want := strings.Fields(out)[0], patternSHA256(n); got != want {
		t.Fatalf("sha256 %s, want %s", got, want)
	}
}

// The kernel state follows the process: SIGTERM removes it; SIGKILL with on_crash closed keeps
// it (the lan meets a closed port, nothing leaks) and the next start replaces it; with on_crash
// open it vanishes with the process and the lan is routed normally.
func TestTransparentRulesLifecycle(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	cfg := gatewayConfig("socks5://"+netlab.Proxy4+":1080", "")

	gw := startSocksgate(t, tp.GW, cfg)
	if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
		t.Fatalf("%d socksgate tables while running", got)
	}
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v\n%s", exited, err, gw.Output())
	}
	if tables := nftTables(t, tp.GW); strings.Contains(tables, "socksgate") {
		t.Fatalf("table left after SIGTERM:\n%s", tables)
	}

	t.Run("SIGKILL with on_crash closed", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, cfg)
		gw.Kill()
		if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
			t.Fatalf("%d socksgate tables after SIGKILL, want the one left to fail closed", got)
		}
		tp.AllowDirect(netlab.WAN4) // prove it is the rules, not the lab's filter, that hold
		if out, err := curl(tp.LAN, "--max-time", "3", urlFor(netlab.WAN4, "/")); err == nil {
			t.Fatalf("lan reached wan while socksgate was dead with on_crash closed: %q", out)
		}
		// A start that fails (its admin port is taken) leaves that table as it is.
		tp.GW.Listen("tcp", "127.0.0.1:9099")
		failed := tp.GW.Start(socksgateBin, "run", "-c", writeFile(t, "failing.yaml", cfg+"admin: 127.0.0.1:9099\n"))
		if exited, err := failed.Wait(15 * time.Second); !exited || err == nil {
			t.Fatalf("a start with its admin port taken: exited=%v err=%v\n%s", exited, err, failed.Output())
		}
		if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
			t.Fatalf("%d socksgate tables after a failed start, want the one left to fail closed\n%s", got, failed.Output())
		}
		if out, err := curl(tp.LAN, "--max-time", "3", urlFor(netlab.WAN4, "/")); err == nil {
			t.Fatalf("lan reached wan after a failed start with on_crash closed: %q", out)
		}
		gw = startSocksgate(t, tp.GW, cfg)
		if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
			t.Fatalf("%d socksgate tables after restart", got)
		}
		rules, _ := tp.GW.Run("nft", "list", "table", "inet", "socksgate")
		if got := strings.Count(rules, "redirect to"); got != 1 {
			t.Fatalf("%d redirect rules after restart, want 1:\n%s", got, rules)
		}
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl after restart: %v: %q", err, out)
		}
		// Crashed again, then restarted with capture turned off: the table goes too.
		gw.Kill()
		off := strings.Replace(cfg, "lan: {interfaces: ["+netlab.GWLANIf+"]}", "lan: {interfaces: []}", 1)
		off = strings.Replace(off, "listen: {http: [], socks: []}", "listen: {http: [\"127.0.0.1:8080\"], socks: []}", 1)
		gw = startSocksgate(t, tp.GW, off)
		if tables := nftTables(t, tp.GW); strings.Contains(tables, "socksgate") {
			t.Fatalf("a start with capture off left the crashed run's table:\n%s", tables)
		}
		gw.Signal(syscall.SIGTERM)
		gw.Wait(10 * time.Second)
	})

	t.Run("SIGKILL with on_crash open", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, cfg+"on_crash: open\n")
		if got := countLines(nftTables(t, tp.GW), "socksgate"); got != 1 {
			t.Fatalf("%d socksgate tables while running", got)
		}
		gw.Kill()
		if !waitFor(2*time.Second, func() bool { return !strings.Contains(nftTables(t, tp.GW), "socksgate") }) {
			t.Fatalf("table outlived the process with on_crash open:\n%s", nftTables(t, tp.GW))
		}
		tp.AllowDirect(netlab.WAN6)
		if out, err := curl(tp.LAN, urlFor(netlab.WAN6, "/")); err != nil || out != pageBody {
			t.Fatalf("lan not routed normally after the crash: %v: %q", err, out)
		}
	})
}

// With the upstream gone, new flows fail within the dial timeout and nothing hangs.
func TestTransparentUpstreamDownFailsPromptly(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	ms := startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", ""))
	ms.Kill()
	start := time.Now()
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err == nil {
		t.Fatalf("curl succeeded without an upstream: %q", out)
	}
	// Now a blackholed upstream: packets to it vanish, so only the dial timeout (3s) ends it.
	tp.GW.MustRun("nft", "add chain inet labfilter output { type filter hook output priority 0; }")
	tp.GW.MustRun("nft", "add rule inet labfilter output ip daddr "+netlab.Proxy4+" tcp dport 1080 drop")
	start = time.Now()
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err == nil {
		t.Fatalf("curl succeeded through a blackholed upstream: %q", out)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("a flow to a blackholed upstream took %v; the dial timeout is 3s", d)
	}
	if !hasLog(gw.Output(), msg("flow failed")) {
		t.Fatalf("no failed-flow log line:\n%s", gw.Output())
	}
}

// A connection aimed at socksgate's own transparent listener is refused, not relayed to itself.
func TestTransparentListenerLoopRefused(t *testing.T) {
	tp := netlab.NewTopology(t)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", ""))
	for _, addr := range []string{netlab.GWLAN4, netlab.GWLAN6} {
		start := time.Now()
		out, err := curl(tp.LAN, "--max-time", "5", "http://"+net.JoinHostPort(addr, "12345")+"/")
		if err == nil {
			t.Fatalf("a request to the listener itself succeeded: %q", out)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("refusing a loop took %v", d)
		}
	}
	if !waitFor(2*time.Second, func() bool {
		return countLogs(gw.Output(), logFields{"msg": "flow refused", "outcome": "refused", "error": "~(loop)"}) >= 2
	}) {
		t.Fatalf("loops not logged:\n%s", gw.Output())
	}
}
