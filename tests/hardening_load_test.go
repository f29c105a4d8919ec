//go:build linux

package tests

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// 9,000 concurrent relayed connections from lan (direct action to an echo server in wan) all
// carry data; then limits.max_flows_per_source and limits.max_flows refuse new flows at once,
// counted in /metrics, with socksgate's CPU staying low while it refuses (no accept-loop spin),
// and everything is released when the clients go.
func TestHardeningLoad9000FlowsThenLimitsRefuse(t *testing.T) {
	const (
		flows     = 9000
		perSource = 8950 // from lan's main address; the other 50 from a second one
		second    = "10.0.1.3"
		batch     = 500
	)
	// Both ends of every flow live in this process: 18,000 sockets and some spare.
	hardeningRaiseNofile(t, 2*flows+1000)
	tp := netlab.NewTopology(t)
	tp.LAN.Addr(netlab.LANIf, second+"/24")
	tp.LAN.MustRun("sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000")
	tp.GW.MustRun("sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000", "net.core.somaxconn=8192")
	echo := hardeningServeEcho(t, tp.WAN, "[::]:7000")
	gw := startSocksgate(t, tp.GW, fmt.Sprintf(`log: {level: info}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
transparent: {sniff: {enabled: false}}
admin: %s
limits: {max_flows: %d, max_flows_per_source: %d}
timeouts: {dial: 5s, grace: 1s}
upstreams:
  - {name: unused, url: "socks5://%s:1080"}
rules:
  - {action: direct}
`, netlab.GWLANIf, hardeningAdmin, flows, perSource, netlab.Proxy4))
	pid := gw.Cmd.Process.Pid
	echoAddr := net.JoinHostPort(netlab.WAN4, "7000")
	fds0, gor0 := hardeningCounts(t, tp.GW, pid)
	rss0 := hardeningRSS(t, pid)

	// Over a limit: refused at once, with the client seeing a prompt close.
	refusedAt := func(src string) (string, time.Duration) {
		t.Helper()
		cs, err := hardeningDialMany(tp.LAN, echoAddr, src, 1)
		if err != nil {
			return "dial: " + err.Error(), 0
		}
		defer cs[0].Close()
		start := time.Now()
		cs[0].Write([]byte("x"))
		return hardeningClosed(cs[0], 3*time.Second), time.Since(start)
	}
	checkRefused := func(src, limit string) {
		t.Helper()
		how, took := refusedAt(src)
		t.Logf("a new flow from %s over %s: %s after %v", src, limit, how, took.Round(time.Millisecond))
		if how != "eof" && how != "reset" {
			t.Fatalf("a new flow from %s over %s: %s, want a prompt close", src, limit, how)
		}
	}

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for len(conns) < flows {
		if len(conns) == perSource {
			checkRefused(netlab.LAN4, "max_flows_per_source")
		}
		n, src := min(batch, perSource-len(conns)), netlab.LAN4
		if len(conns) >= perSource {
			n, src = flows-len(conns), second
		}
		cs, err := hardeningDialMany(tp.LAN, echoAddr, src, n)
		if err != nil {
			t.Fatalf("after %d flows: dial: %v", len(conns), err)
		}
		conns = append(conns, cs...)
		if failed, first := hardeningEchoCheck(cs, "open"); failed > 0 {
			t.Fatalf("after %d flows: %d of %d new flows failed: %v", len(conns), failed, n, first)
		}
	}
	opened := time.Since(start)
	// Every flow, all held at once, carries data again.
	if failed, first := hardeningEchoCheck(conns, "held"); failed > 0 {
		t.Fatalf("%d of %d held flows failed: %v", failed, flows, first)
	}
	fds, gor := hardeningCounts(t, tp.GW, pid)
	rss := hardeningRSS(t, pid)
	build := "race-detector build: RSS inflated; SOCKSGATE_E2E_NORACE=1 for the real figure"
	if os.Getenv("SOCKSGATE_E2E_NORACE") != "" {
		build = "build without the race detector"
	}
	t.Logf("%d flows opened and echoed in %v; wan holds %d; socksgate: %d fds (%.2f per flow), %d goroutines, VmRSS %d MiB (%.1f KiB per flow, %s)",
		flows, opened.Round(time.Millisecond), echo.open.Load(), fds, float64(fds-fds0)/flows, gor, rss/1024, float64(rss-rss0)/flows, build)
	if int(echo.open.Load()) != flows {
		t.Fatalf("wan holds %d connections, want %d", echo.open.Load(), flows)
	}
	metrics := hardeningMetrics(t, tp.GW)
	if active := hardeningMetricSum(metrics, "socksgate_flows_active"); active != flows {
		t.Errorf("socksgate_flows_active %v, want %d", active, flows)
	}
	cpuQuiet := hardeningCPU(t, pid)
	time.Sleep(2 * time.Second)
	t.Logf("CPU while holding %d idle flows: %v over 2s", flows, hardeningCPU(t, pid)-cpuQuiet)

	checkRefused(second, "max_flows")
	const hammer = 1000
	cpu0, wall := hardeningCPU(t, pid), time.Now()
	closed := 0
	for closed < hammer {
		cs, err := hardeningDialMany(tp.LAN, echoAddr, second, 100)
		if err != nil {
			t.Fatalf("hammer: %v", err)
		}
		for _, c := range cs {
			if how := hardeningClosed(c, 3*time.Second); how == "eof" || how == "reset" {
				closed++
			} else {
				t.Errorf("a refused flow: %s", how)
			}
			c.Close()
		}
	}
	cpuHammer := hardeningCPU(t, pid) - cpu0
	cpu1 := hardeningCPU(t, pid)
	time.Sleep(2 * time.Second)
	cpuAfter := hardeningCPU(t, pid) - cpu1
	t.Logf("%d refused flows in %v cost socksgate %v of CPU (%.0f µs each); then %v over 2s of quiet",
		hammer, time.Since(wall).Round(time.Millisecond), cpuHammer, float64(cpuHammer.Microseconds())/hammer, cpuAfter)
	if cpuAfter > 500*time.Millisecond {
		t.Errorf("socksgate used %v of CPU in 2 quiet seconds at the flow limit: a spinning loop?", cpuAfter)
	}

	metrics = hardeningMetrics(t, tp.GW)
	var reasons []string
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "socksgate_flows_refused_total{") {
			reasons = append(reasons, l)
		}
	}
	sort.Strings(reasons)
	t.Logf("refusals in /metrics:\n%s", strings.Join(reasons, "\n"))
	if n := hardeningMetricSum(metrics, "socksgate_flows_refused_total"); n < hammer+2 {
		t.Errorf("socksgate_flows_refused_total sums to %v, want at least %d", n, hammer+2)
	}
	if !strings.Contains(strings.Join(reasons, "\n"), `reason="max_flows_per_source"`) || !strings.Contains(strings.Join(reasons, "\n"), `reason="max_flows"`) {
		t.Errorf("want refusals by both limits in /metrics:\n%s", strings.Join(reasons, "\n"))
	}
	if n := countLogs(gw.Output(), logFields{"msg": "flow refused", "error": "~flow limit reached"}); n < hammer {
		t.Errorf("%d refusal log lines, want one per refused flow", n)
	}

	// Under the limit again once flows end.
	for _, c := range conns[:10] {
		c.Close()
	}
	conns = conns[10:]
	if !waitFor(5*time.Second, func() bool {
		cs, err := hardeningDialMany(tp.LAN, echoAddr, second, 1)
		if err != nil {
			return false
		}
		defer cs[0].Close()
		failed, _ := hardeningEchoCheck(cs, "again")
		return failed == 0
	}) {
		t.Fatal("no new flow accepted after some flows ended")
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	hardeningWaitBaseline(t, tp.GW, pid, fds0, gor0, 30*time.Second, "after all flows closed")
	hardeningNoPanic(t, gw)
}

// Under a small RLIMIT_NOFILE (1024, set with prlimit before socksgate starts), the flow limit
// derived from it refuses flows before accept(2) can run out of descriptors; and with a
// configured max_flows above what the descriptors allow, running out (EMFILE) makes the accept
// loop back off instead of spinning, and it recovers once flows end.
func TestHardeningFileLimitNeverSpins(t *testing.T) {
	needBin(t, "prlimit")
	hardeningRaiseNofile(t, 3000)
	for _, c := range []struct {
		name, limits string
		derived      bool
	}{
		{"derived limit", "", true},
		{"max_flows above the fd limit", "limits: {max_flows: 5000}\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			hardeningServeEcho(t, tp.WAN, "[::]:7000")
			cfg := writeFile(t, "socksgate.yaml", withTestState(t, fmt.Sprintf(`log: {level: info}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
transparent: {sniff: {enabled: false}}
admin: %s
timeouts: {dial: 3s, grace: 1s}
upstreams:
  - {name: unused, url: "socks5://%s:1080"}
rules:
  - {action: direct}
%s`, netlab.GWLANIf, hardeningAdmin, netlab.Proxy4, c.limits)))
			gw := tp.GW.Start("prlimit", "--nofile=1024:1024", socksgateBin, "run", "-log-format", "json", "-c", cfg)
			if _, ok := waitLog(gw, 15*time.Second, msg("socksgate ready")); !ok {
				t.Fatalf("not ready:\n%s", gw.Output())
			}
			pid := gw.Cmd.Process.Pid
			echoAddr := net.JoinHostPort(netlab.WAN4, "7000")
			conns, err := hardeningDialMany(tp.LAN, echoAddr, "", 700)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			failed, _ := hardeningEchoCheckWithin(conns, 3*time.Second)
			fds := hardeningFDs(t, pid)
			cpu0 := hardeningCPU(t, pid)
			time.Sleep(2 * time.Second)
			cpu := hardeningCPU(t, pid) - cpu0
			t.Logf("700 flows tried under RLIMIT_NOFILE 1024: %d carried data, %d did not; socksgate holds %d fds; CPU %v over 2s",
				700-failed, failed, fds, cpu)
			if cpu > 500*time.Millisecond {
				t.Errorf("socksgate used %v of CPU in 2s with its fds exhausted: the accept loop spins", cpu)
			}
			if c.derived {
				if !hasLog(gw.Output(), msg("flow limit").with("max_flows", "384")) {
					t.Errorf("want the flow limit derived from 1024 fds (384):\n%s", gw.Output())
				}
				// At most the derived limit is carried; in a burst faster than the handshakes,
				// sockets still in theirs are charged to the descriptors too, so a few more may
				// be refused (reason descriptors), never with the process out of descriptors.
				if failed < 700-384 {
					t.Errorf("%d flows refused, want at least %d (over the derived limit of 384)", failed, 700-384)
				}
				if n := countLogs(gw.Output(), msg("flow refused")); n < failed-5 {
					t.Errorf("%d flows did not carry data but only %d were refused", failed, n)
				}
				if strings.Contains(gw.Output(), "too many open files") {
					t.Errorf("socksgate ran out of fds despite the derived limit")
				}
			}
			for _, c := range conns {
				c.Close()
			}
			conns = nil
			// Recovered: new flows work again.
			if !waitFor(10*time.Second, func() bool {
				cs, err := hardeningDialMany(tp.LAN, echoAddr, "", 1)
				if err != nil {
					return false
				}
				defer cs[0].Close()
				f, _ := hardeningEchoCheckWithin(cs, time.Second)
				return f == 0
			}) {
				t.Fatalf("no new flow works after the flows ended:\n%s", gw.Output())
			}
			hardeningNoPanic(t, gw)
		})
	}
}
