//go:build linux

package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/tests/netlab"
)

// hardeningSoakSample is one reading of socksgate's resources during the soak.
type hardeningSoakSample struct {
	at              time.Duration
	rssKiB, fds     int
	goroutines      int
	ops, errs       int64
	udpOps, udpErrs int64
}

// SOAK=1: minutes of mixed load (transparent TCP through dante, transparent UDP through dante's
// UDP ASSOCIATE, explicit HTTP and SOCKS5 clients, short and long-lived flows); socksgate's RSS
// and fd count are flat over the run and its fds and goroutines return to their baseline once
// the load stops. SOAK_DURATION sets the length (default 3m).
func TestHardeningSoakMixedLoad(t *testing.T) {
	if os.Getenv("SOAK") == "" {
		t.Skip("soak: not run by default; SOAK=1 runs it (SOAK_DURATION=3m by default)")
	}
	dur := 3 * time.Minute
	if s := os.Getenv("SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		dur = d
	}
	hardeningRaiseNofile(t, 4000)
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	hardeningServeEcho(t, tp.WAN, "[::]:7000")
	udpEcho(t, tp, 7000)
	startDante(t, tp, danteOptions{})
	// The shipped build (no race detector, whose shadow memory grows with every allocation and
	// would hide the daemon's own RSS trend).
	cfg := writeFile(t, "socksgate.yaml", withTestState(t, fmt.Sprintf(`log: {level: info}
lan: {interfaces: [%s]}
listen: {http: ["lan:8080"], socks: ["lan:1080"]}
transparent: {sniff: {enabled: false}, udp: true, udp_idle: 5s}
admin: %s
timeouts: {dial: 5s, idle: 30s, grace: 1s}
upstreams:
  - {name: main, url: "socks5://%s:1080"}
`, netlab.GWLANIf, hardeningAdmin, netlab.Proxy4)))
	gw := tp.GW.Start(opsShippedBinary(t), "run", "-log-format", "json", "-c", cfg)
	if _, ok := waitLog(gw, 15*time.Second, msg("socksgate ready")); !ok {
		t.Fatalf("not ready:\n%s", gw.Output())
	}
	pid := gw.Cmd.Process.Pid
	fds0, gor0 := hardeningCounts(t, tp.GW, pid)

	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var ops, errs, udpOps, udpErrs atomic.Int64
	var firstErr atomic.Value
	fail := func(what string, err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", what, err))
	}
	var wg sync.WaitGroup
	worker := func(n int, fn func(i int) error, what string) {
		for w := range n {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					if err := fn(w*1_000_000 + i); err != nil && ctx.Err() == nil {
						fail(what, err)
						time.Sleep(100 * time.Millisecond)
					} else {
						ops.Add(1)
					}
				}
			})
		}
	}
	echoAddr := func(i int) string {
		if i%2 == 0 {
			return net.JoinHostPort(netlab.WAN4, "7000")
		}
		return net.JoinHostPort(netlab.WAN6, "7000")
	}
	// Short transparent TCP flows, both families.
	worker(6, func(i int) error {
		cs, err := hardeningDialMany(tp.LAN, echoAddr(i), "", 1)
		if err != nil {
			return err
		}
		defer cs[0].Close()
		if failed, first := hardeningEchoCheckWithin(cs, 5*time.Second); failed > 0 {
			return first
		}
		return nil
	}, "transparent tcp")
	// Long-lived transparent flows that talk now and then, replaced every 100 exchanges.
	worker(8, func(i int) error {
		cs, err := hardeningDialMany(tp.LAN, echoAddr(i), "", 1)
		if err != nil {
			return err
		}
		defer cs[0].Close()
		for range 100 {
			if ctx.Err() != nil {
				return nil
			}
			if failed, first := hardeningEchoCheckWithin(cs, 5*time.Second); failed > 0 {
				return first
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}, "long-lived tcp")
	// Explicit HTTP proxy clients.
	proxyURL, _ := url.Parse("http://" + net.JoinHostPort(netlab.GWLAN4, "8080"))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(proxyURL), DialContext: tp.LAN.Dial, MaxIdleConnsPerHost: 2,
	}}
	worker(2, func(i int) error {
		resp, err := hc.Get(urlFor(netlab.WAN4, "/"))
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && string(b) != pageBody {
			err = fmt.Errorf("body %q", b)
		}
		return err
	}, "explicit http")
	// Explicit SOCKS5 clients.
	sd := &socksclient.Dialer{Address: net.JoinHostPort(netlab.GWLAN4, "1080"), ProxyDial: tp.LAN.Dial}
	worker(2, func(i int) error {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		c, err := sd.DialContext(dctx, "tcp", net.JoinHostPort(netlab.WAN4, "80"))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", netlab.WAN4)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil && string(b) != pageBody {
			err = fmt.Errorf("body %q", b)
		}
		return err
	}, "explicit socks5")
	// Transparent UDP: each client socket lives for 50 exchanges, so sessions come and go.
	for w := range 4 {
		wg.Go(func() {
			dst := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7000)
			if w%2 == 1 {
				dst = netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN6), 7000)
			}
			for i := 0; ctx.Err() == nil; i++ {
				pc := tp.LAN.ListenPacket("udp", ":0")
				for j := 0; j < 50 && ctx.Err() == nil; j++ {
					msg := fmt.Sprintf("udp-%d-%d-%d", w, i, j)
					got, _, err := udpExchange(pc, dst, msg, 3, time.Second)
					if err != nil || got != msg {
						udpErrs.Add(1)
					} else {
						udpOps.Add(1)
					}
					time.Sleep(20 * time.Millisecond)
				}
				pc.Close()
			}
		})
	}

	var samples []hardeningSoakSample
	start := time.Now()
	tick := time.NewTicker(min(15*time.Second, dur/6))
	defer tick.Stop()
sampling:
	for {
		select {
		case <-ctx.Done():
			break sampling
		case <-tick.C:
			fds, gor := hardeningCounts(t, tp.GW, pid)
			s := hardeningSoakSample{at: time.Since(start).Round(time.Second), rssKiB: hardeningRSS(t, pid), fds: fds, goroutines: gor,
				ops: ops.Load(), errs: errs.Load(), udpOps: udpOps.Load(), udpErrs: udpErrs.Load()}
			samples = append(samples, s)
			t.Logf("soak %v: VmRSS %d KiB, fds %d, goroutines %d, tcp/explicit ops %d (errors %d), udp exchanges %d (lost %d)",
				s.at, s.rssKiB, s.fds, s.goroutines, s.ops, s.errs, s.udpOps, s.udpErrs)
		}
	}
	wg.Wait()
	hc.CloseIdleConnections()
	t.Logf("soak over %v: %d TCP/explicit operations (%d errors), %d UDP exchanges (%d lost)", dur, ops.Load(), errs.Load(), udpOps.Load(), udpErrs.Load())
	if e := errs.Load(); e*1000 > ops.Load() {
		t.Errorf("%d of %d operations failed (first: %v)", e, ops.Load(), firstErr.Load())
	}
	if l := udpErrs.Load(); l*100 > udpOps.Load() {
		t.Errorf("%d of %d UDP exchanges lost", l, udpOps.Load())
	}
	if len(samples) >= 3 {
		// Flat: the last third of the run holds no more than the first sample after warm-up
		// plus a margin for the allocator.
		ref := samples[1]
		last := samples[len(samples)-1]
		t.Logf("VmRSS %d KiB at %v, %d KiB at %v; fds %d then %d", ref.rssKiB, ref.at, last.rssKiB, last.at, ref.fds, last.fds)
		if last.rssKiB > ref.rssKiB*5/4+8*1024 {
			t.Errorf("RSS grew from %d KiB to %d KiB over the soak", ref.rssKiB, last.rssKiB)
		}
		if last.fds > ref.fds+40 {
			t.Errorf("fds grew from %d to %d over the soak", ref.fds, last.fds)
		}
	}
	// UDP sessions expire after udp_idle (5s); then everything is back to the baseline.
	hardeningWaitBaseline(t, tp.GW, pid, fds0, gor0, 20*time.Second, "after the soak")
	if strings.Contains(gw.Output(), "too many open files") {
		t.Errorf("socksgate ran out of fds during the soak")
	}
	hardeningNoPanic(t, gw)
}
