package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeConn is an outbound that, when echo is set, answers every datagram from its destination.
type fakeConn struct {
	echo   bool
	in     chan fakeDatagram
	once   sync.Once
	closed chan struct{}
	mu     sync.Mutex
	sent   []fakeDatagram
}

type fakeDatagram struct {
	addr netip.AddrPort
	b    string
}

func newFakeConn(echo bool) *fakeConn {
	return &fakeConn{echo: echo, in: make(chan fakeDatagram, 1024), closed: make(chan struct{})}
}

func (c *fakeConn) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	c.mu.Lock()
	c.sent = append(c.sent, fakeDatagram{dst, string(b)})
	c.mu.Unlock()
	if c.echo {
		c.in <- fakeDatagram{dst, string(b)}
	}
	return len(b), nil
}

func (c *fakeConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-c.in:
		return copy(b, d.b), d.addr, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (c *fakeConn) Close() error { c.once.Do(func() { close(c.closed) }); return nil }

func (c *fakeConn) sentCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sent)
}

// replies records what reply sockets sent: remote → client payloads.
type replies struct {
	mu     sync.Mutex
	got    []fakeReply
	open   map[netip.AddrPort]int
	closed atomic.Int64
	fail   map[netip.AddrPort]error
}

type fakeReply struct {
	from, to netip.AddrPort
	b        string
}

type fakeReplyConn struct {
	r      *replies
	remote netip.AddrPort
}

func (c *fakeReplyConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	c.r.mu.Lock()
	c.r.got = append(c.r.got, fakeReply{c.remote, to, string(b)})
	c.r.mu.Unlock()
	return len(b), nil
}

func (c *fakeReplyConn) Close() error { c.r.closed.Add(1); return nil }

func (r *replies) openReply(remote netip.AddrPort) (ReplyConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fail[remote]; err != nil {
		return nil, err
	}
	if r.open == nil {
		r.open = map[netip.AddrPort]int{}
	}
	r.open[remote]++
	return &fakeReplyConn{r: r, remote: remote}, nil
}

func (r *replies) snapshot() []fakeReply {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fakeReply(nil), r.got...)
}

// reports collects session reports.
type reports struct {
	mu  sync.Mutex
	all []UDPSessionReport
}

func (r *reports) add(x UDPSessionReport) { r.mu.Lock(); r.all = append(r.all, x); r.mu.Unlock() }
func (r *reports) get() []UDPSessionReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]UDPSessionReport(nil), r.all...)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var (
	client1 = netip.MustParseAddrPort("10.0.1.2:40001")
	client2 = netip.MustParseAddrPort("10.0.1.2:40002")
	client6 = netip.MustParseAddrPort("[fd00:1::2]:40003")
	remoteA = netip.MustParseAddrPort("203.0.113.10:53")
	remoteB = netip.MustParseAddrPort("203.0.113.11:7")
	remote6 = netip.MustParseAddrPort("[2001:db8:3::10]:53")
)

// echoTable routes everything to one echoing outbound per session and counts opens.
func echoTable(t *testing.T) (*UDPTable, *replies, *reports, *atomic.Int64) {
	rep, reps := &replies{}, &reports{}
	var opens atomic.Int64
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Tag: "rule-up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
				opens.Add(1)
				return newFakeConn(true), nil
			}}
		},
		OpenReply:    rep.openReply,
		OnSessionEnd: reps.add,
	}
	t.Cleanup(func() { tbl.Close() })
	return tbl, rep, reps, &opens
}

// Every reply goes to the client that sent, from the address it sent to, and each client
// session opens one outbound however many destinations it talks to.
func TestUDPTableRepliesReachTheirClientFromTheirRemote(t *testing.T) {
	tbl, rep, _, opens := echoTable(t)
	type send struct{ src, dst netip.AddrPort }
	sends := []send{{client1, remoteA}, {client1, remoteB}, {client2, remoteA}, {client6, remote6}}
	for i := range 10 {
		for _, s := range sends {
			tbl.Handle([]byte(fmt.Sprintf("%s>%s#%d", s.src, s.dst, i)), s.src, s.dst)
		}
	}
	waitUntil(t, "all replies", func() bool { return len(rep.snapshot()) == 40 })
	for _, r := range rep.snapshot() {
		var i int
		want := fmt.Sprintf("%s>%s#", r.to, r.from)
		if _, err := fmt.Sscanf(r.b[len(want):], "%d", &i); r.b[:len(want)] != want || err != nil {
			t.Errorf("reply %q from %s went to %s", r.b, r.from, r.to)
		}
	}
	if got := opens.Load(); got != 3 {
		t.Errorf("%d outbounds opened, want one per client session (3)", got)
	}
	if st := tbl.Stats(); st.Active != 3 || st.Sessions != 3 {
		t.Errorf("stats %+v, want 3 active sessions", st)
	}
	rep.mu.Lock()
	if rep.open[remoteA] != 1 || rep.open[remoteB] != 1 {
		t.Errorf("reply sockets opened %v, want one per remote, shared by the sessions it answers", rep.open)
	}
	if st := tbl.Stats(); st.ReplySockets != 3 {
		t.Errorf("%d reply sockets, want 3 (remoteA's shared by two sessions)", st.ReplySockets)
	}
	rep.mu.Unlock()
}

// IPv4-mapped addresses from a dual-stack socket are unmapped before keying and routing.
func TestUDPTableUnmapsV4MappedAddresses(t *testing.T) {
	var routed netip.AddrPort
	tbl, rep, _, _ := echoTable(t)
	route := tbl.Route
	tbl.Route = func(src, dst netip.AddrPort, name string) UDPRoute { routed = dst; return route(src, dst, name) }
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	tbl.Handle([]byte("x"), mapped(client1), mapped(remoteA))
	tbl.Handle([]byte("y"), client1, remoteA)
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 2 })
	if routed != remoteA || tbl.Stats().Sessions != 1 {
		t.Fatalf("routed %s, %d sessions; want %s and one session", routed, tbl.Stats().Sessions, remoteA)
	}
}

// Routing is per destination: a blocked destination stays blocked inside a live session, and
// destinations routed to different outbounds get one carrier each.
func TestUDPTableRoutesEachNewDestination(t *testing.T) {
	blocked := errors.New("blocked by rule")
	rep := &replies{}
	conns := map[string]*fakeConn{}
	var mu sync.Mutex
	var routes atomic.Int64
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			routes.Add(1)
			switch dst {
			case remoteB:
				return UDPRoute{Drop: blocked, Tag: "block"}
			}
			name := "proxy"
			if dst.Port() == 123 {
				name = "direct"
			}
			return UDPRoute{Outbound: name, Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
				c := newFakeConn(true)
				mu.Lock()
				conns[name] = c
				mu.Unlock()
				return c, nil
			}}
		},
		OpenReply: rep.openReply,
	}
	defer tbl.Close()
	ntp := netip.MustParseAddrPort("203.0.113.12:123")
	for range 3 {
		tbl.Handle([]byte("a"), client1, remoteA)
		tbl.Handle([]byte("b"), client1, remoteB)
		tbl.Handle([]byte("n"), client1, ntp)
	}
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 6 })
	if got := routes.Load(); got != 3 {
		t.Errorf("%d route lookups, want one per destination (3)", got)
	}
	if st := tbl.Stats(); st.Blocked != 3 {
		t.Errorf("blocked %d, want 3", st.Blocked)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 || conns["proxy"].sentCount() != 3 || conns["direct"].sentCount() != 3 {
		t.Errorf("outbounds %v, want proxy and direct with 3 datagrams each", conns)
	}
	for _, r := range rep.snapshot() {
		if r.from == remoteB {
			t.Errorf("a blocked destination answered: %+v", r)
		}
	}
}

// Beyond MaxSessions, a new client's datagrams are refused and counted; existing sessions go on.
func TestUDPTableRefusesSessionsBeyondTheLimit(t *testing.T) {
	tbl, rep, _, _ := echoTable(t)
	tbl.MaxSessions = 1
	var limitErrs atomic.Int64
	tbl.OnError = func(err error) {
		if errors.Is(err, ErrSessionLimit) {
			limitErrs.Add(1)
		}
	}
	tbl.Handle([]byte("1"), client1, remoteA)
	tbl.Handle([]byte("2"), client2, remoteA)
	tbl.Handle([]byte("3"), client1, remoteA)
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 2 })
	if st := tbl.Stats(); st.Refused != 1 || st.Active != 1 {
		t.Fatalf("stats %+v, want 1 refused and 1 active", st)
	}
	if limitErrs.Load() != 1 {
		t.Fatalf("%d ErrSessionLimit reports, want 1", limitErrs.Load())
	}
	for _, r := range rep.snapshot() {
		if r.to != client1 {
			t.Fatalf("refused client got a reply: %+v", r)
		}
	}
}

// A session ends after Idle without traffic: it is reported once with its counters, and its
// reply sockets and outbound are closed.
func TestUDPTableExpiresIdleSessions(t *testing.T) {
	tbl, rep, reps, _ := echoTable(t)
	tbl.Idle = 80 * time.Millisecond
	tbl.Handle([]byte("hello"), client1, remoteA)
	waitUntil(t, "reply", func() bool { return len(rep.snapshot()) == 1 })
	waitUntil(t, "report", func() bool { return len(reps.get()) == 1 })
	r := reps.get()[0]
	if !r.Idle || r.Err != nil || r.Src != client1 || r.FirstDst != remoteA || r.Tag != "rule-up" ||
		r.PacketsUp != 1 || r.BytesUp != 5 || r.PacketsDown != 1 || r.BytesDown != 5 || r.Dests != 1 {
		t.Fatalf("report %+v", r)
	}
	if r.Duration < tbl.Idle {
		t.Errorf("session lasted %v, shorter than the idle timeout", r.Duration)
	}
	if tbl.Stats().Active != 0 || rep.closed.Load() != 1 {
		t.Fatalf("after expiry: %+v, %d reply sockets closed", tbl.Stats(), rep.closed.Load())
	}
	// The next datagram starts a new session.
	tbl.Handle([]byte("again"), client1, remoteA)
	waitUntil(t, "second reply", func() bool { return len(rep.snapshot()) == 2 })
	if tbl.Stats().Sessions != 2 {
		t.Fatalf("sessions %d, want 2", tbl.Stats().Sessions)
	}
}

// Sessions lists the live sessions, oldest first, with their traffic so far; an ended one is gone.
func TestUDPTableSessionsListsLiveSessions(t *testing.T) {
	tbl, rep, reps, _ := echoTable(t)
	tbl.Idle = 200 * time.Millisecond
	tbl.Handle([]byte("first"), client1, remoteA)
	tbl.Handle([]byte("to b"), client1, remoteB)
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 2 })
	tbl.Handle([]byte("v6"), client6, remote6)
	waitUntil(t, "v6 reply", func() bool { return len(rep.snapshot()) == 3 })
	ss := tbl.Sessions()
	if len(ss) != 2 {
		t.Fatalf("%d sessions listed, want 2: %+v", len(ss), ss)
	}
	s := ss[0]
	if s.Src != client1 || s.FirstDst != remoteA || s.Tag != "rule-up" || s.Dests != 2 ||
		s.PacketsUp != 2 || s.BytesUp != 9 || s.PacketsDown != 2 || s.BytesDown != 9 || s.Duration <= 0 {
		t.Errorf("first session %+v", s)
	}
	if ss[1].Src != client6 || ss[1].FirstDst != remote6 || ss[1].BytesUp != 2 || ss[1].Start.Before(s.Start) {
		t.Errorf("second session %+v", ss[1])
	}
	waitUntil(t, "both sessions ended", func() bool { return len(reps.get()) == 2 })
	if ss := tbl.Sessions(); len(ss) != 0 {
		t.Errorf("ended sessions still listed: %+v", ss)
	}
}

// A reply socket that cannot be bound (a local daemon holds the port) drops that remote's
// replies with a counter and a *ReplyError; other remotes and sessions are unaffected.
func TestUDPTableReplyBindFailureDropsOnlyThatReply(t *testing.T) {
	tbl, rep, _, _ := echoTable(t)
	rep.fail = map[netip.AddrPort]error{remoteB: fmt.Errorf("bind: %w", errors.New("address already in use"))}
	var errs []error
	var mu sync.Mutex
	tbl.OnError = func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	for range 5 {
		tbl.Handle([]byte("b"), client1, remoteB)
		tbl.Handle([]byte("a"), client1, remoteA)
		tbl.Handle([]byte("a2"), client2, remoteA)
	}
	waitUntil(t, "replies from A", func() bool { return len(rep.snapshot()) == 10 })
	waitUntil(t, "bind errors", func() bool { return tbl.Stats().ReplyBindErrors == 5 })
	mu.Lock()
	defer mu.Unlock()
	var re *ReplyError
	if len(errs) != 5 || !errors.As(errs[0], &re) || re.Remote != remoteB || re.Client != client1 {
		t.Fatalf("errors %v, want 5 *ReplyError for %s", errs, remoteB)
	}
}

// Datagrams sent while the outbound is being opened are queued and sent in order once it is
// up; the listener is never held up by the open.
func TestUDPTableQueuesWhileOpening(t *testing.T) {
	release := make(chan struct{})
	c := newFakeConn(false)
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "slow", Open: func(ctx context.Context, first netip.AddrPort) (UDPConn, error) {
				<-release
				return c, nil
			}}
		},
		OpenReply: (&replies{}).openReply,
	}
	defer tbl.Close()
	for i := range maxPendingDatagrams + 5 {
		tbl.Handle([]byte(fmt.Sprint(i)), client1, remoteA)
	}
	close(release)
	waitUntil(t, "flush", func() bool { return c.sentCount() == maxPendingDatagrams })
	c.mu.Lock()
	for i, d := range c.sent {
		if d.b != fmt.Sprint(i) {
			t.Errorf("datagram %d is %q", i, d.b)
		}
	}
	c.mu.Unlock()
	if st := tbl.Stats(); st.QueueDrops != 5 {
		t.Fatalf("queue drops %d, want 5", st.QueueDrops)
	}
}

// The session ends, with the error in its report, when its outbound cannot be opened or when
// the outbound ends (the proxy closed the association).
func TestUDPTableEndsSessionOnOutboundFailure(t *testing.T) {
	refused := errors.New("connection refused")
	for _, tc := range []struct {
		name string
		open func() (UDPConn, error)
		kill bool
		want error
	}{
		{name: "open fails", open: func() (UDPConn, error) { return nil, refused }, want: refused},
		{name: "outbound ends", open: func() (UDPConn, error) { return newFakeConn(false), nil }, kill: true, want: net.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reps := &reports{}
			var conn UDPConn
			var mu sync.Mutex
			tbl := &UDPTable{
				Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
					return UDPRoute{Outbound: "x", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
						c, err := tc.open()
						mu.Lock()
						conn = c
						mu.Unlock()
						return c, err
					}}
				},
				OpenReply:    (&replies{}).openReply,
				OnSessionEnd: reps.add,
			}
			defer tbl.Close()
			tbl.Handle([]byte("q"), client1, remoteA)
			if tc.kill {
				waitUntil(t, "open", func() bool { mu.Lock(); defer mu.Unlock(); return conn != nil })
				mu.Lock()
				conn.Close()
				mu.Unlock()
			}
			waitUntil(t, "report", func() bool { return len(reps.get()) == 1 })
			if r := reps.get()[0]; !errors.Is(r.Err, tc.want) || r.Idle {
				t.Fatalf("report %+v, want error %v", r, tc.want)
			}
			if tbl.Stats().Active != 0 {
				t.Fatal("failed session still in the table")
			}
		})
	}
}

// Close ends and reports every session, and later datagrams are dropped.
func TestUDPTableCloseReportsEverySession(t *testing.T) {
	tbl, rep, reps, _ := echoTable(t)
	tbl.Handle([]byte("1"), client1, remoteA)
	tbl.Handle([]byte("2"), client2, remoteA)
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 2 })
	tbl.Close()
	if got := len(reps.get()); got != 2 {
		t.Fatalf("%d reports after Close, want 2", got)
	}
	for _, r := range reps.get() {
		if r.Err != nil || r.Idle {
			t.Errorf("shutdown report %+v, want no error", r)
		}
	}
	tbl.Handle([]byte("3"), client1, remoteA)
	if tbl.Stats().Active != 0 {
		t.Fatal("a session was created after Close")
	}
}

// Serve relays what the reader yields and returns nil once the reader is closed.
func TestUDPTableServeStopsWhenReaderCloses(t *testing.T) {
	tbl, rep, _, _ := echoTable(t)
	r := &chanReader{c: make(chan fakeDatagram, 4)}
	done := make(chan error, 1)
	go func() { done <- tbl.Serve(r) }()
	r.c <- fakeDatagram{client1, "x"}
	waitUntil(t, "reply", func() bool { return len(rep.snapshot()) == 1 })
	close(r.c)
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

type chanReader struct{ c chan fakeDatagram }

func (r *chanReader) ReadDatagram(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	d, ok := <-r.c
	if !ok {
		return 0, netip.AddrPort{}, netip.AddrPort{}, net.ErrClosed
	}
	return copy(b, d.b), d.addr, remoteA, nil
}

// Reply sockets are bounded: a session answered by more remotes than its bound (full cone: any
// remote may answer) closes its least recently used one for each new remote, so every reply is
// still delivered; at the table's bound, a session with no socket of its own to give up drops
// the reply (counted), and one that has some makes room.
func TestUDPTableBoundsReplySockets(t *testing.T) {
	tbl, rep, _, _ := echoTable(t)
	const remotes = maxSessionReplies + 10
	for i := range remotes {
		dst := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), uint16(1000+i))
		tbl.Handle([]byte(fmt.Sprint(i)), client1, dst)
		waitUntil(t, "reply", func() bool { return len(rep.snapshot()) == i+1 })
		if n := tbl.Stats().ReplySockets; n > maxSessionReplies {
			t.Fatalf("%d reply sockets open for one session, bound %d", n, maxSessionReplies)
		}
	}
	if got := rep.closed.Load(); got != remotes-maxSessionReplies {
		t.Fatalf("%d reply sockets closed to make room, want %d", got, remotes-maxSessionReplies)
	}
	// The most recently used remote kept its socket: a second reply from it opens none.
	rep.mu.Lock()
	last := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), uint16(1000+remotes-1))
	opens := rep.open[last]
	rep.mu.Unlock()
	tbl.Handle([]byte("again"), client1, last)
	waitUntil(t, "reply again", func() bool { return len(rep.snapshot()) == remotes+1 })
	rep.mu.Lock()
	if rep.open[last] != opens {
		t.Errorf("the most recently used remote's socket was reopened")
	}
	rep.mu.Unlock()

	// The table's bound: session 1 holds all of it; session 2 has nothing to give up.
	tbl.MaxReplySockets = maxSessionReplies
	tbl.Handle([]byte("two"), client2, remoteA)
	waitUntil(t, "a refused reply", func() bool { return tbl.Stats().ReplyLimited == 1 })
	st := tbl.Stats()
	if st.ReplySockets != maxSessionReplies || len(rep.snapshot()) != remotes+1 {
		t.Fatalf("after a refused reply: %+v, %d replies", st, len(rep.snapshot()))
	}
	// Session 1 still gets replies from new remotes: it gives up one of its own.
	tbl.Handle([]byte("new"), client1, remoteB)
	waitUntil(t, "reply from a new remote", func() bool { return len(rep.snapshot()) == remotes+2 })
	if n := tbl.Stats().ReplySockets; n != maxSessionReplies {
		t.Fatalf("%d reply sockets, want the table's bound %d", n, maxSessionReplies)
	}
	tbl.Close()
	if n := tbl.Stats().ReplySockets; n != 0 {
		t.Fatalf("%d reply sockets counted after Close", n)
	}
}

// At the table's bound a session gives up only a reply socket of its own alone: letting go of
// one another session shares would free no descriptor and lose it its mapping for nothing.
func TestUDPTableAtItsBoundGivesUpOnlyUnsharedReplySockets(t *testing.T) {
	tbl, rep, _, _ := echoTable(t)
	tbl.MaxReplySockets = 2
	remoteC := netip.MustParseAddrPort("203.0.113.12:9")
	tbl.Handle([]byte("1"), client1, remoteA)
	tbl.Handle([]byte("2"), client2, remoteA)
	tbl.Handle([]byte("3"), client1, remoteB)
	waitUntil(t, "three replies", func() bool { return len(rep.snapshot()) == 3 })
	// Full: remoteA's (both sessions') and remoteB's (client1's alone). client2 has only a
	// shared one: refused, and it keeps remoteA's.
	tbl.Handle([]byte("4"), client2, remoteC)
	waitUntil(t, "a refused reply", func() bool { return tbl.Stats().ReplyLimited == 1 })
	if n := rep.closed.Load(); n != 0 {
		t.Fatalf("%d reply sockets closed for a refused reply, want 0", n)
	}
	tbl.Handle([]byte("5"), client2, remoteA)
	waitUntil(t, "client2's reply from remoteA", func() bool { return len(rep.snapshot()) == 4 })
	// client1 gives up remoteB's, its own alone, for remoteC.
	tbl.Handle([]byte("6"), client1, remoteC)
	waitUntil(t, "client1's reply from remoteC", func() bool { return len(rep.snapshot()) == 5 })
	rep.mu.Lock()
	opensA := rep.open[remoteA]
	rep.mu.Unlock()
	if n := rep.closed.Load(); n != 1 || opensA != 1 {
		t.Fatalf("%d closed and remoteA opened %d times, want remoteB's closed alone and remoteA's kept", n, opensA)
	}
	if st := tbl.Stats(); st.ReplySockets != 2 || st.ReplyLimited != 1 {
		t.Fatalf("stats %+v, want 2 reply sockets and the one refusal", st)
	}
}

// A session ended from outside (the admin API) leaves the table at once with its sockets
// closed and is reported with the cause; the client's next datagram starts a new session.
// EndSessions ends them all.
func TestUDPTableEndSessionClosesItNow(t *testing.T) {
	var conns []*fakeConn
	var mu sync.Mutex
	rep, reps := &replies{}, &reports{}
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, _ string) UDPRoute {
			return UDPRoute{Outbound: "up", Tag: "rule-up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
				c := newFakeConn(true)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				return c, nil
			}}
		},
		OpenReply:    rep.openReply,
		OnSessionEnd: reps.add,
	}
	defer tbl.Close()
	tbl.Handle([]byte("a"), client1, remoteA)
	tbl.Handle([]byte("b"), client2, remoteA)
	waitUntil(t, "replies", func() bool { return len(rep.snapshot()) == 2 })
	var first UDPSessionReport
	for _, s := range tbl.Sessions() {
		if s.Src == client1 {
			first = s
		}
	}
	cause := errors.New("closed through the admin API")
	if tbl.EndSession(client1, first.Start.Add(time.Nanosecond), cause) {
		t.Fatal("EndSession ended a session by another start")
	}
	if !tbl.EndSession(client1, first.Start, cause) {
		t.Fatal("EndSession found no session")
	}
	if st := tbl.Stats(); st.Active != 1 {
		t.Fatalf("%d sessions active right after EndSession, want 1", st.Active)
	}
	for _, s := range tbl.Sessions() {
		if s.Src == client1 {
			t.Fatal("the ended session is still listed")
		}
	}
	mu.Lock()
	for _, c := range conns {
		c.mu.Lock()
		mine := c.sent[0].b == "a"
		c.mu.Unlock()
		select {
		case <-c.closed:
			if !mine {
				t.Error("another session's outbound was closed")
			}
		default:
			if mine {
				t.Error("the ended session's outbound is still open")
			}
		}
	}
	mu.Unlock()
	waitUntil(t, "its report", func() bool { return len(reps.get()) == 1 })
	if r := reps.get()[0]; r.Src != client1 || !errors.Is(r.Err, cause) || r.Idle || r.PacketsUp != 1 {
		t.Fatalf("report %+v, want client1's with the cause, not idle", r)
	}
	// remoteA's reply socket is client2's too: it stays open until client2's session ends
	// (a session's reply sockets are let go before its report).
	if n := rep.closed.Load(); n != 0 {
		t.Fatalf("%d reply sockets closed with client1's session, want remoteA's kept for client2", n)
	}
	if tbl.EndSession(client1, first.Start, cause) {
		t.Fatal("EndSession ended a session twice")
	}

	tbl.Handle([]byte("c"), client1, remoteA)
	waitUntil(t, "the new session's reply", func() bool { return len(rep.snapshot()) == 3 })
	if st := tbl.Stats(); st.Active != 2 || st.Sessions != 3 {
		t.Fatalf("stats %+v, want a new session for client1", st)
	}
	if n := tbl.EndSessions(cause); n != 2 {
		t.Fatalf("EndSessions ended %d, want 2", n)
	}
	if st := tbl.Stats(); st.Active != 0 {
		t.Fatalf("%d sessions active after EndSessions", st.Active)
	}
	waitUntil(t, "every report", func() bool { return len(reps.get()) == 3 })
	for _, r := range reps.get() {
		if !errors.Is(r.Err, cause) {
			t.Errorf("report %+v without the cause", r)
		}
	}
	waitUntil(t, "the shared reply socket closed after its last session", func() bool { return rep.closed.Load() == 1 })
}
