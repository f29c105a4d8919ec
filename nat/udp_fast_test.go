package nat

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/internal/udpbatch"
)

// countConn is an outbound that counts what it is sent and allocates nothing; reads block
// until Close.
type countConn struct {
	sent   atomic.Int64
	once   sync.Once
	closed chan struct{}
}

func newCountConn() *countConn { return &countConn{closed: make(chan struct{})} }

func (c *countConn) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	c.sent.Add(1)
	return len(b), nil
}

func (c *countConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	<-c.closed
	return 0, netip.AddrPort{}, net.ErrClosed
}

func (c *countConn) Close() error { c.once.Do(func() { close(c.closed) }); return nil }

// A datagram of a session whose way out is open allocates nothing and takes no lock: it goes
// out from the caller's goroutine.
func TestUDPTableHandleAllocatesNothingOnceOpen(t *testing.T) {
	conn := newCountConn()
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) { return conn, nil }}
		},
		OpenReply: (&replies{}).openReply,
	}
	defer tbl.Close()
	b := make([]byte, 1200)
	tbl.Handle(b, client1, remoteA)
	waitUntil(t, "the outbound open", func() bool { return conn.sent.Load() == 1 })
	tbl.Handle(b, client1, remoteA) // the first one after the open takes the locked path and sets the fast one
	allocs := testing.AllocsPerRun(1000, func() { tbl.Handle(b, client1, remoteA) })
	if allocs != 0 {
		t.Errorf("%.1f allocations per datagram, want 0", allocs)
	}
	// A second destination of the same session, then the first again: both stay free.
	tbl.Handle(b, client1, remoteB)
	tbl.Handle(b, client1, remoteB)
	if allocs := testing.AllocsPerRun(1000, func() {
		tbl.Handle(b, client1, remoteA)
		tbl.Handle(b, client1, remoteB)
	}); allocs != 0 {
		t.Errorf("%.1f allocations per pair of datagrams to two destinations, want 0", allocs)
	}
	// AllocsPerRun runs the function once more than asked, to warm up.
	if got, want := conn.sent.Load(), int64(1+1+1001+1+1+2*1001); got != want {
		t.Errorf("outbound sent %d datagrams, want %d", got, want)
	}
	st := tbl.Stats()
	if st.UpstreamErrors != 0 || st.QueueDrops != 0 {
		t.Errorf("stats %+v", st)
	}
}

// Once a session ended, the fast path no longer carries its datagrams: a datagram from the
// same client opens a new session.
func TestUDPTableFastPathEndsWithTheSession(t *testing.T) {
	var conns []*countConn
	var mu sync.Mutex
	reps := &reports{}
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
				c := newCountConn()
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				return c, nil
			}}
		},
		OpenReply:    (&replies{}).openReply,
		OnSessionEnd: reps.add,
	}
	defer tbl.Close()
	tbl.Handle([]byte("1"), client1, remoteA)
	first := func() *countConn {
		mu.Lock()
		defer mu.Unlock()
		if len(conns) == 0 {
			return nil
		}
		return conns[0]
	}
	waitUntil(t, "the first outbound", func() bool { return first() != nil && first().sent.Load() == 1 })
	tbl.Handle([]byte("2"), client1, remoteA)
	tbl.Handle([]byte("3"), client1, remoteA)
	tbl.mu.Lock()
	s := tbl.sessions[client1]
	tbl.mu.Unlock()
	if s.fast.Load() == nil {
		t.Fatal("no fast destination after datagrams through an open outbound")
	}
	tbl.end(s, nil, false)
	waitUntil(t, "the session's report", func() bool { return len(reps.get()) == 1 })
	if r := reps.get()[0]; r.PacketsUp != 3 {
		t.Fatalf("report %+v, want 3 packets up", r)
	}
	tbl.Handle([]byte("4"), client1, remoteA)
	waitUntil(t, "a second outbound", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) == 2 && conns[1].sent.Load() == 1
	})
	if n := first().sent.Load(); n != 3 {
		t.Fatalf("the ended session's outbound sent %d datagrams, want 3", n)
	}
	if st := tbl.Stats(); st.UpstreamErrors != 0 || st.Sessions != 2 {
		t.Fatalf("stats %+v, want 2 sessions and no upstream error", st)
	}
}

// A relay goroutine's cached reply socket is not used once the session closed it: another
// outbound's replies from many remotes evict it, and the next reply through the first
// outbound opens a new one.
func TestUDPTableCachedReplySocketIsDroppedOnEviction(t *testing.T) {
	rep := &closingReplies{}
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			out := "b"
			if dst == remoteA {
				out = "a"
			}
			return UDPRoute{Outbound: out, Open: func(context.Context, netip.AddrPort) (UDPConn, error) { return newFakeConn(true), nil }}
		},
		OpenReply: rep.openReply,
	}
	defer tbl.Close()
	tbl.Handle([]byte("a1"), client1, remoteA)
	waitUntil(t, "a reply from remoteA", func() bool { return rep.count() == 1 })
	for i := range maxSessionReplies {
		dst := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.20"), uint16(2000+i))
		tbl.Handle([]byte("b"), client1, dst)
		waitUntil(t, "a reply from a b remote", func() bool { return rep.count() == i+2 })
	}
	tbl.Handle([]byte("a2"), client1, remoteA)
	waitUntil(t, "a second reply from remoteA", func() bool { return rep.count() == maxSessionReplies+2 })
	if n := rep.writesAfterClose.Load(); n != 0 {
		t.Fatalf("%d replies written to a closed reply socket", n)
	}
	if st := tbl.Stats(); st.ReplyErrors != 0 || st.ReplySockets != maxSessionReplies {
		t.Fatalf("stats %+v", st)
	}
}

// closingReplies are reply sockets that know they were closed.
type closingReplies struct {
	mu               sync.Mutex
	n                int
	writesAfterClose atomic.Int64
}

type closingReplyConn struct {
	r      *closingReplies
	closed atomic.Bool
}

func (r *closingReplies) openReply(netip.AddrPort) (ReplyConn, error) {
	return &closingReplyConn{r: r}, nil
}

func (r *closingReplies) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.n }

func (c *closingReplyConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	if c.closed.Load() {
		c.r.writesAfterClose.Add(1)
		return 0, net.ErrClosed
	}
	c.r.mu.Lock()
	c.r.n++
	c.r.mu.Unlock()
	return len(b), nil
}

func (c *closingReplyConn) Close() error { c.closed.Store(true); return nil }

// batchConn is an echoing outbound that serves its replies as a BatchReader (or says it
// cannot, when unsupported is set, and is then read one at a time).
type batchConn struct {
	*fakeConn
	unsupported bool
	served      atomic.Int64
}

func (c *batchConn) ServeReplies(pool *udpbatch.Pool, fn func([]byte, netip.AddrPort) bool) error {
	if c.unsupported {
		return udpbatch.ErrUnsupported
	}
	for {
		select {
		case d := <-c.in:
			b := pool.Get()
			n := copy(b.Bufs[0], d.b)
			c.served.Add(1)
			more := fn(b.Bufs[0][:n], d.addr)
			pool.Put(b)
			if !more {
				return nil
			}
		case <-c.closed:
			return net.ErrClosed
		}
	}
}

// Replies of a BatchReader outbound reach the client through ServeReplies; one that cannot
// batch is read with ReadFromAddrPort instead.
func TestUDPTableRepliesThroughBatchReaders(t *testing.T) {
	for _, unsupported := range []bool{false, true} {
		rep := &replies{}
		conn := &batchConn{fakeConn: newFakeConn(true), unsupported: unsupported}
		tbl := &UDPTable{
			Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
				return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) { return conn, nil }}
			},
			OpenReply: rep.openReply,
		}
		tbl.Handle([]byte("one"), client1, remoteA)
		tbl.Handle([]byte("two"), client1, remoteB)
		waitUntil(t, "two replies", func() bool { return len(rep.snapshot()) == 2 })
		got := rep.snapshot()
		if got[0] != (fakeReply{remoteA, client1, "one"}) || got[1] != (fakeReply{remoteB, client1, "two"}) {
			t.Fatalf("unsupported=%v: replies %+v", unsupported, got)
		}
		if want := map[bool]int64{false: 2, true: 0}[unsupported]; conn.served.Load() != want {
			t.Fatalf("unsupported=%v: %d served in batches, want %d", unsupported, conn.served.Load(), want)
		}
		tbl.Close()
	}
}

// BenchmarkUDPSessionBytes reports the heap and goroutine stack one idle session holds in the
// table (its outbound a countConn, which holds nearly nothing; one reply socket): what nat
// itself costs per session, without the sockets' own.
func BenchmarkUDPSessionBytes(b *testing.B) {
	const n = 10000
	rep := &replies{}
	tbl := &UDPTable{
		MaxSessions: n, MaxReplySockets: n,
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
				// A short queue: the fake's own buffer is not the table's cost.
				return &batchConn{fakeConn: &fakeConn{echo: true, in: make(chan fakeDatagram, 1), closed: make(chan struct{})}}, nil
			}}
		},
		OpenReply: rep.openReply,
	}
	defer tbl.Close()
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range n {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 40000)
			tbl.Handle([]byte("x"), src, remoteA)
		}
		testutil.WaitUntil(b, "every session's first datagram sent", func() bool {
			rep.mu.Lock()
			defer rep.mu.Unlock()
			return len(rep.got) == n
		})
		rep.mu.Lock()
		rep.got = nil // what the fake reply sockets recorded is not the table's
		rep.mu.Unlock()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/session")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stackB/session")
		b.ReportMetric(float64(runtime.NumGoroutine())/n, "goroutines/session")
		break
	}
}

// smallMap behaves as a map whatever entry is inline.
func TestSmallMapIsAMap(t *testing.T) {
	var m smallMap[int, string]
	ref := map[int]string{}
	check := func(step string) {
		t.Helper()
		if m.len() != len(ref) {
			t.Fatalf("%s: len %d, want %d", step, m.len(), len(ref))
		}
		for k, v := range ref {
			if got, ok := m.get(k); !ok || got != v {
				t.Fatalf("%s: get(%d) = %q %v, want %q", step, k, got, ok, v)
			}
		}
		seen := map[int]string{}
		m.each(func(k int, v string) { seen[k] = v })
		if fmt.Sprint(seen) != fmt.Sprint(ref) {
			t.Fatalf("%s: each saw %v, want %v", step, seen, ref)
		}
		if _, ok := m.get(99); ok {
			t.Fatalf("%s: get(99) found", step)
		}
	}
	for i, op := range []struct {
		del bool
		k   int
		v   string
	}{{false, 1, "a"}, {false, 2, "b"}, {false, 1, "a2"}, {true, 1, ""}, {false, 3, "c"}, {false, 2, "b2"}, {true, 2, ""}, {false, 1, "a3"}, {true, 3, ""}} {
		if op.del {
			m.del(op.k)
			delete(ref, op.k)
		} else {
			m.set(op.k, op.v)
			ref[op.k] = op.v
		}
		check(fmt.Sprint("step ", i))
	}
	m.clear()
	clear(ref)
	check("clear")
}

// The reply socket for a session's first destination is open once its outbound is, before
// any reply comes.
func TestUDPTableOpensTheFirstReplySocketWithTheOutbound(t *testing.T) {
	rep := &replies{}
	conn := newCountConn()
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) { return conn, nil }}
		},
		OpenReply: rep.openReply,
	}
	defer tbl.Close()
	tbl.Handle([]byte("x"), client1, remoteA)
	waitUntil(t, "the reply socket", func() bool { return tbl.Stats().ReplySockets == 1 })
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if rep.open[remoteA] != 1 || len(rep.got) != 0 {
		t.Fatalf("reply sockets opened %v, replies %v; want one for %v and none", rep.open, rep.got, remoteA)
	}
}
