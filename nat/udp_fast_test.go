package nat

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

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
