//go:build linux

package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/tests/netlab"
)

// The bench test binary doubles as the load generator run inside the lan namespace: TestMain
// dispatches on BENCH_HELPER before any test runs.
//
//	BENCH_HELPER=load ADDR SOCKS_URL|- CONCURRENCY SECONDS   short requests, Connection: close
//	BENCH_HELPER=idle ADDR SOCKS_URL|- N SECONDS [CONC]      N connections, one byte each way, held;
//	                                                         CONC opening at a time (default 64)
func TestMain(m *testing.M) {
	switch os.Getenv("BENCH_HELPER") {
	case "":
		os.Exit(m.Run())
	case "load":
		os.Exit(helperLoad(os.Args[1:]))
	case "idle":
		os.Exit(helperIdle(os.Args[1:]))
	case "udp":
		os.Exit(helperUDP(os.Args[1:]))
	default:
		fmt.Fprintln(os.Stderr, "unknown BENCH_HELPER")
		os.Exit(2)
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func helperDialer(socksURL string) (dialFunc, error) {
	if socksURL == "-" {
		d := &net.Dialer{}
		return d.DialContext, nil
	}
	u, err := url.Parse(socksURL)
	if err != nil {
		return nil, err
	}
	d, err := socksclient.FromURL(u)
	if err != nil {
		return nil, err
	}
	return d.DialContext, nil
}

// The Host is the server's address: socksgate sniffs it and sends it to the upstream as the
// destination, and dante must be able to reach it.
const loadRequest = "GET / HTTP/1.1\r\nHost: " + netlab.WAN4 + "\r\nConnection: close\r\n\r\n"

// helperLoad runs CONCURRENCY clients, each doing connect + request + read-to-close in a loop
// for SECONDS, and prints the flow count and latency percentiles (connect included).
func helperLoad(args []string) int {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "load: ADDR SOCKS CONC SECONDS")
		return 2
	}
	dial, err := helperDialer(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	conc, _ := strconv.Atoi(args[2])
	secs, _ := strconv.ParseFloat(args[3], 64)
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	var mu sync.Mutex
	var lat []time.Duration
	var errs int
	var loadErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			var mine []time.Duration
			var bad int
			var firstErr error
			for time.Now().Before(deadline) {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := dial(ctx, "tcp", args[0])
				cancel()
				if err != nil {
					bad++
					firstErr = cmp.Or(firstErr, err)
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = io.WriteString(c, loadRequest)
				var n int64
				if err == nil {
					n, err = io.Copy(io.Discard, c)
				}
				c.Close()
				if err != nil || n == 0 {
					bad++
					firstErr = cmp.Or(firstErr, fmt.Errorf("read %d bytes: %v", n, err))
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			if firstErr != nil && loadErr == nil {
				loadErr = firstErr
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	fmt.Printf("result flows=%d errors=%d secs=%.3f p50=%.3f p99=%.3f first_error=%v\n", len(lat), errs, el, pct(0.50), pct(0.99), loadErr)
	return 0
}

// helperIdle opens N connections (one byte each way, so every hop is established and has
// carried data), prints "ready", and holds them until killed. The opening has a deadline for
// all of them: a gateway that stops accepting (out of descriptors, at its connection cap)
// leaves connections hanging in its listen queue, and N of those each waiting for its own
// timeout would take hours. What is not open by then counts as failed, by kind of failure.
func helperIdle(args []string) int {
	if len(args) != 4 && len(args) != 5 {
		fmt.Fprintln(os.Stderr, "idle: ADDR SOCKS N SECONDS [CONC]")
		return 2
	}
	conc := 64
	if len(args) == 5 {
		conc, _ = strconv.Atoi(args[4])
	}
	dial, err := helperDialer(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	n, _ := strconv.Atoi(args[2])
	secs, _ := strconv.Atoi(args[3])
	all, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
	defer cancel()
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	kinds := map[string]int{}
	var first error
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
	began := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(all, 20*time.Second)
			defer cancel()
			c, err := dial(ctx, "tcp", args[0])
			if err == nil {
				dl, _ := ctx.Deadline()
				c.SetDeadline(dl)
				if _, err = c.Write([]byte{'x'}); err == nil {
					_, err = io.ReadFull(c, make([]byte, 1))
				}
				c.SetDeadline(time.Time{})
			}
			if err != nil {
				if c != nil {
					c.Close()
				}
				mu.Lock()
				kinds[errKind(err)]++
				first = cmp.Or(first, err)
				mu.Unlock()
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	bad := 0
	var ks []string
	for k, v := range kinds {
		bad += v
		ks = append(ks, fmt.Sprintf("%s:%d", k, v))
	}
	slices.Sort(ks)
	if len(ks) == 0 {
		ks = []string{"-"}
	}
	fmt.Printf("ready held=%d errors=%d kinds=%s opened_ms=%d first_error=%v\n", n-bad, bad, strings.Join(ks, ","),
		time.Since(began).Milliseconds(), first)
	select {}
}

// errKind names a failed connection's error in one word.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}
