//go:build linux

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The soak (`make soak`, SOAK_TIME=30m by default): for SOAK_TIME the lab drives churn through
// socksgate, and every SOAK_SAMPLE (5s) its resources and the kernel objects it owns are read.
// The load, all at once:
//   - new TCP flows at a steady rate (soakFlowRate a second, alternating IPv4 and IPv6), a small
//     HTTP exchange each;
//   - long transfers: soakTransfers clients each downloading a paced stream for 20 s, again
//     and again;
//   - UDP sessions coming and going: soakUDPClients sockets that exchange 10 datagrams with
//     wan's echo, close, and leave their session to expire (udp_idle 5s);
//   - idle flows timing out: a connection every 2 s that says one byte and then nothing, until
//     timeouts.idle (15s) closes it;
//   - a reload every cycle (a minute; SOAK_TIME/30 for shorter runs, at least 10 s), the rule's
//     name alternating so each reload changes something;
//   - an upstream that dies and returns: the first member of the failover group (a second
//     dante) is killed every 4 cycles and started again a cycle later;
//   - a LAN link that flaps: gw's LAN interface down for 2 s every 3 cycles.
//
// It fails if a series trends up once the load is steady, by this test: the run is cut in
// thirds, the first is warm-up (caches filling, the allocator finding its size, the first
// health checks), and the median of the last third must not exceed the median of the second
// by more than the series' tolerance (a factor and an absolute slack, soakSeries). Medians of
// whole thirds, each spanning several reload, upstream and link cycles, are not moved by the
// spikes those cause; a leak of anything per flow, per reload or per fault moves them by what
// it leaked over a third of the run. A least-squares slope over the last two thirds is reported
// beside (per hour), not judged: it is the figure to compare between runs. The samples go to
// results/soak-*.csv, a chart of every series to soak-*.png (gnuplot), the verdicts to
// soak-*.md.
const (
	soakFlowRate   = 20 // new TCP flows a second
	soakTransfers  = 2
	soakUDPClients = 4
	soakStreamPort = "8000"
	soakFlakyPort  = "1081"
)

// soakSeries are the series judged, with their tolerance: the last third's median may be at
// most factor × the second third's plus slack.
var soakSeries = []struct {
	col           string
	factor, slack float64
}{
	{"rss_kib", 1.10, 4096},
	{"heap_inuse_kib", 1.15, 4096},
	{"goroutines", 1.10, 20},
	{"fds", 1.10, 20},
	{"flows_active", 1.25, 10},
	{"udp_sessions", 1.25, 8},
	{"nft_objects", 1, 0},
	{"ip_rules", 1, 0},
	{"routes", 1, 0},
}

// soakColumns are the CSV's columns, in order: time, the judged series, then the load's
// counters (cumulative) and what else is worth seeing (conntrack entries in gw, reloads done).
var soakColumns = []string{"t_s", "rss_kib", "heap_inuse_kib", "goroutines", "fds", "flows_active", "udp_sessions",
	"nft_objects", "ip_rules", "routes", "conntrack", "new_ok", "new_err", "xfer_ok", "xfer_err", "udp_ok", "udp_err",
	"idle_closed", "idle_err", "reloads"}

type soakCounters struct {
	newOK, newErr, xferOK, xferErr, udpOK, udpErr, idleClosed, idleErr, reloads atomic.Int64
}

func TestSoak(t *testing.T) {
	if os.Getenv("SOAK") == "" {
		t.Skip("soak: runs only with SOAK=1 (use `make soak`, as root; SOAK_TIME=30m by default)")
	}
	dur := 30 * time.Minute
	if v := os.Getenv("SOAK_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			t.Fatalf("SOAK_TIME=%q: want a duration of a minute or more", v)
		}
		dur = d
	}
	every := 5 * time.Second
	if v := os.Getenv("SOAK_SAMPLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("SOAK_SAMPLE=%q: want a duration", v)
		}
		every = d
	}
	cycle := min(max(dur/30, 10*time.Second), time.Minute)
	for _, b := range []string{"danted", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("soak needs %s (apt-get install dante-server nftables)", b)
		}
	}
	_, err := exec.LookPath("gnuplot")
	plot := err == nil
	if !plot && os.Getenv("CI") != "" {
		t.Fatal("gnuplot is not installed; tests/deps.sh should have installed it (gnuplot-nox)")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)

	bin := buildSocksgate(t)
	tp := netlab.NewTopology(t)
	for _, ns := range []*netlab.NS{tp.LAN, tp.GW, tp.Proxy, tp.WAN} {
		ns.MustRun("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1",
			"net.ipv4.ip_local_reserved_ports="+strings.Join(append(labPorts, soakStreamPort, soakFlakyPort), ","),
			// The link flap takes gw's LAN interface down: its IPv6 addresses, and lan's, stay.
			"net.ipv6.conf.all.keep_addr_on_down=1", "net.ipv6.conf.default.keep_addr_on_down=1")
	}
	for _, ns := range []*netlab.NS{tp.LAN, tp.GW} {
		ns.MustRun("sysctl", "-qw", "net.ipv6.conf."+map[*netlab.NS]string{tp.LAN: netlab.LANIf, tp.GW: netlab.GWLANIf}[ns]+".keep_addr_on_down=1")
	}
	serveHTTP(t, tp.WAN.Listen("tcp", ":"+httpPort))
	serveIdle(t, tp.WAN.Listen("tcp", ":"+idlePort))
	soakServeStream(t, tp.WAN.Listen("tcp", ":"+soakStreamPort))
	soakServeUDPEcho(t, tp.WAN.ListenPacket("udp", ":"+udpPort))
	startDante(t, tp)
	flaky := soakStartFlaky(t, tp)

	cfgPath := filepath.Join(t.TempDir(), "socksgate.yaml")
	writeCfg := func(rule string) {
		if err := os.WriteFile(cfgPath, []byte(soakConfig(rule, t.TempDir())), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg("soak-a")
	logPath := filepath.Join(os.TempDir(), fmt.Sprintf("soak-socksgate-%d.log", os.Getpid()))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// Its log goes to a file, not into this process: a long run at info writes tens of MB.
	sg := exec.Command("ip", "netns", "exec", tp.GW.Name, bin, "run", "-c", cfgPath)
	sg.Stdout, sg.Stderr = logFile, logFile
	sg.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sg.Start(); err != nil {
		t.Fatal(err)
	}
	sgDone := make(chan struct{})
	go func() { sg.Wait(); close(sgDone) }()
	t.Cleanup(func() {
		sg.Process.Signal(syscall.SIGTERM)
		select {
		case <-sgDone:
		case <-time.After(10 * time.Second):
			sg.Process.Kill()
			<-sgDone
		}
	})
	pid := sg.Process.Pid
	admin := "http://" + net.JoinHostPort("127.0.0.1", "9091")
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: tp.GW.Dial, DisableKeepAlives: true}}
	if !waitUntil(15*time.Second, func() bool { _, err := soakGet(hc, admin+"/healthz"); return err == nil }) {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("socksgate did not come up:\n%s", tail(string(b), 30))
	}
	t.Logf("soak: %v, a sample every %v, cycle %v; socksgate pid %d, log %s", dur, every, cycle, pid, logPath)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var c soakCounters
	var wg sync.WaitGroup
	soakLoad(ctx, &wg, tp, &c)

	// The faults, each on its own clock.
	var events sync.Map // sample index → what happened since the previous sample
	started := time.Now()
	note := func(what string) {
		k := int(time.Since(started) / every)
		v, _ := events.LoadOrStore(k, new(string))
		p := v.(*string)
		if *p != "" {
			what = *p + "; " + what
		}
		*p = what
	}
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	wg.Go(func() {
		for i := 1; sleep(cycle); i++ {
			writeCfg([]string{"soak-a", "soak-b"}[i%2])
			sg.Process.Signal(syscall.SIGHUP)
			c.reloads.Add(1)
			note("reload")
		}
	})
	wg.Go(func() {
		for sleep(2 * cycle) {
			flaky.Kill()
			note("upstream flaky killed")
			if !sleep(cycle) {
				return
			}
			flaky = soakStartFlaky(t, tp)
			note("upstream flaky back")
			if !sleep(2 * cycle) {
				return
			}
		}
	})
	wg.Go(func() {
		for sleep(3*cycle - cycle/3) {
			tp.GW.Run("ip", "link", "set", netlab.GWLANIf, "down")
			note("lan link down")
			if !sleep(2 * time.Second) {
				tp.GW.Run("ip", "link", "set", netlab.GWLANIf, "up")
				return
			}
			tp.GW.Run("ip", "link", "set", netlab.GWLANIf, "up")
			note("lan link up")
		}
	})

	// The CSV is written as the samples come, so that a run cut short still leaves them.
	stamp := time.Now().Format("2006-01-02-150405")
	base := filepath.Join("results", fmt.Sprintf("soak-%s-%s-%s", stamp, hostTag(), soakDurName(dur)))
	csv, err := soakCreateCSV(base + ".csv")
	if err != nil {
		t.Fatalf("samples: %v", err)
	}
	defer csv.Close()
	var rows [][]float64
	tick := time.NewTicker(every)
	defer tick.Stop()
	end := time.After(dur)
	var stopped string
sampling:
	for {
		select {
		case <-end:
			break sampling
		case s := <-sig:
			stopped = s.String()
			break sampling
		case <-sgDone:
			t.Fatalf("socksgate exited during the soak; its log: %s", logPath)
		case <-tick.C:
			row, err := soakSample(tp, hc, admin, pid, &c, time.Since(started))
			if err != nil {
				t.Logf("sample at %v: %v", time.Since(started).Round(time.Second), err)
				continue
			}
			rows = append(rows, row)
			var ev string
			if v, ok := events.Load(int(time.Since(started)/every) - 1); ok {
				ev = *v.(*string)
			}
			if err := csv.add(row, ev); err != nil {
				t.Fatalf("samples: %v", err)
			}
			if len(rows)%max(1, int(time.Minute/every)) == 0 {
				t.Logf("soak %v: %s", time.Since(started).Round(time.Second), soakBrief(row))
			}
		}
	}
	cancel()
	wg.Wait()
	took := time.Since(started)
	if stopped != "" {
		t.Logf("soak: %s after %v: judging what was sampled", stopped, took.Round(time.Second))
	}
	reloadsLogged := soakCountLines(logPath, `"msg":"config reloaded"`)

	verdicts, failed := soakJudge(rows)
	if err := csv.Close(); err != nil {
		t.Fatalf("samples: %v", err)
	}
	png := ""
	if plot {
		if err := soakPlot(base, len(rows) > 0); err != nil {
			t.Errorf("gnuplot: %v", err)
		} else {
			png = filepath.Base(base + ".png")
		}
	}
	last := make([]float64, len(soakColumns))
	if len(rows) > 0 {
		last = rows[len(rows)-1]
	}
	md := soakReport(dur, took, every, cycle, verdicts, last, reloadsLogged, filepath.Base(base+".csv"), png)
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		t.Fatalf("write the summary: %v", err)
	}
	fmt.Println(md)
	t.Logf("saved %s.{csv,md%s}", base, map[bool]string{true: ",png"}[png != ""])

	if len(rows) < 9 {
		t.Fatalf("only %d samples: too few to judge a trend", len(rows))
	}
	for _, f := range failed {
		t.Errorf("%s trends up once the load is steady: %s", f.col, f.text)
	}
	// The load must have been carried, or flat series prove nothing: most new flows
	// succeeded (the faults fail some), and every kind of load made progress.
	col := soakCol
	if ok, bad := last[col("new_ok")], last[col("new_err")]; ok < 0.8*(ok+bad) {
		t.Errorf("only %v of %v new flows succeeded", ok, ok+bad)
	}
	for _, k := range []string{"xfer_ok", "udp_ok", "idle_closed"} {
		if last[col(k)] == 0 {
			t.Errorf("%s: none", k)
		}
	}
	if reloadsLogged < int(last[col("reloads")])/2 {
		t.Errorf("%d reloads sent, %d logged as done", int(last[col("reloads")]), reloadsLogged)
	}
	if n := soakCountLines(logPath, "panic"); n > 0 {
		t.Errorf("socksgate's log has %d lines with panic: %s", n, logPath)
	}
}

// soakConfig is socksgate's config for the soak, its one rule named rule (the reloads alternate
// it). Everything goes through the failover group pool: flaky (the dante that dies) first.
func soakConfig(rule, state string) string {
	return fmt.Sprintf(`log: {level: info, format: json}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
admin: 127.0.0.1:9091
transparent: {udp: true, udp_idle: 5s}
timeouts: {dial: 5s, idle: 15s, grace: 1s}
upstreams:
  - {name: flaky, url: "socks5://%s:%s"}
  - {name: dante, url: "socks5://%s:%s"}
groups:
  - {name: pool, policy: failover, upstreams: [flaky, dante], health: {probe: "%s:%s", interval: 2s, timeout: 1s, rise: 2, fall: 1}}
rules:
  - {name: %s, action: proxy, upstream: pool}
state_dir: %q
`, netlab.GWLANIf, netlab.Proxy4, soakFlakyPort, netlab.Proxy4, dantePort, netlab.WAN4, httpPort, rule, state)
}

// soakStartFlaky runs the second dante, the group's first member, the one that dies.
func soakStartFlaky(t *testing.T, tp *netlab.Topology) *netlab.Proc {
	path := writeFile(t, "flaky.conf", danteConf(soakFlakyPort))
	p := tp.Proxy.Start("danted", "-f", path, "-N", "2", "-p", path+".pid")
	benchListening(tp.GW, net.JoinHostPort(netlab.Proxy4, soakFlakyPort), 10*time.Second)
	return p
}

// soakLoad starts the load's workers; they stop when ctx ends.
func soakLoad(ctx context.Context, wg *sync.WaitGroup, tp *netlab.Topology, c *soakCounters) {
	wan := func(i int) string {
		if i%2 == 0 {
			return netlab.WAN4
		}
		return netlab.WAN6
	}
	dial := func(addr string, within time.Duration) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		return tp.LAN.Dial(dctx, "tcp", addr)
	}
	// New TCP flows at a steady rate, each its own goroutine (at most 64 at once).
	wg.Go(func() {
		sem := make(chan struct{}, 64)
		tick := time.NewTicker(time.Second / soakFlowRate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				c.newErr.Add(1) // 64 still waiting: count it as failed, keep the rate
				continue
			}
			wg.Go(func() {
				defer func() { <-sem }()
				conn, err := dial(net.JoinHostPort(wan(i), httpPort), 5*time.Second)
				if err == nil {
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					_, err = io.WriteString(conn, loadRequest)
					var b []byte
					if err == nil {
						b, err = io.ReadAll(conn)
					}
					if err == nil && !strings.HasSuffix(string(b), "ok\n") {
						err = fmt.Errorf("answer %q", b)
					}
					conn.Close()
				}
				if err != nil {
					c.newErr.Add(1)
				} else {
					c.newOK.Add(1)
				}
			})
		}
	})
	// Long transfers.
	for w := range soakTransfers {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				err := func() error {
					conn, err := dial(net.JoinHostPort(wan(i), soakStreamPort), 5*time.Second)
					if err != nil {
						return err
					}
					defer conn.Close()
					stop := context.AfterFunc(ctx, func() { conn.Close() })
					defer stop()
					conn.SetDeadline(time.Now().Add(soakStreamFor + 15*time.Second))
					n, err := io.Copy(io.Discard, conn)
					if err == nil && n != soakStreamBytes {
						err = fmt.Errorf("%d bytes of %d", n, soakStreamBytes)
					}
					return err
				}()
				switch {
				case ctx.Err() != nil:
				case err != nil:
					c.xferErr.Add(1)
					sleepCtx(ctx, time.Second)
				default:
					c.xferOK.Add(1)
				}
			}
		})
	}
	// UDP sessions coming and going.
	for w := range soakUDPClients {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				var pc net.PacketConn
				if err := tp.LAN.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":0"); return }); err != nil {
					c.udpErr.Add(1)
					sleepCtx(ctx, time.Second)
					continue
				}
				dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(wan(i)), 7000))
				buf := make([]byte, 64)
				for j := 0; j < 10 && ctx.Err() == nil; j++ {
					m := fmt.Sprintf("soak %d %d %d", w, i, j)
					pc.SetDeadline(time.Now().Add(time.Second))
					_, err := pc.WriteTo([]byte(m), dst)
					var n int
					if err == nil {
						n, _, err = pc.ReadFrom(buf)
					}
					if err != nil || string(buf[:n]) != m {
						c.udpErr.Add(1)
					} else {
						c.udpOK.Add(1)
					}
					sleepCtx(ctx, 200*time.Millisecond)
				}
				pc.Close()
				sleepCtx(ctx, time.Second)
			}
		})
	}
	// Idle flows, closed by timeouts.idle (15s).
	wg.Go(func() {
		for ctx.Err() == nil {
			wg.Go(func() {
				conn, err := dial(net.JoinHostPort(netlab.WAN4, idlePort), 5*time.Second)
				if err != nil {
					c.idleErr.Add(1)
					return
				}
				defer conn.Close()
				stop := context.AfterFunc(ctx, func() { conn.Close() })
				defer stop()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				b := []byte{'i'}
				if _, err := conn.Write(b); err != nil {
					c.idleErr.Add(1)
					return
				}
				if _, err := io.ReadFull(conn, b); err != nil {
					c.idleErr.Add(1)
					return
				}
				began := time.Now()
				conn.SetDeadline(time.Now().Add(40 * time.Second))
				_, err = conn.Read(b)
				switch {
				case ctx.Err() != nil:
				case err != nil && time.Since(began) > 10*time.Second && !isTimeout(err):
					c.idleClosed.Add(1) // ended by socksgate's idle timeout
				default:
					c.idleErr.Add(1) // too early (a fault) or never
				}
			})
			sleepCtx(ctx, 2*time.Second)
		}
	})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func waitUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cond()
}

// The stream a long transfer reads: soakStreamBytes in 16 KiB chunks, one every 20 ms
// (about 800 KB/s), then the server closes.
const (
	soakStreamFor   = 20 * time.Second
	soakChunk       = 16 << 10
	soakStreamBytes = int64(soakStreamFor/(20*time.Millisecond)) * soakChunk
)

func soakServeStream(t *testing.T, ln net.Listener) {
	go func() {
		chunk := make([]byte, soakChunk)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for sent := int64(0); sent < soakStreamBytes; sent += soakChunk {
					c.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(chunk); err != nil {
						return
					}
					<-tick.C
				}
			}()
		}
	}()
}

func soakServeUDPEcho(t *testing.T, pc net.PacketConn) {
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func soakGet(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

// soakMetric sums the series of name (any labels) in a Prometheus exposition.
func soakMetric(expo, name string) (float64, bool) {
	var sum float64
	found := false
	for _, l := range strings.Split(expo, "\n") {
		if !strings.HasPrefix(l, name) || len(l) <= len(name) || (l[len(name)] != ' ' && l[len(name)] != '{') {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// soakSample reads one row: socksgate's memory, goroutines, fds, flows and UDP sessions, the
// nftables objects of its table, the policy rules and routes of gw, gw's conntrack entries, and
// the load's counters.
func soakSample(tp *netlab.Topology, hc *http.Client, admin string, pid int, c *soakCounters, at time.Duration) ([]float64, error) {
	m, err := soakGet(hc, admin+"/metrics")
	if err != nil {
		return nil, err
	}
	v := map[string]float64{"t_s": at.Seconds(), "rss_kib": statusKiB(pid, "VmRSS"), "fds": float64(fdCount(pid))}
	for col, series := range map[string]string{"heap_inuse_kib": "go_memstats_heap_inuse_bytes", "goroutines": "go_goroutines",
		"flows_active": "socksgate_flows_active", "udp_sessions": "socksgate_udp_sessions"} {
		x, ok := soakMetric(m, series)
		if !ok && col != "flows_active" { // no live flow: no series
			return nil, fmt.Errorf("no %s in /metrics", series)
		}
		if col == "heap_inuse_kib" {
			x /= 1024
		}
		v[col] = x
	}
	n, err := soakNftObjects(tp.GW)
	if err != nil {
		return nil, err
	}
	v["nft_objects"] = float64(n)
	lines := func(args ...string) float64 {
		out, _ := tp.GW.Run(args...)
		return float64(len(strings.Split(strings.TrimSpace(out), "\n")))
	}
	v["ip_rules"] = lines("ip", "-4", "rule", "show") + lines("ip", "-6", "rule", "show")
	v["routes"] = lines("ip", "-4", "route", "show", "table", "all") + lines("ip", "-6", "route", "show", "table", "all")
	if out, err := tp.GW.Run("cat", "/proc/sys/net/netfilter/nf_conntrack_count"); err == nil {
		v["conntrack"], _ = strconv.ParseFloat(strings.TrimSpace(out), 64)
	}
	for col, ctr := range map[string]*atomic.Int64{"new_ok": &c.newOK, "new_err": &c.newErr, "xfer_ok": &c.xferOK, "xfer_err": &c.xferErr,
		"udp_ok": &c.udpOK, "udp_err": &c.udpErr, "idle_closed": &c.idleClosed, "idle_err": &c.idleErr, "reloads": &c.reloads} {
		v[col] = float64(ctr.Load())
	}
	row := make([]float64, len(soakColumns))
	for i, col := range soakColumns {
		row[i] = v[col]
	}
	return row, nil
}

// soakNftObjects counts what socksgate's table holds, as `nft -j` lists it in gw (the test
// reads; socksgate itself never runs nft): the table, its chains, rules, sets and set elements.
func soakNftObjects(gw *netlab.NS) (int, error) {
	out, err := gw.Run("nft", "-j", "list", "table", "inet", "socksgate")
	if err != nil {
		return 0, fmt.Errorf("nft list: %v: %s", err, out)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, err
	}
	n := 0
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			switch kind {
			case "table", "chain", "rule":
				n++
			case "set":
				n++
				var s struct {
					Elem []json.RawMessage `json:"elem"`
				}
				json.Unmarshal(raw, &s)
				n += len(s.Elem)
			}
		}
	}
	return n, nil
}

func soakCol(name string) int {
	for i, c := range soakColumns {
		if c == name {
			return i
		}
	}
	panic("soak: no column " + name)
}

func soakBrief(row []float64) string {
	col := soakCol
	return fmt.Sprintf("RSS %.1f MiB, heap %.1f MiB, %v goroutines, %v fds, %v flows, %v UDP sessions, %v nft objects, %v rules, %v routes; new flows %v ok %v failed",
		row[col("rss_kib")]/1024, row[col("heap_inuse_kib")]/1024, row[col("goroutines")], row[col("fds")], row[col("flows_active")],
		row[col("udp_sessions")], row[col("nft_objects")], row[col("ip_rules")], row[col("routes")], row[col("new_ok")], row[col("new_err")])
}

type soakVerdict struct {
	col                  string
	first, second, third float64 // medians of the thirds
	limit, slopePerHour  float64
	min, max             float64 // over the steady part (the last two thirds)
	ok                   bool
	text                 string
}

// soakJudge applies the trend test to every judged series.
func soakJudge(rows [][]float64) (all, failed []soakVerdict) {
	if len(rows) < 3 {
		return nil, nil
	}
	k := len(rows) / 3
	thirds := [][][]float64{rows[:k], rows[k : 2*k], rows[2*k:]}
	for _, s := range soakSeries {
		i := soakCol(s.col)
		med := func(rs [][]float64) float64 {
			v := make([]float64, len(rs))
			for j, r := range rs {
				v[j] = r[i]
			}
			return median(v)
		}
		v := soakVerdict{col: s.col, first: med(thirds[0]), second: med(thirds[1]), third: med(thirds[2]), min: math.Inf(1), max: math.Inf(-1)}
		v.limit = v.second*s.factor + s.slack
		// Least squares over the steady part.
		var n, sx, sy, sxx, sxy float64
		for _, r := range rows[k:] {
			x, y := r[0]/3600, r[i]
			n, sx, sy, sxx, sxy = n+1, sx+x, sy+y, sxx+x*x, sxy+x*y
			v.min, v.max = math.Min(v.min, y), math.Max(v.max, y)
		}
		if d := n*sxx - sx*sx; d > 0 {
			v.slopePerHour = (n*sxy - sx*sy) / d
		}
		v.ok = v.third <= v.limit
		v.text = fmt.Sprintf("median %s in the last third, %s in the second (limit %s)", num(v.third, 1), num(v.second, 1), num(v.limit, 1))
		all = append(all, v)
		if !v.ok {
			failed = append(failed, v)
		}
	}
	return all, failed
}

// soakCSV is the samples' file, a row written (and flushed) per sample; the last column is
// what the faults did in the sample period the row ends.
type soakCSV struct {
	f *os.File
	w *bufio.Writer
}

func soakCreateCSV(path string) (*soakCSV, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	c := &soakCSV{f: f, w: bufio.NewWriter(f)}
	fmt.Fprintln(c.w, strings.Join(soakColumns, ",")+",events")
	return c, c.w.Flush()
}

func (c *soakCSV) add(row []float64, events string) error {
	for i, x := range row {
		if i > 0 {
			c.w.WriteByte(',')
		}
		c.w.WriteString(strconv.FormatFloat(x, 'f', -1, 64))
	}
	fmt.Fprintf(c.w, ",%q\n", events)
	return c.w.Flush()
}

func (c *soakCSV) Close() error {
	if c.f == nil {
		return nil
	}
	err := c.w.Flush()
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	c.f = nil
	return err
}

// soakPlot draws every judged series (and the new flows' rate) over time from the CSV, with the
// thirds marked, into base.png.
func soakPlot(base string, any bool) error {
	if !any {
		return nil
	}
	csv, png := base+".csv", base+".png"
	var b strings.Builder
	fmt.Fprintf(&b, "set datafile separator ','\nset datafile columnheaders\nset terminal pngcairo size 1800,1200 font ',10'\nset output %q\n", png)
	fmt.Fprintf(&b, "stats %q using 1 nooutput\ntmax = STATS_max/60.0\n", csv)
	fmt.Fprintf(&b, "set multiplot layout 4,3 title %q\nset xlabel 'minutes'\nset key off\nset grid\n", "socksgate soak: "+filepath.Base(base))
	b.WriteString("set arrow 1 from tmax/3, graph 0 to tmax/3, graph 1 nohead dt 2 lc rgb 'gray'\n")
	b.WriteString("set arrow 2 from 2*tmax/3, graph 0 to 2*tmax/3, graph 1 nohead dt 2 lc rgb 'gray'\n")
	titles := map[string]string{"rss_kib": "RSS (MiB)", "heap_inuse_kib": "Go heap in use (MiB)", "goroutines": "goroutines", "fds": "open files",
		"flows_active": "live TCP flows", "udp_sessions": "UDP sessions", "nft_objects": "nftables objects (socksgate table)",
		"ip_rules": "policy rules (both families)", "routes": "routes (all tables, both families)", "conntrack": "conntrack entries (gw)"}
	for _, col := range []string{"rss_kib", "heap_inuse_kib", "goroutines", "fds", "flows_active", "udp_sessions", "nft_objects", "ip_rules", "routes", "conntrack"} {
		expr := fmt.Sprintf("column(%d)", soakCol(col)+1)
		if strings.HasSuffix(col, "_kib") {
			expr += "/1024.0"
		}
		fmt.Fprintf(&b, "set title %q\nplot %q using ($1/60):(%s) with lines lw 1.5\n", titles[col], csv, expr)
	}
	// Rates: flows a second between samples.
	ok, bad := soakCol("new_ok")+1, soakCol("new_err")+1
	fmt.Fprintf(&b, "set title 'new TCP flows a second (ok, failed)'\nset key top right\n"+
		"plot %q using ($1/60):(d=column(%d)-p1, p1=column(%d), dt=$1-t1, t1=$1, dt>0 ? d/dt : NaN) with lines title 'ok', "+
		"'' using ($1/60):(e=column(%d)-p2, p2=column(%d), dt2=$1-t2, t2=$1, dt2>0 ? e/dt2 : NaN) with lines title 'failed'\n", csv, ok, ok, bad, bad)
	b.WriteString("unset multiplot\n")
	script := base + ".gp"
	if err := os.WriteFile(script, []byte("p1=0\np2=0\nt1=0\nt2=0\n"+b.String()), 0o644); err != nil {
		return err
	}
	defer os.Remove(script)
	if out, err := exec.Command("gnuplot", script).CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func soakCountLines(path, substr string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	return n
}

func soakDurName(d time.Duration) string {
	if d >= time.Hour {
		return fmt.Sprintf("%.1fh", d.Hours())
	}
	return fmt.Sprintf("%dm", int(d.Round(time.Minute).Minutes()))
}

// soakReport is the markdown summary.
func soakReport(asked, took, every, cycle time.Duration, vs []soakVerdict, last []float64, reloadsLogged int, csv, png string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# socksgate soak, %s\n\n", time.Now().Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, "%s, %s, %s; socksgate %s. Asked %v, ran %v; a sample every %v; cycle %v (a reload each cycle, "+
		"the failover group's first upstream killed every 4 cycles for one, gw's LAN link down 2 s every 3).\n\n",
		cpuModel(), kernel(), goVersion(), soakCommit(), asked, took.Round(time.Second), every, cycle)
	col := soakCol
	fmt.Fprintf(&b, "Load carried: %v new TCP flows (%v failed), %v long transfers (%v failed), %v UDP exchanges (%v failed), "+
		"%v idle flows closed by timeouts.idle (%v ended otherwise), %v reloads (%d logged as done).\n\n",
		last[col("new_ok")], last[col("new_err")], last[col("xfer_ok")], last[col("xfer_err")], last[col("udp_ok")], last[col("udp_err")],
		last[col("idle_closed")], last[col("idle_err")], last[col("reloads")], reloadsLogged)
	b.WriteString("The trend test: the median of the last third of the samples against the second's (the first is warm-up), " +
		"limit = second × factor + slack; the slope is least squares over the last two thirds, reported only.\n\n")
	b.WriteString("| series | median, 1st third | 2nd third | last third | limit | min–max (steady) | slope per hour | verdict |\n|---|---|---|---|---|---|---|---|\n")
	for _, v := range vs {
		verdict := "flat"
		if !v.ok {
			verdict = "**grows**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s–%s | %+.1f | %s |\n", v.col, num(v.first, 1), num(v.second, 1), num(v.third, 1),
			num(v.limit, 1), num(v.min, 1), num(v.max, 1), v.slopePerHour, verdict)
	}
	fmt.Fprintf(&b, "\nSamples: [%s](%s)", csv, csv)
	if png != "" {
		fmt.Fprintf(&b, "; chart: [%s](%s)\n\n![soak](%s)\n", png, png, png)
	}
	b.WriteString("\nReproduce: `sudo make soak SOAK_TIME=" + soakDurName(asked) + "`\n")
	return b.String()
}

func soakCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
