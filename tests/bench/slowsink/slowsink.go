//go:build linux

// Package slowsink measures what a relay holds while its sender is far faster than its
// receiver: one TCP flow written as fast as the path takes it, into a sink that reads at a
// fixed rate, with the gateway's RSS and the machine's kernel memory sampled along the way. The
// end-to-end memory test (tests/slowsink_test.go) and `make bench` both use it.
//
// Three figures bound the flow's memory from different sides:
//   - the gateway's VmRSS (/proc/PID/status): what a userspace relay buffers;
//   - the kernel memory of the lab's TCP sockets: for every TCP socket in the given network
//     namespaces, its receive queue, send queue and forward allocation (`ss -m`'s skmem r, w
//     and f), summed. This is what the machine-wide counter (/proc/net/sockstat "TCP: ... mem N",
//     in pages) counts, but for the lab alone: that counter is global, not per namespace
//     (sockstat's inuse and tw are per namespace, mem is not), so every other TCP user of the
//     machine moves it too. It is sampled as well, for the record;
//   - bytes in flight, written by the sender and not yet read by the sink: everything the whole
//     path holds, socket queues and relay buffers alike, including queues no counter charges
//     (a sockmap redirect's backlog). It is exact and nobody else's traffic changes it.
//
// Slab (/proc/meminfo) is sampled too, for the record.
package slowsink

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sink accepts connections and reads each no faster than a fixed rate.
type Sink struct {
	rate     int64 // bytes per second, per connection
	received atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// Serve runs a sink on ln, reading each connection at bytesPerSec, until ln is closed.
func Serve(ln net.Listener, bytesPerSec int64) *Sink {
	s := &Sink{rate: bytesPerSec, conns: map[net.Conn]struct{}{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			go s.read(c)
		}
	}()
	return s
}

func (s *Sink) read(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 64<<10)
	start := time.Now()
	var got int64
	for {
		// Pace: the next read waits until the bytes read so far are due at the rate.
		if wait := time.Until(start.Add(time.Duration(got * int64(time.Second) / s.rate))); wait > 0 {
			time.Sleep(wait)
		}
		n, err := c.Read(buf)
		got += int64(n)
		s.received.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// Received is how many bytes the sink has read, over all its connections.
func (s *Sink) Received() int64 { return s.received.Load() }

// CloseAll drops every connection the sink holds, so that what the previous flow left in
// flight does not drain into the next measurement.
func (s *Sink) CloseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Sample is one reading. RSS, TCP memory and slab are in KiB.
type Sample struct {
	RSSKiB    int64 // the gateway's VmRSS
	LabTCPKiB int64 // the lab's TCP sockets' queues and reservations
	TCPMemKiB int64 // the machine's TCP memory (sockstat)
	SlabKiB   int64
	InFlight  int64 // bytes written and not yet read by the sink
}

// Probe says what to watch and for how long.
type Probe struct {
	PID        int      // the gateway process whose VmRSS is read; 0: none
	Namespaces []string // network namespaces (as `ip netns` names them) whose TCP sockets are summed
	Duration   time.Duration
	Every      time.Duration
}

// Result is one run: totals, the readings at the start, and the largest growth over them seen
// in any sample (for InFlight, the largest value).
type Result struct {
	Sent, Received int64
	Took           time.Duration
	Base, Peak     Sample
	Samples        int
}

// SinkRate is the rate the sink actually read at, in MB/s.
func (r Result) SinkRate() float64 { return float64(r.Received) / r.Took.Seconds() / 1e6 }

func (r Result) String() string {
	return fmt.Sprintf("sent %.1f MB, sink read %.1f MB (%.1f MB/s) in %v; peaks over %d samples: in flight %.1f MiB, gateway RSS +%.1f MiB (from %.1f), lab TCP sockets +%.1f MiB, machine TCP memory +%.1f MiB (from %.1f), slab +%.1f MiB",
		float64(r.Sent)/1e6, float64(r.Received)/1e6, r.SinkRate(), r.Took.Round(time.Millisecond), r.Samples,
		mib(r.Peak.InFlight), kib2mib(r.Peak.RSSKiB), kib2mib(r.Base.RSSKiB), kib2mib(r.Peak.LabTCPKiB),
		kib2mib(r.Peak.TCPMemKiB), kib2mib(r.Base.TCPMemKiB), kib2mib(r.Peak.SlabKiB))
}

func mib(b int64) float64     { return float64(b) / (1 << 20) }
func kib2mib(k int64) float64 { return float64(k) / 1024 }

// Run writes to conn as fast as it takes data for p.Duration, while sink reads at its rate, and
// takes a Sample every p.Every. At the end it closes conn and the sink's connections.
func Run(conn net.Conn, sink *Sink, p Probe) Result {
	r0 := sink.Received()
	var sent atomic.Int64
	read := func() Sample {
		return Sample{RSSKiB: statusKiB(p.PID, "VmRSS"), LabTCPKiB: SocketMemKiB(p.Namespaces...),
			TCPMemKiB: TCPMemKiB(), SlabKiB: meminfoKiB("Slab"), InFlight: sent.Load() - (sink.Received() - r0)}
	}
	res := Result{Base: read()}
	start := time.Now()
	conn.SetWriteDeadline(start.Add(p.Duration))
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 256<<10)
		for {
			n, err := conn.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	tick := time.NewTicker(p.Every)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-tick.C:
		}
		s := read()
		res.Samples++
		res.Peak.RSSKiB = max(res.Peak.RSSKiB, s.RSSKiB-res.Base.RSSKiB)
		res.Peak.LabTCPKiB = max(res.Peak.LabTCPKiB, s.LabTCPKiB-res.Base.LabTCPKiB)
		res.Peak.TCPMemKiB = max(res.Peak.TCPMemKiB, s.TCPMemKiB-res.Base.TCPMemKiB)
		res.Peak.SlabKiB = max(res.Peak.SlabKiB, s.SlabKiB-res.Base.SlabKiB)
		res.Peak.InFlight = max(res.Peak.InFlight, s.InFlight)
	}
	res.Took = time.Since(start)
	res.Sent, res.Received = sent.Load(), sink.Received()-r0
	sink.CloseAll()
	conn.Close()
	return res
}

// SocketMemKiB sums the receive queue, send queue and forward allocation of every TCP socket
// in the named network namespaces, in KiB.
func SocketMemKiB(namespaces ...string) int64 {
	var bytes int64
	for _, ns := range namespaces {
		out, _ := exec.Command("ip", "netns", "exec", ns, "ss", "-Htanm").Output()
		for rest := string(out); ; {
			i := strings.Index(rest, "skmem:(")
			if i < 0 {
				break
			}
			rest = rest[i+len("skmem:("):]
			end := strings.IndexByte(rest, ')')
			if end < 0 {
				break
			}
			for _, f := range strings.Split(rest[:end], ",") {
				// r: receive queue, w: send queue, f: forward allocation (all bytes).
				if len(f) > 1 && (f[0] == 'r' || f[0] == 'w' || f[0] == 'f') && f[1] >= '0' && f[1] <= '9' {
					v, _ := strconv.ParseInt(f[1:], 10, 64)
					bytes += v
				}
			}
		}
	}
	return bytes / 1024
}

// TCPMemKiB is the kernel's memory charged to TCP sockets, machine-wide, in KiB.
func TCPMemKiB() int64 {
	b, _ := os.ReadFile("/proc/net/sockstat")
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "TCP:") {
			continue
		}
		f := strings.Fields(l)
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, _ := strconv.ParseInt(f[i+1], 10, 64)
				return pages * int64(os.Getpagesize()) / 1024
			}
		}
	}
	return 0
}

func statusKiB(pid int, key string) int64 {
	if pid == 0 {
		return 0
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	return fieldKiB(string(b), key)
}

func meminfoKiB(key string) int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	return fieldKiB(string(b), key)
}

func fieldKiB(s, key string) int64 {
	for _, l := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(l, key+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}
