package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
)

// Defaults of UDPTable fields left at their zero value.
const (
	DefaultUDPIdle        = 60 * time.Second
	DefaultUDPMaxSessions = 4096
	DefaultUDPMaxReply    = 16 << 10 // bytes read per reply datagram; longer ones are truncated
	// DefaultUDPMaxReplySockets bounds the reply sockets of all sessions together: full cone,
	// any remote can answer a session, and each new remote address takes a descriptor.
	DefaultUDPMaxReplySockets = 8192
	maxSessionReplies         = 64   // reply sockets per session; beyond, the least recently used closes
	maxPendingDatagrams       = 32   // per outbound, while it is being opened
	maxSessionDests           = 1024 // cached per-destination routes per session
	// MaxHeldDatagrams bounds the datagrams held for one destination while a UDPSniffer
	// reads them; at the bound the destination is routed with what is known.
	MaxHeldDatagrams = 4
	maxHeldDests     = 16 // destinations of one session held at once; beyond, routed at once
	// DefaultSniffTimeout is how long a destination's datagrams are held at most when
	// SniffTimeout is zero.
	DefaultSniffTimeout = 300 * time.Millisecond
	maxDatagram         = 64 << 10
)

// Errors a session or a datagram can end with.
var (
	ErrSessionLimit = errors.New("udp session limit reached")
	ErrReplyFamily  = errors.New("reply from a remote of the other address family")
	ErrReplyLimit   = errors.New("udp reply socket limit reached")
	errTableClosed  = errors.New("udp table closed")
)

// UDPConn is a session's way out: a SOCKS5 UDP association, a marked direct socket, or any
// datagram carrier whose writes name the real destination. Writes must not block for long:
// they run on the listener's goroutine (a UDP send, or a hand-off to a queue).
type UDPConn interface {
	WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error)
	// ReadFromAddrPort returns one reply and the remote it came from. It fails once the
	// carrier is closed or has ended (for example, the proxy closed the association).
	ReadFromAddrPort(b []byte) (int, netip.AddrPort, error)
	Close() error
}

// ReplyConn sends replies to a client from a remote's address (a transparent socket bound to
// that address; *net.UDPConn satisfies it).
type ReplyConn interface {
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	Close() error
}

// DatagramReader yields captured datagrams with their client and original destination
// (*UDPListener on Linux).
type DatagramReader interface {
	ReadDatagram(b []byte) (n int, src, dst netip.AddrPort, err error)
}

// UDPRoute is where a session's datagrams to one destination go.
type UDPRoute struct {
	// Drop, when not nil, drops datagrams to this destination (a blocking rule, a refusal);
	// it is the session's error when the session carried nothing else (see
	// UDPSessionReport.Err).
	Drop error
	// Outbound is the way out, by identity (a comparable value: the gateway gives the
	// upstream itself, never its URL, which two upstreams may share). Destinations of one
	// session with the same Outbound share one UDPConn (one upstream association), so replies
	// from any remote reach the client. Its String, if any, names it in errors.
	Outbound any
	// Open opens the way out; it is called once per session and Outbound, off the listener's
	// goroutine, with the first destination sent to it. ctx bounds the open only: it ends
	// with the session, and once Open has returned.
	Open func(ctx context.Context, firstDst netip.AddrPort) (UDPConn, error)
	// Tag is opaque to nat and handed back in the session's report (the rule, the upstream).
	Tag any
}

// UDPSniffer reads a name from the first datagrams to a destination (a QUIC Initial's SNI).
type UDPSniffer interface {
	// Feed takes the next datagram (not retained). done reports that the destination can be
	// routed now, with name if one was found; otherwise the next datagram is awaited.
	Feed(b []byte) (name string, done bool)
}

// UDPSessionReport describes a session at its end.
type UDPSessionReport struct {
	// FirstDst and Tag are the first destination that was not dropped and its
	// UDPRoute.Tag, or, when every destination was, the first one's.
	Src, FirstDst          netip.AddrPort
	Tag                    any
	Start                  time.Time
	Duration               time.Duration
	PacketsUp, BytesUp     uint64 // client → remotes
	PacketsDown, BytesDown uint64 // remotes → client
	Dests                  int    // distinct destinations routed
	Dropped                uint64 // datagrams of this session dropped, either way
	// Err is why the session ended, if not idleness or shutdown; or, when it carried no
	// datagram, the first destination's drop reason. A session that carried datagrams to
	// one destination is not made a dropped one by another destination's Drop: that reason
	// is in DropErr, its datagrams in Dropped.
	Err     error
	DropErr error // the first destination's Drop reason, if any was dropped
	Idle    bool  // ended by the idle timeout
}

// ReplyError is a reply that could not be sent to the client: its socket could not be bound
// to the remote's address (EADDRINUSE when a local daemon holds that port), or the send failed.
type ReplyError struct {
	Client, Remote netip.AddrPort
	Err            error
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("udp reply from %s to %s: %v", e.Remote, e.Client, e.Err)
}

func (e *ReplyError) Unwrap() error { return e.Err }

// UDPStats are a table's counters since it was made.
type UDPStats struct {
	Active          int    // sessions now
	Sessions        uint64 // sessions ever created
	Refused         uint64 // datagrams refused because the table was full
	Blocked         uint64 // datagrams dropped by a route's Drop
	Held            uint64 // datagrams held for a sniffer before their destination was routed
	Sniffed         uint64 // destinations routed by a name a sniffer found
	QueueDrops      uint64 // datagrams dropped while their outbound was opening (queue full) or after it failed
	UpstreamErrors  uint64 // datagrams the outbound failed to send
	ReplyBindErrors uint64 // replies dropped because the reply socket could not be bound
	ReplyErrors     uint64 // replies dropped for any other reason (send failure, family mismatch)
	ReplyLimited    uint64 // replies dropped because every reply socket allowed was in use
	ReplySockets    int    // reply sockets open now
	ReadErrors      uint64 // datagrams the listener could not decode (no original destination)
}

// UDPTable is the UDP NAT table: sessions keyed by the client's address, each with its
// outbounds (usually one upstream association) and its reply sockets, one per remote address
// that answered. Serve reads captured datagrams and never blocks on a session: routes are
// looked up inline (Route must be quick), outbounds are opened in the background with a short
// queue, and replies are written by one goroutine per outbound.
//
// Routing is per destination, cached per session: the first datagram to each new destination
// of a session is routed, so a rule that blocks a destination still blocks it even when a
// session already talks elsewhere; destinations with the same Outbound share one UDPConn.
type UDPTable struct {
	Idle        time.Duration // a session without traffic either way for this long ends; default DefaultUDPIdle
	MaxSessions int           // beyond it, new clients' datagrams are dropped and counted; default DefaultUDPMaxSessions
	MaxReply    int           // reply datagram buffer size per outbound; default DefaultUDPMaxReply
	// MaxReplySockets bounds the reply sockets open at once over all sessions; default
	// DefaultUDPMaxReplySockets. A session at its own bound (64) or at this one closes its
	// least recently used reply socket for a new remote; one that has none drops the reply.
	MaxReplySockets int

	// Route decides where a session's datagram to dst goes; name is what Sniff's sniffer
	// found in the first datagrams, if anything. Required.
	Route func(src, dst netip.AddrPort, name string) UDPRoute
	// Sniff, when set, is asked about the first datagram b of each new destination of a
	// session. A non-nil UDPSniffer holds that destination's datagrams (b, then the next
	// ones, at most MaxHeldDatagrams and SniffTimeout) until it is done; the destination is
	// then routed with the name it found, and the held datagrams go out in order. nil routes
	// at once: what Sniff does not recognise is never delayed. Sniff and the sniffer run on
	// the listener's goroutine and must be quick; b is not retained.
	Sniff func(dst netip.AddrPort, b []byte) UDPSniffer
	// SniffTimeout bounds how long datagrams are held for a sniffer; default
	// DefaultSniffTimeout. At the timeout the destination is routed without a name.
	SniffTimeout time.Duration
	// OpenReply opens the socket replies from remote leave by. Required (ListenReply on Linux).
	OpenReply func(remote netip.AddrPort) (ReplyConn, error)
	// OnSessionEnd receives each session's report, from its own goroutine. Optional.
	OnSessionEnd func(UDPSessionReport)
	// OnError receives per-datagram failures that drop one datagram (a *ReplyError, an
	// outbound's send error, ErrSessionLimit); the caller rate-limits any logging. Optional.
	OnError func(error)

	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
	closed   bool
	// recent finds a client's live session without mu: one slot per hash of the client's
	// address, set when a session is looked up under mu, cleared when it ends.
	recent [recentSlots]atomic.Pointer[udpSession]
	wg     sync.WaitGroup // sessions finishing, the sweeper

	sessionsTotal, refused, blocked, queueDrops, upstreamErrors atomic.Uint64
	held, sniffed                                               atomic.Uint64
	replyBindErrors, replyErrors, readErrors, replyLimited      atomic.Uint64
	replySockets                                                atomic.Int64 // descriptors: shared ones count once
	stop                                                        chan struct{}

	// shared are the reply sockets by remote, each used by every session that remote
	// answers: a socket bound to the remote's address can send to any client, and the
	// sessions of a LAN mostly talk to few remotes (a DNS server, a CDN's QUIC port).
	sharedMu      sync.Mutex
	shared        map[netip.AddrPort]*sharedReply
	startOnce     sync.Once
	replyPoolOnce sync.Once
	replyBatches  *udpbatch.Pool

	// NoLoop keeps every outbound and the listener on goroutines of their own, read through
	// Go's poller, as on systems without internal/udploop (tests compare the two).
	NoLoop bool
	// loop reads the listener and the outbounds that can be watched (LoopReader), on
	// Linux: one goroutine in epoll_wait for all of them. loopBatch is its reply buffers.
	loopOnce  sync.Once
	loop      *udploop.Loop
	loopBatch *udpbatch.Batch
}

// eventLoop returns the table's loop, started on first use; nil where there is none (NoLoop,
// not Linux, or it could not be made).
func (t *UDPTable) eventLoop() *udploop.Loop {
	if t.NoLoop || !udploop.Supported || !udpbatch.Supported {
		return nil
	}
	t.loopOnce.Do(func() {
		l, err := udploop.New()
		if err != nil {
			t.reportErr(fmt.Errorf("udp event loop: %w (outbounds read by goroutines)", err))
			return
		}
		t.loopBatch = udpbatch.New(ReplyBatch, t.maxReply()+replyHeadroom, 0)
		t.loop = l
		go l.Run()
	})
	return t.loop
}

func (t *UDPTable) idle() time.Duration {
	if t.Idle > 0 {
		return t.Idle
	}
	return DefaultUDPIdle
}

func (t *UDPTable) maxSessions() int {
	if t.MaxSessions > 0 {
		return t.MaxSessions
	}
	return DefaultUDPMaxSessions
}

func (t *UDPTable) maxReplySockets() int64 {
	if t.MaxReplySockets > 0 {
		return int64(t.MaxReplySockets)
	}
	return DefaultUDPMaxReplySockets
}

func (t *UDPTable) maxReply() int {
	if t.MaxReply > 0 {
		return t.MaxReply
	}
	return DefaultUDPMaxReply
}

func (t *UDPTable) init() {
	t.startOnce.Do(func() {
		t.mu.Lock()
		t.sessions = make(map[netip.AddrPort]*udpSession)
		t.stop = make(chan struct{})
		if !t.closed {
			t.wg.Add(1)
			go t.sweep()
		}
		t.mu.Unlock()
	})
}

// Stats returns the table's counters.
func (t *UDPTable) Stats() UDPStats {
	t.mu.Lock()
	active := len(t.sessions)
	t.mu.Unlock()
	return UDPStats{
		Active:          active,
		Sessions:        t.sessionsTotal.Load(),
		Refused:         t.refused.Load(),
		Blocked:         t.blocked.Load(),
		Held:            t.held.Load(),
		Sniffed:         t.sniffed.Load(),
		QueueDrops:      t.queueDrops.Load(),
		UpstreamErrors:  t.upstreamErrors.Load(),
		ReplyBindErrors: t.replyBindErrors.Load(),
		ReplyErrors:     t.replyErrors.Load(),
		ReadErrors:      t.readErrors.Load(),
		ReplyLimited:    t.replyLimited.Load(),
		ReplySockets:    int(t.replySockets.Load()),
	}
}

// DatagramServer is a DatagramReader that also reads several datagrams per system call
// (*UDPListener on Linux: recvmmsg). ServeDatagrams calls fn for each datagram until the
// reader fails; err is set for a datagram without its original destination.
type DatagramServer interface {
	ServeDatagrams(fn func(b []byte, src, dst netip.AddrPort, err error)) error
}

// A LoopServer is a DatagramReader whose socket a udploop.Loop can read (*UDPListener on
// Linux). WatchDatagrams moves it into l, which calls fn for each captured datagram from the
// loop's goroutine (b valid during fn); done yields once, when the listener is closed (nil)
// or fails. An error leaves the reader as it was.
type LoopServer interface {
	WatchDatagrams(l *udploop.Loop, fn func(b []byte, src, dst netip.AddrPort, err error)) (done <-chan error, err error)
}

// A LoopReader is a UDPConn whose replies a udploop.Loop can read (a SOCKS5 association or a
// UDP socket, on Linux). WatchReplies moves its socket into l, which then calls fn for each
// reply, from the loop's goroutine, its payload read into b (valid during fn); ended is
// called once, from any goroutine, when the conn has closed (nil: by Close) or failed. The conn's
// writes go on as before; ReadFromAddrPort is not used again. An error leaves the conn as it
// was.
type LoopReader interface {
	WatchReplies(l *udploop.Loop, b *udpbatch.Batch, fn func(payload []byte, from netip.AddrPort), ended func(error)) error
}

// Serve reads datagrams from r and relays them until r fails (is closed). It returns nil when
// the failure is the table's Close or r's closing; sessions live on until Close. A
// DatagramServer is read in batches; each datagram is relayed from this goroutine.
func (t *UDPTable) Serve(r DatagramReader) error {
	t.init()
	if lw, ok := r.(LoopServer); ok {
		if l := t.eventLoop(); l != nil {
			done, err := lw.WatchDatagrams(l, func(b []byte, src, dst netip.AddrPort, err error) {
				if err != nil {
					t.readErrors.Add(1)
					return
				}
				t.Handle(b, src, dst)
			})
			if err == nil {
				return t.served(<-done)
			}
		}
	}
	if ds, ok := r.(DatagramServer); ok && udpbatch.Supported {
		err := ds.ServeDatagrams(func(b []byte, src, dst netip.AddrPort, err error) {
			if err != nil {
				t.readErrors.Add(1)
				return
			}
			t.Handle(b, src, dst)
		})
		return t.served(err)
	}
	buf := make([]byte, maxDatagram)
	for {
		n, src, dst, err := r.ReadDatagram(buf)
		if err != nil {
			if errors.Is(err, ErrNoOriginalDst) {
				t.readErrors.Add(1)
				continue
			}
			return t.served(err)
		}
		t.Handle(buf[:n], src, dst)
	}
}

// served is Serve's result once its reader failed with err.
func (t *UDPTable) served(err error) error {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if err == nil || closed || isClosed(err) {
		return nil
	}
	return fmt.Errorf("read udp datagram: %w", err)
}

// Handle relays one datagram from src to dst (Serve calls it; tests and other inbounds may
// too). b is not retained.
//
// A datagram of a session whose way to dst is open takes no lock and allocates nothing: the
// session is found in t.recent, its way out in s.fast, and the datagram is written from the
// calling goroutine.
func (t *UDPTable) Handle(b []byte, src, dst netip.AddrPort) {
	t.init()
	src = unmapAddrPort(src)
	dst = unmapAddrPort(dst)
	slot := &t.recent[recentSlot(src)]
	if s := slot.Load(); s != nil && s.src == src {
		if d := s.fast.Load(); d != nil && d.dst == dst && !s.over.Load() {
			if oc := d.o.live.Load(); oc != nil {
				s.touch()
				t.send(s, oc.c, b, dst)
				return
			}
		}
	}
	s, refused := t.session(src, dst)
	if s == nil {
		if refused {
			t.reportErr(fmt.Errorf("udp %s → %s: %w", src, dst, ErrSessionLimit))
		}
		return
	}
	s.touch()
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	d, known := s.dests.get(dst)
	if !known {
		if h := s.held[dst]; h != nil {
			// Held for its sniffer: this one waits with the others.
			h.dgs = append(h.dgs, append([]byte(nil), b...))
			t.held.Add(1)
			name, done := h.sniffer.Feed(b)
			if done || len(h.dgs) >= MaxHeldDatagrams {
				t.release(s, dst, h, name)
			}
			s.mu.Unlock()
			return
		}
		name := ""
		if t.Sniff != nil && len(s.held) < maxHeldDests {
			if sn := t.Sniff(dst, b); sn != nil {
				var done bool
				if name, done = sn.Feed(b); !done {
					h := &heldDest{sniffer: sn, dgs: [][]byte{append([]byte(nil), b...)}}
					t.held.Add(1)
					if s.held == nil {
						s.held = make(map[netip.AddrPort]*heldDest)
					}
					s.held[dst] = h
					h.timer = time.AfterFunc(t.sniffTimeout(), func() { t.heldTimeout(s, dst, h) })
					s.mu.Unlock()
					return
				}
			}
		}
		d = t.routeDest(s, dst, name)
	}
	if d.o == nil {
		s.mu.Unlock()
		t.blocked.Add(1)
		s.dropped.Add(1)
		return
	}
	o := d.o
	c := o.conn
	if c == nil {
		if o.failed || len(o.pending) >= maxPendingDatagrams {
			s.mu.Unlock()
			t.queueDrops.Add(1)
			s.dropped.Add(1)
			return
		}
		o.pending = append(o.pending, pendingDatagram{dst: dst, b: append([]byte(nil), b...)})
		s.mu.Unlock()
		return
	}
	// The way to dst is open and nothing is queued ahead (open flushed it under s.mu): the
	// next datagrams to dst may skip the lock.
	if s.fast.Load() != d {
		s.fast.Store(d)
	}
	s.mu.Unlock()
	t.send(s, c, b, dst)
}

// routeDest routes a session's new destination and opens its outbound if it is new; s.mu
// is held. Its o is nil when the route drops it.
func (t *UDPTable) routeDest(s *udpSession, dst netip.AddrPort, name string) *udpDest {
	r := t.Route(s.src, dst, name)
	if name != "" {
		t.sniffed.Add(1)
	}
	if s.dests.len() >= maxSessionDests {
		s.dests.clear()
		s.fast.Store(nil)
	}
	if s.routes == 0 || s.tagDropped && r.Drop == nil {
		// The session is named by its first destination carried, not by one dropped.
		s.tag, s.firstDst, s.tagDropped = r.Tag, dst, r.Drop != nil
	}
	s.routes++
	d := &udpDest{dst: dst}
	s.dests.set(dst, d)
	if r.Drop != nil {
		if s.err == nil {
			s.err = r.Drop
		}
		return d
	}
	o, _ := s.outs.get(r.Outbound)
	if o == nil {
		o = &udpOutbound{name: r.Outbound}
		s.outs.set(r.Outbound, o)
		s.wg.Add(1)
		go t.open(s, o, r.Open, dst)
	}
	d.o = o
	return d
}

func (t *UDPTable) sniffTimeout() time.Duration {
	if t.SniffTimeout > 0 {
		return t.SniffTimeout
	}
	return DefaultSniffTimeout
}

// release routes a held destination with the name its sniffer found (or none) and sends
// its held datagrams in order; s.mu is held. Sending them with the lock held keeps them
// ahead of any datagram the listener reads meanwhile.
func (t *UDPTable) release(s *udpSession, dst netip.AddrPort, h *heldDest, name string) {
	h.timer.Stop()
	delete(s.held, dst)
	o := t.routeDest(s, dst, name).o
	for _, b := range h.dgs {
		switch {
		case o == nil:
			t.blocked.Add(1)
			s.dropped.Add(1)
		case o.conn != nil:
			t.send(s, o.conn, b, dst)
		case o.failed || len(o.pending) >= maxPendingDatagrams:
			t.queueDrops.Add(1)
			s.dropped.Add(1)
		default:
			o.pending = append(o.pending, pendingDatagram{dst: dst, b: b})
		}
	}
	h.dgs = nil
}

// heldTimeout routes a held destination whose sniffer did not decide in time, by its
// address.
func (t *UDPTable) heldTimeout(s *udpSession, dst netip.AddrPort, h *heldDest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.held[dst] != h {
		return
	}
	t.release(s, dst, h, "")
}

func (t *UDPTable) send(s *udpSession, c UDPConn, b []byte, dst netip.AddrPort) {
	if _, err := c.WriteToAddrPort(b, dst); err != nil {
		s.dropped.Add(1)
		if s.over.Load() {
			return // the session ended as this datagram went out: its way was closed
		}
		t.upstreamErrors.Add(1)
		if t.OnError != nil {
			t.OnError(fmt.Errorf("udp %s → %s: %w", s.src, dst, err))
		}
		return
	}
	s.packetsUp.Add(1)
	s.bytesUp.Add(uint64(len(b)))
}

// session returns src's session, creating it for its first datagram to dst; nil when the table
// is closed or full (refused).
func (t *UDPTable) session(src, dst netip.AddrPort) (_ *udpSession, refused bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.sessions[src]; s != nil {
		t.recent[recentSlot(src)].Store(s)
		return s, false
	}
	if t.closed {
		return nil, false
	}
	if len(t.sessions) >= t.maxSessions() {
		t.refused.Add(1)
		return nil, true
	}
	s := &udpSession{src: src, firstDst: dst, start: time.Now()}
	s.touch()
	t.sessions[src] = s
	t.recent[recentSlot(src)].Store(s)
	t.sessionsTotal.Add(1)
	return s, false
}

// open opens o's carrier, flushes what was queued meanwhile and relays replies until it fails.
func (t *UDPTable) open(s *udpSession, o *udpOutbound, open func(context.Context, netip.AddrPort) (UDPConn, error), first netip.AddrPort) {
	defer s.wg.Done()
	var c UDPConn
	var err error
	if open == nil {
		err = errors.New("route has no Open")
	} else {
		ctx, done := s.opening()
		c, err = open(ctx, first)
		done()
	}
	watched := false
	if err == nil {
		// The socket replies from the first destination will leave by, opened now, before any
		// reply: nearly every session's replies come from where it sent, and whoever relays
		// them (the loop, or a goroutine of the session's) then never waits for a socket with
		// a batch of replies in hand. A failure is not reported here: the first reply tries
		// again, and reports.
		if first.Addr().Is4() == s.src.Addr().Is4() {
			t.reply(s, first, false)
		}
		watched = t.watchReplies(s, c)
	}
	s.mu.Lock()
	if err == nil && s.ended {
		c.Close()
		err = errSessionEnded
	}
	if err != nil {
		o.failed = true
		n := len(o.pending)
		o.pending = nil
		s.mu.Unlock()
		t.queueDrops.Add(uint64(n))
		s.dropped.Add(uint64(n))
		if !errors.Is(err, errSessionEnded) {
			t.end(s, fmt.Errorf("open %v: %w", o.name, err), false)
		}
		return
	}
	// The datagrams queued while it opened go first, with the lock held: one the listener reads
	// meanwhile sees the conn only after them, and cannot overtake them.
	o.conn = c
	for _, p := range o.pending {
		t.send(s, c, p.b, p.dst)
	}
	o.pending = nil
	o.live.Store(&liveConn{c})
	s.mu.Unlock()
	if watched {
		return
	}
	// The replies are relayed by a goroutine of their own: this one's stack grew deep opening
	// the way out (a SOCKS handshake) and would stay that size, idle, as long as the session.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t.relayReplies(s, c)
	}()
}

var errSessionEnded = errors.New("session ended")

// watchReplies hands c's replies to the table's loop, if c can be watched: no goroutine
// waits for them then, and each is delivered from the goroutine that read it.
func (t *UDPTable) watchReplies(s *udpSession, c UDPConn) bool {
	lr, ok := c.(LoopReader)
	if !ok {
		return false
	}
	l := t.eventLoop()
	if l == nil {
		return false
	}
	last := &lastReply{inline: true} // the loop's alone
	s.wg.Add(1)
	err := lr.WatchReplies(l, t.loopBatch, func(b []byte, from netip.AddrPort) {
		t.deliver(s, last, b, from)
	}, func(err error) {
		// From any goroutine, possibly one that holds s.mu (a send whose conn closed under
		// it): the session is ended from a goroutine of its own.
		go func() {
			defer s.wg.Done()
			t.outboundEnded(s, err)
		}()
	})
	if err != nil {
		s.wg.Done()
		return false
	}
	return true
}

// outboundEnded ends s, unless it has ended, because its outbound stopped with err.
func (t *UDPTable) outboundEnded(s *udpSession, err error) {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if !ended {
		if err == nil {
			err = net.ErrClosed
		}
		t.end(s, fmt.Errorf("outbound ended: %w", err), false)
	}
}

// relayReplies copies replies from c to the client, each from its remote's address. The
// reply socket last used is kept, with the session's reply generation it was taken in: a
// reply from the same remote takes no lock while no reply socket of the session has closed.
//
// A BatchReader is read in batches from buffers lent by the table's pool only while replies
// are in hand: a session waiting for its replies holds no buffer.
func (t *UDPTable) relayReplies(s *udpSession, c UDPConn) {
	var last lastReply
	var err error
	batched := false
	if br, ok := c.(BatchReader); ok && udpbatch.Supported {
		err = br.ServeReplies(t.replyPool(), func(b []byte, from netip.AddrPort) bool {
			t.deliver(s, &last, b, from)
			return true
		})
		batched = !errors.Is(err, udpbatch.ErrUnsupported)
	}
	if !batched {
		buf := make([]byte, t.maxReply())
		for {
			var n int
			var from netip.AddrPort
			n, from, err = c.ReadFromAddrPort(buf)
			if err != nil {
				break
			}
			t.deliver(s, &last, buf[:n], from)
		}
	}
	t.outboundEnded(s, err)
}

// BatchReader is a UDPConn that can read its replies several at a time (a SOCKS5 association
// or a UDP socket, on Linux: recvmmsg). A wrapper whose carrier cannot returns an error
// wrapping udpbatch.ErrUnsupported at once, and is read one reply at a time. ServeReplies calls fn for each reply, its payload in
// a buffer of a batch from pool (valid only during fn), until fn returns false or the carrier
// fails or is closed; the error says why. Buffers are pool.Size() bytes: a reply's payload is
// at most that less what the carrier's own header needs.
type BatchReader interface {
	ServeReplies(pool *udpbatch.Pool, fn func(b []byte, from netip.AddrPort) bool) error
}

// ReplyBatch is how many replies one read of a session's outbound takes at most.
const ReplyBatch = 8

// replyHeadroom is what a BatchReader's buffers hold beyond MaxReply: a SOCKS5 UDP header
// (at most 262 bytes) before the payload.
const replyHeadroom = 512

func (t *UDPTable) replyPool() *udpbatch.Pool {
	t.replyPoolOnce.Do(func() { t.replyBatches = udpbatch.NewPool(ReplyBatch, t.maxReply()+replyHeadroom, 0) })
	return t.replyBatches
}

// lastReply is a relay goroutine's reply socket last used, with the session's reply
// generation it was taken in.
type lastReply struct {
	from   netip.AddrPort
	r      *replySocket
	gen    uint64
	inline bool // the loop's: reply sockets are opened on its own goroutine
}

// deliver sends one reply from remote from to the session's client.
func (t *UDPTable) deliver(s *udpSession, last *lastReply, b []byte, from netip.AddrPort) {
	s.touch()
	from = unmapAddrPort(from)
	if from.Addr().Is4() != s.src.Addr().Is4() {
		t.replyErrors.Add(1)
		s.dropped.Add(1)
		t.reportErr(&ReplyError{Client: s.src, Remote: from, Err: ErrReplyFamily})
		return
	}
	var rc ReplyConn
	if last.r != nil && last.from == from && s.replyGen.Load() == last.gen {
		last.r.used.Store(s.replyTick.Add(1))
		rc = last.r.rc
	} else {
		gen := s.replyGen.Load()
		r, err := t.reply(s, from, last.inline)
		if err != nil {
			if errors.Is(err, ErrReplyLimit) {
				t.replyLimited.Add(1)
			} else {
				t.replyBindErrors.Add(1)
			}
			s.dropped.Add(1)
			t.reportErr(&ReplyError{Client: s.src, Remote: from, Err: err})
			return
		}
		*last = lastReply{from: from, r: r, gen: gen}
		rc = r.rc
	}
	if _, err := rc.WriteToUDPAddrPort(b, s.src); err != nil {
		t.replyErrors.Add(1)
		s.dropped.Add(1)
		t.reportErr(&ReplyError{Client: s.src, Remote: from, Err: err})
		return
	}
	s.packetsDown.Add(1)
	s.bytesDown.Add(uint64(len(b)))
}

func (t *UDPTable) reportErr(err error) {
	if t.OnError != nil {
		t.OnError(err)
	}
}

// reply returns the session's reply socket for remote, opening it on first use. A failed open
// is not cached: the port may be free again for the next reply. At the session's bound or the
// table's, the session's least recently used reply socket makes room; a session with none to
// give up (the table is full with other sessions' sockets) gets ErrReplyLimit.
//
// inline opens it on the calling goroutine (the loop's, whose stack is one for all sessions).
func (t *UDPTable) reply(s *udpSession, remote netip.AddrPort, inline bool) (*replySocket, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errSessionEnded
	}
	tick := s.replyTick.Add(1)
	if r, _ := s.replies.get(remote); r != nil {
		r.used.Store(tick)
		return r, nil
	}
	if s.replies.len() >= maxSessionReplies {
		t.evictReply(s, false)
	} else if t.replySockets.Load() >= t.maxReplySockets() && !t.replyOpen(remote) {
		// At the table's bound only a socket of this session's alone frees a descriptor.
		if !t.evictReply(s, true) {
			return nil, ErrReplyLimit
		}
	}
	sr, err := t.acquireReply(remote, inline)
	if err != nil {
		return nil, err
	}
	r := &replySocket{rc: sr.rc, shared: sr}
	r.used.Store(tick)
	s.replies.set(remote, r)
	return r, nil
}

// sharedReply is a reply socket and the number of sessions using it. The first session to
// need it opens it; the others that need it meanwhile wait for ready (a bind takes
// microseconds) rather than bind the same address again.
type sharedReply struct {
	rc    ReplyConn // set before ready is closed; nil if the open failed
	err   error     // the open's failure, set before ready is closed
	ready chan struct{}
	refs  int // under the table's sharedMu
}

// acquireReply returns the reply socket for remote, opening it when no session uses one. At
// the table's bound for descriptors a new remote gets ErrReplyLimit (the caller, holding s.mu,
// has let one of the session's own go first).
func (t *UDPTable) acquireReply(remote netip.AddrPort, inline bool) (*sharedReply, error) {
	t.sharedMu.Lock()
	if sr := t.shared[remote]; sr != nil {
		sr.refs++
		t.sharedMu.Unlock()
		<-sr.ready
		if sr.err != nil {
			t.releaseReply(remote, sr)
			return nil, sr.err
		}
		return sr, nil
	}
	if t.replySockets.Load() >= t.maxReplySockets() {
		t.sharedMu.Unlock()
		return nil, ErrReplyLimit
	}
	if t.shared == nil {
		t.shared = make(map[netip.AddrPort]*sharedReply)
	}
	sr := &sharedReply{ready: make(chan struct{}), refs: 1}
	t.shared[remote] = sr
	t.replySockets.Add(1)
	t.sharedMu.Unlock()
	var rc ReplyConn
	var err error
	if inline && t.OpenReply != nil {
		rc, err = t.OpenReply(remote)
	} else {
		rc, err = t.openReply(remote)
	}
	if err != nil {
		// Not kept: the port may be free again for the next reply.
		t.sharedMu.Lock()
		if t.shared[remote] == sr {
			delete(t.shared, remote)
		}
		t.sharedMu.Unlock()
		t.replySockets.Add(-1)
		sr.err = err
		close(sr.ready)
		t.releaseReply(remote, sr)
		return nil, err
	}
	sr.rc = rc
	close(sr.ready)
	return sr, nil
}

// releaseReply gives up one session's use of remote's reply socket, closing it after the
// last; sr's open has finished.
func (t *UDPTable) releaseReply(remote netip.AddrPort, sr *sharedReply) {
	t.sharedMu.Lock()
	sr.refs--
	last := sr.refs == 0 && sr.err == nil
	if last && t.shared[remote] == sr {
		delete(t.shared, remote)
	}
	t.sharedMu.Unlock()
	if last {
		t.replySockets.Add(-1)
		sr.rc.Close()
	}
}

// replyOpen reports whether some session has a reply socket for remote.
func (t *UDPTable) replyOpen(remote netip.AddrPort) bool {
	t.sharedMu.Lock()
	defer t.sharedMu.Unlock()
	return t.shared[remote] != nil
}

// openReply runs OpenReply on a goroutine of its own and waits for it: opening a socket
// takes a deep stack, which the relay goroutine calling would otherwise keep for its life.
func (t *UDPTable) openReply(remote netip.AddrPort) (ReplyConn, error) {
	type opened struct {
		rc  ReplyConn
		err error
	}
	if t.OpenReply == nil {
		return nil, errors.New("udp table has no OpenReply")
	}
	ch := make(chan opened, 1)
	go func() {
		rc, err := t.OpenReply(remote)
		ch <- opened{rc, err}
	}()
	o := <-ch
	return o.rc, o.err
}

// evictReply lets go of s's least recently used reply socket, or with alone of the least
// recently used that no other session uses (whose release closes it); s.mu is held.
func (t *UDPTable) evictReply(s *udpSession, alone bool) bool {
	var oldest netip.AddrPort
	var r *replySocket
	if alone {
		t.sharedMu.Lock()
	}
	s.replies.each(func(remote netip.AddrPort, x *replySocket) {
		if alone && x.shared.refs != 1 {
			return
		}
		if r == nil || x.used.Load() < r.used.Load() {
			oldest, r = remote, x
		}
	})
	if alone {
		t.sharedMu.Unlock()
	}
	if r == nil {
		return false
	}
	s.replyGen.Add(1) // before the close: a relay goroutine holding it must look again
	s.replies.del(oldest)
	t.releaseReply(oldest, r.shared)
	return true
}

// end removes s from the table and closes its outbounds; its goroutines finish and report in
// the background. It is idempotent.
func (t *UDPTable) end(s *udpSession, cause error, idle bool) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.over.Store(true)
	s.fast.Store(nil)
	// finish is counted before anyone can see the session ended: Close, finding it ended,
	// must still wait for it.
	t.wg.Add(1)
	s.endErr, s.idle = cause, idle
	for dst, h := range s.held {
		h.timer.Stop()
		s.dropped.Add(uint64(len(h.dgs)))
		delete(s.held, dst)
	}
	var conns []UDPConn
	s.outs.each(func(_ any, o *udpOutbound) {
		if o.conn != nil {
			conns = append(conns, o.conn)
		}
	})
	if s.cancelOpens != nil {
		s.cancelOpens()
	}
	s.mu.Unlock()
	t.mu.Lock()
	if t.sessions[s.src] == s {
		delete(t.sessions, s.src)
	}
	t.recent[recentSlot(s.src)].CompareAndSwap(s, nil)
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	go t.finish(s)
}

// EndSession ends src's session now, if it is the one that started at start (a later session
// of the same client is another one): its outbound and reply sockets are closed, it leaves the
// table at once, and its report, with cause as Err, follows from its own goroutine. The next
// datagram from src starts a new session. It reports whether there was such a session.
func (t *UDPTable) EndSession(src netip.AddrPort, start time.Time, cause error) bool {
	src = unmapAddrPort(src)
	t.mu.Lock()
	s := t.sessions[src]
	t.mu.Unlock()
	if s == nil || !s.start.Equal(start) {
		return false
	}
	t.end(s, cause, false)
	return true
}

// EndSessions ends every live session as EndSession does and returns how many there were.
func (t *UDPTable) EndSessions(cause error) int {
	t.mu.Lock()
	all := make([]*udpSession, 0, len(t.sessions))
	for _, s := range t.sessions {
		all = append(all, s)
	}
	t.mu.Unlock()
	for _, s := range all {
		t.end(s, cause, false)
	}
	return len(all)
}

// finish waits for s's goroutines, closes its reply sockets and reports it.
func (t *UDPTable) finish(s *udpSession) {
	defer t.wg.Done()
	s.wg.Wait()
	s.mu.Lock()
	s.replyGen.Add(1)
	s.replies.each(func(remote netip.AddrPort, r *replySocket) { t.releaseReply(remote, r.shared) })
	s.replies.clear()
	err := s.endErr
	if err == nil || errors.Is(err, errTableClosed) {
		err = nil
		if s.packetsUp.Load() == 0 {
			err = s.err // nothing carried: the drop is what became of the session
		}
	}
	r := s.report()
	r.Err, r.DropErr, r.Idle = err, s.err, s.idle
	s.mu.Unlock()
	if t.OnSessionEnd != nil {
		t.OnSessionEnd(r)
	}
}

// Sessions reports the live sessions so far, oldest first (Err and Idle are unset).
func (t *UDPTable) Sessions() []UDPSessionReport {
	t.mu.Lock()
	ss := make([]*udpSession, 0, len(t.sessions))
	for _, s := range t.sessions {
		ss = append(ss, s)
	}
	t.mu.Unlock()
	out := make([]UDPSessionReport, 0, len(ss))
	for _, s := range ss {
		s.mu.Lock()
		out = append(out, s.report())
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// report is s's report so far; s.mu is held.
func (s *udpSession) report() UDPSessionReport {
	return UDPSessionReport{
		Src: s.src, FirstDst: s.firstDst, Tag: s.tag, Start: s.start,
		Duration:  time.Since(s.start),
		PacketsUp: s.packetsUp.Load(), BytesUp: s.bytesUp.Load(),
		PacketsDown: s.packetsDown.Load(), BytesDown: s.bytesDown.Load(),
		Dests: s.routes, Dropped: s.dropped.Load(),
	}
}

// sweep ends idle sessions.
func (t *UDPTable) sweep() {
	defer t.wg.Done()
	idle := t.idle()
	tick := time.NewTicker(min(max(idle/4, 20*time.Millisecond), 5*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case now := <-tick.C:
			var expired []*udpSession
			t.mu.Lock()
			for _, s := range t.sessions {
				if now.Sub(time.Unix(0, s.last.Load())) >= idle {
					expired = append(expired, s)
				}
			}
			t.mu.Unlock()
			for _, s := range expired {
				t.end(s, nil, true)
			}
		}
	}
}

// Close ends every session (each is reported) and waits for them. Serve's reader must be
// closed by the caller; datagrams arriving meanwhile are dropped.
func (t *UDPTable) Close() error {
	t.init()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.closed = true
	close(t.stop)
	all := make([]*udpSession, 0, len(t.sessions))
	for _, s := range t.sessions {
		all = append(all, s)
	}
	t.mu.Unlock()
	for _, s := range all {
		t.end(s, errTableClosed, false)
	}
	t.wg.Wait()
	t.loopOnce.Do(func() {}) // none is made after this
	if t.loop != nil {
		t.loop.Close()
	}
	return nil
}

type udpSession struct {
	src, firstDst netip.AddrPort
	start         time.Time
	last          atomic.Int64   // unix nanoseconds of the last datagram either way
	wg            sync.WaitGroup // outbound goroutines

	packetsUp, bytesUp, packetsDown, bytesDown, dropped atomic.Uint64

	over atomic.Bool             // ended, readable without mu
	fast atomic.Pointer[udpDest] // the destination last sent to, with its way out
	// replyGen changes whenever a reply socket of the session closes: a relay goroutine's
	// cached socket is good while the generation it was taken in holds.
	replyGen atomic.Uint64

	mu         sync.Mutex
	dests      smallMap[netip.AddrPort, *udpDest] // routed destinations; o nil: dropped by the route
	held       map[netip.AddrPort]*heldDest       // destinations not routed yet: their sniffer reads
	outs       smallMap[any, *udpOutbound]
	replies    smallMap[netip.AddrPort, *replySocket]
	replyTick  atomic.Uint64 // orders replies' uses, for evicting the least recently used socket
	tag        any
	routes     int
	err        error // first drop reason
	endErr     error
	tagDropped bool // tag (and firstDst) is a dropped destination's
	ended      bool
	idle       bool
	// While outbounds open, a context that ends with the session (their dials and
	// handshakes), shared by them; none afterwards: a context kept for the session's life
	// cost half a kilobyte (its own, and the map and channel a child's WithTimeout adds).
	opens       int
	openCtx     context.Context
	cancelOpens context.CancelFunc
}

func (s *udpSession) touch() { s.last.Store(time.Now().UnixNano()) }

// opening returns the context an outbound opens in, ended with the session; done, called
// once the open returns, lets it go when no other open needs it.
func (s *udpSession) opening() (_ context.Context, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.openCtx == nil {
		s.openCtx, s.cancelOpens = context.WithCancel(context.Background())
		if s.ended {
			s.cancelOpens()
		}
	}
	s.opens++
	return s.openCtx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.opens--; s.opens == 0 {
			s.cancelOpens()
			s.openCtx, s.cancelOpens = nil, nil
		}
	}
}

// replySocket is a session's reply socket for one remote, with its last use.
type replySocket struct {
	rc     ReplyConn
	used   atomic.Uint64 // the session's replyTick at its last use
	shared *sharedReply  // rc's, shared with the other sessions remote answers
}

type udpOutbound struct {
	name    any     // the route's Outbound, printed in errors
	conn    UDPConn // nil while opening
	failed  bool
	pending []pendingDatagram
	live    atomic.Pointer[liveConn] // conn, once the queue is flushed: readable without the session's lock
}

type liveConn struct{ c UDPConn }

// udpDest is a session's routed destination and its way out (nil: dropped by the route).
// Once that is open, Handle sends to it without locks (udpSession.fast).
type udpDest struct {
	dst netip.AddrPort
	o   *udpOutbound
}

// smallMap is a map that keeps its first entry inline: nearly every session has one
// destination, one outbound and one remote, and a Go map costs a few hundred bytes even for
// one entry.
type smallMap[K comparable, V any] struct {
	k0   K
	v0   V
	has0 bool
	more map[K]V
}

func (m *smallMap[K, V]) get(k K) (V, bool) {
	if m.has0 && m.k0 == k {
		return m.v0, true
	}
	v, ok := m.more[k]
	return v, ok
}

func (m *smallMap[K, V]) set(k K, v V) {
	if m.has0 && m.k0 == k {
		m.v0 = v
		return
	}
	if _, ok := m.more[k]; !ok && !m.has0 {
		m.k0, m.v0, m.has0 = k, v, true
		return
	}
	if m.more == nil {
		m.more = make(map[K]V)
	}
	m.more[k] = v
}

func (m *smallMap[K, V]) del(k K) {
	if m.has0 && m.k0 == k {
		var zk K
		var zv V
		m.k0, m.v0, m.has0 = zk, zv, false
		return
	}
	delete(m.more, k)
}

func (m *smallMap[K, V]) len() int {
	n := len(m.more)
	if m.has0 {
		n++
	}
	return n
}

func (m *smallMap[K, V]) clear() {
	var zk K
	var zv V
	m.k0, m.v0, m.has0 = zk, zv, false
	clear(m.more)
}

func (m *smallMap[K, V]) each(fn func(K, V)) {
	if m.has0 {
		fn(m.k0, m.v0)
	}
	for k, v := range m.more {
		fn(k, v)
	}
}

// recentSlots is the size of the table's lock-free session index (8 KiB of pointers).
const recentSlots = 1024

// recentSlot hashes a client address to its slot in UDPTable.recent.
func recentSlot(ap netip.AddrPort) int {
	a := ap.Addr().As16()
	h := uint32(ap.Port())*0x9e3779b1 ^ binary.LittleEndian.Uint32(a[12:])*0x85ebca6b ^ binary.LittleEndian.Uint32(a[8:])
	return int((h ^ h>>15) % recentSlots)
}

// heldDest is a destination whose first datagrams are held for its sniffer.
type heldDest struct {
	sniffer UDPSniffer
	dgs     [][]byte
	timer   *time.Timer
}

type pendingDatagram struct {
	dst netip.AddrPort
	b   []byte
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4In6() {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return ap
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
