//go:build linux

package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/tests/netlab"
)

// hardeningAdmin is the admin endpoint the hardening configs open inside gw.
const hardeningAdmin = "127.0.0.1:9091"

// hardeningRaiseNofile lifts this test process's soft RLIMIT_NOFILE to the hard limit, and skips
// when even that is below need: the load tests hold both ends of thousands of connections.
func hardeningRaiseNofile(t testing.TB, need uint64) {
	t.Helper()
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	if r.Cur < r.Max {
		old := r
		r.Cur = r.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
			t.Fatalf("raise RLIMIT_NOFILE: %v", err)
		}
		t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
	}
	if r.Cur < need {
		t.Skipf("hardening: needs %d open files in the test process, the hard limit is %d", need, r.Max)
	}
}

// hardeningFDs is the number of open descriptors of pid.
func hardeningFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read fds of %d: %v", pid, err)
	}
	return len(ents)
}

// hardeningCPU is the user+system CPU time pid has used so far (/proc/PID/stat, in clock ticks
// of 1/100 s, the value every Linux here reports for sysconf(_SC_CLK_TCK)).
func hardeningCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces; the fields after its closing paren are fixed.
	rest := string(b[bytes.LastIndexByte(b, ')')+2:])
	f := strings.Fields(rest) // f[0] is field 3 (state); utime is field 14, stime 15
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// hardeningRSS is pid's VmRSS in KiB.
func hardeningRSS(t *testing.T, pid int) int {
	t.Helper()
	kb, _ := strconv.Atoi(strings.Fields(opsProcStatus(t, pid, "VmRSS"))[0])
	return kb
}

// hardeningMetrics fetches socksgate's /metrics from inside gw.
func hardeningMetrics(t testing.TB, gw *netlab.NS) string {
	t.Helper()
	var body string
	var err error
	for range 3 {
		if body, err = opsGet(gw, "http://"+hardeningAdmin+"/metrics"); err == nil {
			return body
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("fetch metrics: %v", err)
	return ""
}

// hardeningMetricSum sums every series of a metric family (all label sets).
func hardeningMetricSum(exposition, name string) float64 {
	var sum float64
	for _, l := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		if i := strings.LastIndexByte(l, ' '); i > 0 {
			if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// hardeningCounts is socksgate's open fds and goroutines, the second read from the admin
// endpoint; the fetch's own connection is closed before the fds are counted.
func hardeningCounts(t testing.TB, gw *netlab.NS, pid int) (fds, goroutines int) {
	t.Helper()
	g := int(opsMetric(hardeningMetrics(t, gw), "go_goroutines"))
	time.Sleep(50 * time.Millisecond)
	return hardeningFDs(t, pid), g
}

// hardeningWaitBaseline waits until socksgate's fd and goroutine counts are back within slack of
// the baseline, and fails with the last counts when they are not.
func hardeningWaitBaseline(t testing.TB, gw *netlab.NS, pid, fds0, gor0 int, within time.Duration, what string) {
	t.Helper()
	var fds, gor int
	ok := waitFor(within, func() bool {
		fds, gor = hardeningCounts(t, gw, pid)
		return fds <= fds0+1 && gor <= gor0+4
	})
	t.Logf("%s: fds %d (baseline %d), goroutines %d (baseline %d)", what, fds, fds0, gor, gor0)
	if !ok {
		t.Fatalf("%s: counts did not return to baseline within %v: fds %d (baseline %d), goroutines %d (baseline %d)",
			what, within, fds, fds0, gor, gor0)
	}
}

// hardeningEcho serves TCP echo on addr inside ns and counts the connections it holds open.
type hardeningEcho struct {
	open  atomic.Int64
	total atomic.Int64
}

func hardeningServeEcho(t testing.TB, ns *netlab.NS, addr string) *hardeningEcho {
	t.Helper()
	e := &hardeningEcho{}
	ln := ns.Listen("tcp", addr)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			e.open.Add(1)
			e.total.Add(1)
			go func() {
				defer e.open.Add(-1)
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return e
}

// hardeningServeStream serves, on addr inside ns, an endless stream of bytes to every client
// (and discards what they send), for mid-transfer faults.
func hardeningServeStream(t testing.TB, ns *netlab.NS, addr string) {
	t.Helper()
	ln := ns.Listen("tcp", addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
			go func() {
				defer c.Close()
				buf := bytes.Repeat([]byte("stream "), 1024)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
	}()
}

// hardeningDialMany opens n TCP connections to addr from inside ns, from local (an address of
// ns, or "" for the default source), in one pass on one namespace thread.
func hardeningDialMany(ns *netlab.NS, addr, local string, n int) ([]net.Conn, error) {
	var conns []net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	return conns, nil
}

// hardeningEchoCheck writes a payload unique to (tag, i) on each connection and reads it back,
// with bounded concurrency; it returns how many failed and the first failure.
func hardeningEchoCheck(conns []net.Conn, tag string) (failed int, first error) {
	return hardeningEcho2(conns, tag, 20*time.Second)
}

// hardeningEchoCheckWithin is hardeningEchoCheck with a bound on each exchange.
func hardeningEchoCheckWithin(conns []net.Conn, within time.Duration) (failed int, first error) {
	return hardeningEcho2(conns, "within", within)
}

func hardeningEcho2(conns []net.Conn, tag string, within time.Duration) (failed int, first error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for i, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			msg := fmt.Sprintf("%s-%d;", tag, i)
			c.SetDeadline(time.Now().Add(within))
			defer c.SetDeadline(time.Time{})
			got := make([]byte, len(msg))
			_, err := c.Write([]byte(msg))
			if err == nil {
				_, err = io.ReadFull(c, got)
			}
			if err == nil && string(got) != msg {
				err = fmt.Errorf("got %q, want %q", got, msg)
			}
			if err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = fmt.Errorf("conn %d: %w", i, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, first
}

// hardeningClosed reports how c ended when it is read until within: "eof", "reset", "timeout"
// (still open), or "data" when bytes arrived before the end (they are discarded, up to 1 MiB).
func hardeningClosed(c net.Conn, within time.Duration) string {
	c.SetReadDeadline(time.Now().Add(within))
	n, err := io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	var ne net.Error
	switch {
	case err == nil && n == 1<<20:
		return "data"
	case err == nil:
		return "eof"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return "error: " + err.Error()
}

// hardeningNoPanic fails when socksgate's output shows a panic or a data race.
func hardeningNoPanic(t testing.TB, p *netlab.Proc) {
	t.Helper()
	out := p.Output()
	for _, bad := range []string{"panic", "DATA RACE", "fatal error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("socksgate's output contains %q:\n%s", bad, out)
		}
	}
}

// hardeningConfig is a transparent config (capture on gw's LAN interface, explicit ports off,
// sniffing off, the admin endpoint on) with upstream "main" at upstreamURL; transparent is added
// to the transparent section (", udp: true"), extra appended.
func hardeningConfig(upstreamURL, transparent, extra string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
transparent: {sniff: {enabled: false}%s}
admin: %s
upstreams:
  - {name: main, url: %q}
%s`, netlab.GWLANIf, transparent, hardeningAdmin, upstreamURL, extra)
}

// hardeningCurlTimed runs curl in ns and returns how long it took.
func hardeningCurlTimed(ns *netlab.NS, args ...string) (string, time.Duration, error) {
	start := time.Now()
	out, err := curl(ns, args...)
	return out, time.Since(start), err
}

// hardeningCtx is a context for one bounded step of a test.
func hardeningCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
