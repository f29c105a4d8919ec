//go:build linux

package sockmap

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// meminfo returns a /proc/meminfo field in bytes.
func meminfo(t testing.TB, field string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	t.Fatalf("no %s in /proc/meminfo", field)
	return 0
}

// tcpMem returns the memory charged to TCP sockets, from /proc/net/sockstat ("TCP: ... mem N" pages).
func tcpMem(t testing.TB) int64 {
	f, err := os.Open("/proc/net/sockstat")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 0 && fs[0] == "TCP:" {
			for i := 1; i+1 < len(fs); i++ {
				if fs[i] == "mem" {
					n, _ := strconv.ParseInt(fs[i+1], 10, 64)
					return n * int64(os.Getpagesize())
				}
			}
		}
	}
	t.Fatal("no TCP mem in /proc/net/sockstat")
	return 0
}

// TestFastSenderSlowSinkStaysBounded sends as fast as loopback allows into a reader that takes
// 10 MB/s, for 5 s. Without flow control sockmap queues everything the sender sends (gigabytes); the
// kernel memory held for the flow must stay under 100 MiB.
func TestFastSenderSlowSinkStaysBounded(t *testing.T) {
	rl := relayForTest(t)
	unbounded := os.Getenv("SOCKMAP_UNBOUNDED") != "" // the control: what sockmap does without the bound
	if unbounded {
		old := rl.limit
		rl.limit = 0
		defer func() { rl.limit = old }()
	}
	run := newRunner(t)
	tp := newTopology(t)
	f, _ := addFlow(t, rl, run, tp)

	const mib = 1 << 20
	dur := 5 * time.Second
	if unbounded {
		dur = time.Second
	}
	slab0, tcp0, avail0 := meminfo(t, "Slab"), tcpMem(t), meminfo(t, "MemAvailable")

	stop := time.Now().Add(dur)
	sent := make(chan int64, 1)
	go func() {
		buf := make([]byte, 256<<10)
		var n int64
		tp.client.SetWriteDeadline(stop)
		for {
			m, err := tp.client.Write(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		sent <- n
	}()
	got := make(chan int64, 1)
	go func() { // 10 MB/s: 100 KB every 10 ms
		buf := make([]byte, 100_000)
		var n int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			tp.server.SetReadDeadline(time.Now().Add(time.Second))
			m, err := tp.server.Read(buf)
			n += int64(m)
			if err != nil || time.Now().After(stop) {
				break
			}
		}
		got <- n
	}()

	var peakSlab, peakTCP, peakHeld, peakAvailDrop int64
	for time.Now().Before(stop) {
		time.Sleep(50 * time.Millisecond)
		peakSlab = max(peakSlab, meminfo(t, "Slab")-slab0)
		peakTCP = max(peakTCP, tcpMem(t)-tcp0)
		peakAvailDrop = max(peakAvailDrop, avail0-meminfo(t, "MemAvailable"))
		backlog, err := f.backlog(0)
		if err != nil {
			t.Fatal(err)
		}
		outq, _ := unix.IoctlGetInt(f.fd[1], unix.SIOCOUTQ)
		inq, _ := unix.IoctlGetInt(f.fd[0], unix.SIOCINQ)
		peakHeld = max(peakHeld, backlog+int64(outq)+int64(inq))
	}
	ns, nr := <-sent, <-got
	t.Logf("sent %d MiB, sink read %d MiB in %v", ns/mib, nr/mib, dur)
	t.Logf("peak: redirect backlog + b's send queue + a's receive queue %.1f MiB; Slab +%.1f MiB; TCP mem +%.1f MiB; MemAvailable -%.1f MiB",
		float64(peakHeld)/mib, float64(peakSlab)/mib, float64(peakTCP)/mib, float64(peakAvailDrop)/mib)
	logSlots(t, f)
	if unbounded {
		return
	}
	for name, v := range map[string]int64{"bytes held for the flow": peakHeld, "Slab": peakSlab, "TCP mem": peakTCP} {
		if v >= 100*mib {
			t.Errorf("%s grew by %d MiB, want < 100", name, v/mib)
		}
	}
}
