//go:build linux

package tests

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// hardeningKernelState is socksgate's kernel state in ns: its nftables tables, redirect rules,
// fwmark policy rules and the routes of its policy table (100), per family.
type hardeningKernelState struct {
	tables, redirects, rules4, rules6, routes4, routes6 int
}

func hardeningReadKernelState(t *testing.T, ns *netlab.NS) hardeningKernelState {
	t.Helper()
	var s hardeningKernelState
	s.tables = countLines(nftTables(t, ns), "socksgate")
	if s.tables > 0 {
		rules, _ := ns.Run("nft", "list", "table", "inet", "socksgate")
		s.redirects = strings.Count(rules, "redirect to")
	}
	s.rules4, s.rules6 = udpFwmarkRules(t, ns)
	r4, _ := ns.Run("ip", "-4", "route", "show", "table", "100")
	r6, _ := ns.Run("ip", "-6", "route", "show", "table", "100")
	s.routes4 = countLines(r4, "local")
	s.routes6 = countLines(r6, "local")
	return s
}

// kill -9 with 200 active flows: every client sees its connection end at once; the rules stay
// (on_crash closed); a restart leaves exactly one table, one set of policy rules and routes, and
// the LAN's new flows work within a second of the restart.
func TestHardeningKill9With200FlowsThenRestart(t *testing.T) {
	hardeningRaiseNofile(t, 2000)
	tp := netlab.NewTopology(t)
	hardeningServeEcho(t, tp.WAN, "[::]:7000")
	startMicrosocks(t, tp, "", "")
	cfg := hardeningConfig("socks5://"+netlab.Proxy4+":1080", ", udp: true", "timeouts: {dial: 3s, grace: 1s}\n")
	echoAddr := net.JoinHostPort(netlab.WAN4, "7000")
	gw := startSocksgate(t, tp.GW, cfg)
	if s := hardeningReadKernelState(t, tp.GW); s != (hardeningKernelState{1, 1, 1, 1, 1, 1}) {
		t.Fatalf("kernel state while running: %+v", s)
	}

	conns, err := hardeningDialMany(tp.LAN, echoAddr, "", 200)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if failed, first := hardeningEchoCheck(conns, "before"); failed > 0 {
		t.Fatalf("%d of 200 flows failed before the kill: %v", failed, first)
	}

	gw.Kill()
	killed := time.Now()
	ends := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			how := hardeningClosed(c, 3*time.Second)
			mu.Lock()
			ends[how]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("200 flows after kill -9: %v, all ended within %v", ends, time.Since(killed).Round(time.Millisecond))
	if ends["timeout"] > 0 || ends["data"] > 0 {
		t.Fatalf("flows not ended within 3s of the kill: %v", ends)
	}
	if s := hardeningReadKernelState(t, tp.GW); s.tables != 1 {
		t.Fatalf("after kill -9 with on_crash closed: %+v, want the table kept", s)
	}

	gw = startSocksgate(t, tp.GW, cfg)
	ready := time.Now()
	var firstOK time.Duration
	for {
		c, err := hardeningDialMany(tp.LAN, echoAddr, "", 1)
		if err == nil {
			failed, _ := hardeningEchoCheck(c, "first")
			c[0].Close()
			if failed == 0 {
				firstOK = time.Since(ready)
				break
			}
		}
		if time.Since(ready) > 5*time.Second {
			t.Fatalf("no flow works 5s after the restart: %v\n%s", err, gw.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("first new flow worked %v after the restart was ready", firstOK.Round(time.Millisecond))
	if firstOK > time.Second {
		t.Errorf("new flows took %v to work after the restart, want under a second", firstOK)
	}
	if s := hardeningReadKernelState(t, tp.GW); s != (hardeningKernelState{1, 1, 1, 1, 1, 1}) {
		t.Fatalf("kernel state after the restart: %+v, want exactly one of each", s)
	}
	again, err := hardeningDialMany(tp.LAN, echoAddr, "", 200)
	if err != nil {
		t.Fatal(err)
	}
	if failed, first := hardeningEchoCheck(again, "after"); failed > 0 {
		t.Fatalf("%d of 200 flows failed after the restart: %v", failed, first)
	}
	for _, c := range again {
		c.Close()
	}
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v", exited, err)
	}
	if s := hardeningReadKernelState(t, tp.GW); s != (hardeningKernelState{}) {
		t.Fatalf("kernel state after SIGTERM: %+v, want none", s)
	}
	hardeningNoPanic(t, gw)
}

// hardeningStreamClient reads and writes continuously on c until either fails, and reports how
// the read side ended; it never closes c (so what socksgate holds is socksgate's doing).
type hardeningStreamClient struct {
	c     net.Conn
	mu    sync.Mutex
	got   int64
	ended time.Time
	how   error
	done  chan struct{}
}

func hardeningStartStreamClient(c net.Conn) *hardeningStreamClient {
	s := &hardeningStreamClient{c: c, done: make(chan struct{})}
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer close(s.done)
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			s.mu.Lock()
			s.got += int64(n)
			if err != nil {
				s.ended, s.how = time.Now(), err
			}
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return s
}

func (s *hardeningStreamClient) received() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}

// The upstream dies mid-transfer: both sides of every flow through it are closed at once (the
// lan clients see the end while still holding their sockets, and socksgate's fds and goroutines
// return to their baseline), and new flows fail over to the second upstream.
func TestHardeningUpstreamDiesMidTransfer(t *testing.T) {
	const flows = 20
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	hardeningServeStream(t, tp.WAN, "[::]:7001")
	first := upstreamsStartMicrosocks(t, tp, "1080", "", "")
	second := upstreamsStartMicrosocks(t, tp, "1081", "", "")
	gw := startSocksgate(t, tp.GW, hardeningConfig("socks5://"+netlab.Proxy4+":1080", "", fmt.Sprintf(`  - {name: second, url: "socks5://%s:1081"}
groups:
  - {name: pool, policy: failover, upstreams: [main, second], health: {interval: 1s, timeout: 1s, rise: 1, fall: 1}}
rules:
  - {action: proxy, upstream: pool}
timeouts: {dial: 3s, grace: 1s}
`, netlab.Proxy4)))
	pid := gw.Cmd.Process.Pid
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("warm-up: %v: %q", err, out)
	}
	fds0, gor0 := hardeningCounts(t, tp.GW, pid)

	conns, err := hardeningDialMany(tp.LAN, net.JoinHostPort(netlab.WAN4, "7001"), "", flows)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var clients []*hardeningStreamClient
	for _, c := range conns {
		clients = append(clients, hardeningStartStreamClient(c))
	}
	if !waitFor(5*time.Second, func() bool {
		for _, s := range clients {
			if s.received() < 64<<10 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the flows did not all carry data before the fault")
	}
	if !strings.Contains(first.Output(), "7001") || strings.Contains(second.Output(), "7001") {
		t.Fatalf("the flows are not all on the first upstream:\nfirst:\n%s\nsecond:\n%s", first.Output(), second.Output())
	}

	first.Kill()
	killed := time.Now()
	var slowest time.Duration
	for i, s := range clients {
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("client %d still open 5s after its upstream died (%d bytes received)", i, s.received())
		}
		if d := s.ended.Sub(killed); d > slowest {
			slowest = d
		}
	}
	t.Logf("%d flows ended %v at most after the upstream died; e.g. %v", flows, slowest.Round(time.Millisecond), clients[0].how)
	if slowest > 2*time.Second {
		t.Errorf("a flow took %v to end after its upstream died", slowest)
	}
	// The lan clients still hold their sockets: whatever socksgate still holds would be a
	// half-open leftover.
	hardeningWaitBaseline(t, tp.GW, pid, fds0, gor0, 5*time.Second, "after the upstream died")

	start := time.Now()
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("new flow after the upstream died: %v: %q\n%s", err, out, gw.Output())
	}
	t.Logf("a new flow failed over to the second upstream in %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(second.Output(), netlab.WAN4) {
		t.Fatalf("the new flow did not go through the second upstream:\n%s", second.Output())
	}
	hardeningNoPanic(t, gw)
}

// The upstream blackholes (gw's packets to it are dropped): live flows end by the idle timeout,
// whether their clients are silent or still trickling bytes toward the dead path; new flows
// fail within the dial timeout; socksgate's fds and goroutines return to their baseline.
func TestHardeningUpstreamBlackholeTimesOut(t *testing.T) {
	tp := netlab.NewTopology(t)
	hardeningServeEcho(t, tp.WAN, "[::]:7000")
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, hardeningConfig("socks5://"+netlab.Proxy4+":1080", "",
		"timeouts: {dial: 3s, idle: 3s, grace: 1s}\n"))
	pid := gw.Cmd.Process.Pid
	echoAddr := net.JoinHostPort(netlab.WAN4, "7000")
	warm, err := hardeningDialMany(tp.LAN, echoAddr, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	hardeningEchoCheck(warm, "warm")
	warm[0].Close()
	time.Sleep(200 * time.Millisecond)
	fds0, gor0 := hardeningCounts(t, tp.GW, pid)

	silent, err := hardeningDialMany(tp.LAN, echoAddr, "", 40)
	if err != nil {
		t.Fatal(err)
	}
	trickling, err := hardeningDialMany(tp.LAN, echoAddr, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	all := append(append([]net.Conn{}, silent...), trickling...)
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()
	if failed, first := hardeningEchoCheck(all, "live"); failed > 0 {
		t.Fatalf("%d flows failed before the blackhole: %v", failed, first)
	}
	fdsLive, gorLive := hardeningCounts(t, tp.GW, pid)
	t.Logf("50 live flows: fds %d, goroutines %d", fdsLive, gorLive)

	tp.GW.MustRun("nft", "add chain inet labfilter output { type filter hook output priority 0; }")
	tp.GW.MustRun("nft", "add rule inet labfilter output ip daddr "+netlab.Proxy4+" tcp dport 1080 counter drop")
	holed := time.Now()
	stopTrickle := make(chan struct{})
	defer close(stopTrickle)
	for _, c := range trickling {
		go func() {
			for {
				select {
				case <-stopTrickle:
					return
				case <-time.After(500 * time.Millisecond):
				}
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}()
	}

	// New flows meanwhile fail within the dial timeout.
	_, took, err := hardeningCurlTimed(tp.LAN, "--max-time", "10", "http://"+echoAddr+"/")
	t.Logf("a new flow through the blackholed upstream failed after %v", took.Round(time.Millisecond))
	if err == nil || took > 3*time.Second+1500*time.Millisecond {
		t.Errorf("a new flow through the blackholed upstream: err %v after %v; the dial timeout is 3s", err, took)
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	slowest := map[string]time.Duration{}
	open := map[string]int{}
	for i, c := range all {
		kind := "silent"
		if i >= len(silent) {
			kind = "trickling"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			how := hardeningClosed(c, 12*time.Second)
			d := time.Since(holed)
			mu.Lock()
			defer mu.Unlock()
			if how == "timeout" {
				open[kind]++
			}
			slowest[kind] = max(slowest[kind], d)
		}()
	}
	wg.Wait()
	t.Logf("after the blackhole: flows ended by %v (idle timeout 3s); still open after 12s: %v", slowest, open)
	for kind, n := range open {
		if n > 0 {
			t.Errorf("%d %s flows were still open 12s into the blackhole; the idle timeout is 3s", n, kind)
		}
	}
	hardeningWaitBaseline(t, tp.GW, pid, fds0, gor0, 5*time.Second, "after the blackhole")
	hardeningNoPanic(t, gw)
}

// The LAN interface goes down and up, then is deleted and recreated with the same name and
// addresses: transparent capture and the explicit port work again each time without restarting
// socksgate.
func TestHardeningLANInterfaceFlapAndRecreate(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: ["lan:8080"], socks: []}
transparent: {sniff: {enabled: false}, udp: true}
timeouts: {dial: 3s, grace: 1s}
upstreams:
  - {name: main, url: "socks5://%s:1080"}
`, netlab.GWLANIf, netlab.Proxy4))
	check := func(when string) {
		t.Helper()
		for _, c := range []struct{ name, url, proxy string }{
			{"transparent v4", urlFor(netlab.WAN4, "/"), ""},
			{"transparent v6", urlFor(netlab.WAN6, "/"), ""},
			{"explicit v4", urlFor(netlab.WAN4, "/"), "http://" + net.JoinHostPort(netlab.GWLAN4, "8080")},
			{"explicit v6", urlFor(netlab.WAN6, "/"), "http://" + net.JoinHostPort(netlab.GWLAN6, "8080")},
		} {
			args := []string{"--max-time", "5", c.url}
			if c.proxy != "" {
				args = append([]string{"-x", c.proxy}, args...)
			}
			var out string
			var err error
			// Neighbour discovery on a fresh link may take a moment.
			ok := waitFor(5*time.Second, func() bool {
				out, err = curl(tp.LAN, args...)
				return err == nil && out == pageBody
			})
			if !ok {
				t.Fatalf("%s: %s: %v: %q\n%s", when, c.name, err, out, gw.Output())
			}
		}
	}
	check("at start")
	pid := gw.Cmd.Process.Pid

	tp.GW.MustRun("ip", "link", "set", netlab.GWLANIf, "down")
	time.Sleep(500 * time.Millisecond)
	tp.GW.MustRun("ip", "link", "set", netlab.GWLANIf, "up")
	// IPv6 addresses go away with the link unless keep_addr_on_down; restore them as an
	// administrator's network config would.
	if out := tp.GW.MustRun("ip", "-6", "addr", "show", "dev", netlab.GWLANIf); !strings.Contains(out, netlab.GWLAN6) {
		tp.GW.Addr(netlab.GWLANIf, netlab.GWLAN6+"/64")
	}
	check("after down/up")

	tp.GW.MustRun("ip", "link", "del", netlab.GWLANIf) // takes lan's end of the pair too
	time.Sleep(500 * time.Millisecond)
	tp.Link(tp.GW, netlab.GWLANIf, tp.LAN, netlab.LANIf)
	tp.GW.Addr(netlab.GWLANIf, netlab.GWLAN4+"/24", netlab.GWLAN6+"/64")
	tp.LAN.Addr(netlab.LANIf, netlab.LAN4+"/24", netlab.LAN6+"/64")
	tp.LAN.Route("default", "via", netlab.GWLAN4)
	tp.LAN.MustRun("ip", "-6", "route", "add", "default", "via", netlab.GWLAN6)
	check("after delete and recreate")

	if gw.Cmd.Process.Pid != pid {
		t.Fatal("socksgate was restarted")
	}
	if exited, _ := gw.Wait(0); exited {
		t.Fatalf("socksgate exited:\n%s", gw.Output())
	}
	hardeningNoPanic(t, gw)
}
