package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/redirect"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/sniff"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/upstream"
)

// startUDP opens the transparent UDP (TPROXY) listener when cfg.Transparent.UDP is on and LAN
// capture is configured, and serves it through a nat.UDPTable until Run closes it.
//
// Routing is per destination, cached per session (see nat.UDPTable): the first datagram of a
// session to each new destination asks the Router with Flow{Network: route.UDP, Src, Dst, Inbound:
// InboundTProxy}, so a blocking rule holds even inside a session that already talks elsewhere;
// destinations routed to the same upstream share one association. The session's log line names
// the first destination's rule and upstream.
//
// A listener that stops with an error (not closed) is reported on /healthz through health, as
// "transparent udp [::]:PORT", until a reload opens it again or turns it off.
func (g *Gateway) startUDP(ctx context.Context, cfg *configs.Config, log *logrus.Logger, health *listenerHealth) ([]io.Closer, error) {
	t := cfg.Transparent
	if !t.UDP || len(cfg.LAN.Interfaces) == 0 {
		return nil, nil
	}
	name := transparentUDPName(t.UDPPort)
	ln, err := nat.ListenUDPTransparent(ctx, net.JoinHostPort("::", strconv.Itoa(int(t.UDPPort))))
	if err != nil {
		return nil, err
	}
	health.forget(name)
	mark := redirect.MarkControl(cfg.Mark)
	u := &udpInbound{
		g:              g,
		port:           t.UDPPort,
		direct:         &upstream.Direct{Control: mark, Own: g.Own},
		withoutSupport: t.UDPOverTCPUpstream,
		dnsOverTCP:     t.DNSOverTCP,
		quic:           t.QUIC,
		sniffing:       g.Sniff,
		dialTimeout:    time.Duration(cfg.Timeouts.Dial),
		log:            g.Log.WithFields(logrus.Fields{"inbound": route.TProxy, "network": "udp"}),
	}
	u.table = &nat.UDPTable{
		Idle:         time.Duration(t.UDPIdle),
		MaxSessions:  t.UDPMaxSessions,
		Route:        u.route,
		OpenReply:    g.fds.openReply(func(remote netip.AddrPort) (nat.ReplyConn, error) { return nat.ListenReply(remote, mark) }),
		OnSessionEnd: u.logSession,
		OnError:      u.logError,
	}
	if u.quic == configs.QUICSniff && u.sniffing != nil {
		u.table.Sniff, u.table.SniffTimeout = u.sniffQUIC, u.sniffing.Timeout
	}
	g.mu.Lock()
	g.udpTable = u.table
	g.mu.Unlock()
	g.Stats.SetUDPSource(func() UDPCounts {
		st := u.table.Stats()
		return UDPCounts{Active: int64(st.Active), Total: st.Sessions, ReplyBindFailures: st.ReplyBindErrors}
	})
	served := make(chan struct{})
	go func() {
		defer close(served)
		serveUDPTable(u.table, ln, log, health, name)
	}()
	log.WithFields(logrus.Fields{
		"udp_port": t.UDPPort, "udp_idle": time.Duration(t.UDPIdle).String(),
		"udp_max_sessions": t.UDPMaxSessions, "udp_without_support": t.UDPOverTCPUpstream,
		"dns_over_tcp": t.DNSOverTCP, "quic": t.QUIC,
	}).Info("transparent UDP capture on")
	return []io.Closer{closerFunc(func() error {
		err := ln.Close()
		<-served
		health.forget(name) // closed on purpose: no longer meant to be open
		u.table.Close()
		g.mu.Lock()
		if g.udpTable == u.table {
			g.udpTable = nil
		}
		g.mu.Unlock()
		st := u.table.Stats()
		u.log.WithFields(logrus.Fields{
			"sessions": st.Sessions, "refused": st.Refused, "blocked": st.Blocked,
			"queue_drops": st.QueueDrops, "upstream_errors": st.UpstreamErrors,
			"reply_bind_errors": st.ReplyBindErrors, "reply_errors": st.ReplyErrors, "reply_limited": st.ReplyLimited,
			"read_errors": st.ReadErrors,
		}).Info("transparent UDP stopped")
		return err
	})}, nil
}

// serveUDPTable serves the transparent UDP listener r through table until r is closed; a
// listener that stops otherwise is logged and reported down on /healthz as name.
func serveUDPTable(table *nat.UDPTable, r nat.DatagramReader, log *logrus.Logger, health *listenerHealth, name string) {
	if err := table.Serve(r); err != nil {
		log.WithError(err).Error("transparent UDP listener stopped")
		health.stopped(name, err)
	}
}

// transparentUDPName names the transparent UDP listener on port for /healthz.
func transparentUDPName(port uint16) string {
	return "transparent udp " + net.JoinHostPort("::", strconv.Itoa(int(port)))
}

// fakeOutbound is the way out of one fake-ip destination of a session.
type fakeOutbound struct {
	up   any
	fake netip.AddrPort
}

// fakeCarrier carries a session's datagrams to a fake-ip destination to the real address its
// name resolved to, and its replies back from the fake one.
type fakeCarrier struct {
	nat.UDPConn
	fake, real netip.AddrPort
}

func (c *fakeCarrier) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	if dst == c.fake {
		dst = c.real
	}
	return c.UDPConn.WriteToAddrPort(b, dst)
}

func (c *fakeCarrier) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, from, err := c.UDPConn.ReadFromAddrPort(b)
	if from == c.real || (from.Addr().Unmap() == c.real.Addr() && from.Port() == c.real.Port()) {
		from = c.fake
	}
	return n, from, err
}

// ServeReplies reads the carrier's replies in batches when it can, each from the fake
// address when it comes from the real one.
func (c *fakeCarrier) ServeReplies(pool *udpbatch.Pool, fn func([]byte, netip.AddrPort) bool) error {
	br, ok := c.UDPConn.(nat.BatchReader)
	if !ok {
		return udpbatch.ErrUnsupported
	}
	return br.ServeReplies(pool, func(b []byte, from netip.AddrPort) bool {
		if from == c.real || (from.Addr().Unmap() == c.real.Addr() && from.Port() == c.real.Port()) {
			from = c.fake
		}
		return fn(b, from)
	})
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// udpInbound connects the nat table to the gateway's router, upstreams and logger.
type udpInbound struct {
	port           uint16 // the transparent listener's port (transparent.udp_port)
	g              *Gateway
	table          *nat.UDPTable
	direct         *upstream.Direct
	withoutSupport configs.UDPFallback
	dnsOverTCP     bool
	quic           configs.QUICMode // transparent.quic
	sniffing       *Sniffing        // nil: no QUIC sniffing
	dialTimeout    time.Duration
	log            *logrus.Entry
	dnsReplyWait   time.Duration // 0: dnsReplyWaitDefault

	replyErrLog, sendErrLog rateLimit
}

// errQUICBlocked drops captured UDP to port 443 under transparent.quic: block: a block
// (errors.Is ErrBlocked), logged and counted like a rule's.
var errQUICBlocked error = quicBlocked{}

type quicBlocked struct{}

func (quicBlocked) Error() string        { return "quic blocked (transparent.quic: block)" }
func (quicBlocked) Is(target error) bool { return target == ErrBlocked }

// quicBlockRule names transparent.quic: block in a session's line, where a rule would be.
const quicBlockRule = "transparent.quic"

// quicPort is the port transparent.quic applies to: HTTP/3's.
const quicPort = 443

// sniffQUIC holds a new destination's datagrams for the QUIC Initial parser when its port
// is a sniff port and the first datagram looks like a QUIC v1 or v2 Initial; anything else
// is routed at once.
func (u *udpInbound) sniffQUIC(dst netip.AddrPort, b []byte) nat.UDPSniffer {
	if !u.sniffing.applies(dst.Port()) || !sniff.IsQUICInitial(b) {
		return nil
	}
	return &quicSniffer{}
}

// quicSniffer adapts sniff.QUICSniffer to the nat table.
type quicSniffer struct{ q sniff.QUICSniffer }

func (s *quicSniffer) Feed(b []byte) (string, bool) {
	name, err := s.q.Feed(b)
	return name, !errors.Is(err, sniff.ErrIncomplete)
}

// udpTag is what a session's route hands back in its report: the decision and the flow it
// was made for (with the name, when one was known).
type udpTag struct {
	d route.Decision
	f route.Flow
}

// tagged returns the decision and flow of a nat route's Tag.
func tagged(tag any) (route.Decision, route.Flow, bool) {
	t, ok := tag.(udpTag)
	return t.d, t.f, ok
}

// route asks the Router about one destination of a session; name is the QUIC server name
// sniffed from its first datagrams, if any. It runs on the listener's goroutine (or, for a
// destination whose datagrams were held, on the hold's timer); the Router is pure
// computation.
func (u *udpInbound) route(src, dst netip.AddrPort, name string) nat.UDPRoute {
	r, f := u.decide(src, dst, name)
	if d, ok := r.Tag.(route.Decision); ok {
		r.Tag = udpTag{d: d, f: f}
	}
	return r
}

func (u *udpInbound) decide(src, dst netip.AddrPort, name string) (nat.UDPRoute, route.Flow) {
	f := route.Flow{Network: route.UDP, Src: src, Dst: dst, Inbound: capturedInbound(src, route.TProxy)}
	if dst.Port() == u.port && isLocalAddr(dst.Addr()) {
		// Sent to the listener itself, not captured (the rules let traffic to this host
		// through): relaying it would send it to the listener again from a new port, a new
		// session each time, until the table is full.
		u.logDrop(src, dst, errListenerLoop)
		// Counted once, as the session's refusal, when it ends, unless the session carried
		// datagrams to other destinations (then only they are dropped).
		return nat.UDPRoute{Drop: errListenerLoop}, f
	}
	if u.quic == configs.QUICBlock && dst.Port() == quicPort {
		u.logDrop(src, dst, errQUICBlocked)
		return nat.UDPRoute{Drop: errQUICBlocked, Tag: route.Decision{Action: route.ActionBlock, Rule: quicBlockRule}}, f
	}
	if err := u.g.nameFlow(&f); err != nil {
		u.logDrop(src, dst, err)
		return nat.UDPRoute{Drop: err}, f
	}
	if f.Host == "" && name != "" {
		// A claim, like TLS SNI on TCP: it routes the session; the datagrams still go to the
		// address the client chose (a name from socksgate's DNS is better, and kept).
		f.Host, f.From = name, route.NameSniff
	}
	d := u.g.router().Route(context.Background(), f)
	d.CountHit() // once per destination of a session: the table routes each once
	switch {
	case d.Action == route.ActionBlock:
		u.logDrop(src, dst, ErrBlocked)
		return nat.UDPRoute{Drop: ErrBlocked, Tag: d}, f
	case d.Upstream == nil:
		return nat.UDPRoute{Drop: fmt.Errorf("rule %s: no upstream", d.Rule), Tag: d}, f
	}
	if f.From == route.NameFakeIP {
		// A fake address leads nowhere: the name is resolved the way its rule says (through
		// the upstream's resolver for a proxy rule) and the datagrams go to what it gave, their
		// replies coming back from the fake address. One way out per fake destination.
		return nat.UDPRoute{
			Outbound: fakeOutbound{upstream.Key(d.Upstream), dst},
			Open: u.g.fds.openUDP(func(ctx context.Context, first netip.AddrPort) (nat.UDPConn, error) {
				addrs, _, err := u.g.resolveName(ctx, f, d)
				if err != nil {
					return nil, fmt.Errorf("resolve %s: %w", f.Host, err)
				}
				c, err := u.open(ctx, d.Upstream)
				if err != nil {
					return nil, err
				}
				return &fakeCarrier{UDPConn: c, fake: dst, real: netip.AddrPortFrom(addrs[0], dst.Port())}, nil
			}),
			Tag: d,
		}, f
	}
	return nat.UDPRoute{
		Outbound: upstream.Key(d.Upstream), // by identity: two upstreams may share a URL
		Open: u.g.fds.openUDP(func(ctx context.Context, first netip.AddrPort) (nat.UDPConn, error) {
			return u.open(ctx, d.Upstream)
		}),
		Tag: d,
	}, f
}

// open opens a session's way out through up: its UDP association, or, for an upstream that
// carries no UDP, DNS over TCP through it and the udp_without_support policy for the rest.
// ctx bounds the open only.
func (u *udpInbound) open(ctx context.Context, up upstream.Upstream) (nat.UDPConn, error) {
	hctx, cancel := ctx, context.CancelFunc(func() {})
	if u.dialTimeout > 0 {
		hctx, cancel = context.WithTimeout(ctx, u.dialTimeout)
	}
	defer cancel()
	pc, err := up.ListenPacket(hctx)
	if err == nil {
		return udpCarrier(pc), nil
	}
	if !errors.Is(err, upstream.ErrUDPUnsupported) {
		return nil, err
	}
	var other nat.UDPConn
	if u.withoutSupport == configs.UDPDirect {
		pc, derr := u.direct.ListenPacket(hctx)
		if derr != nil {
			return nil, fmt.Errorf("%w; direct instead: %w", err, derr)
		}
		other = udpCarrier(pc)
	} else if !u.dnsOverTCP {
		return nil, err
	}
	return newFallbackConn(up, u.dnsOverTCP, other, err, u.dialTimeout, u.dnsReplyWait), nil
}

// logDrop logs that a session's datagrams to one destination are dropped: once per session
// and destination (route runs once for each), at info for a refusal, at debug for a rule's
// block. The session's line counts the datagrams.
func (u *udpInbound) logDrop(src, dst netip.AddrPort, err error) {
	logUDPDrop(u.log, src, dst.String(), err)
}

func logUDPDrop(log *logrus.Entry, src netip.AddrPort, dst string, err error) {
	if log == nil {
		return
	}
	l := log.WithFields(logrus.Fields{"src": src.String(), "dst": dst}).WithError(err)
	if errors.Is(err, ErrBlocked) {
		l.Debug("udp datagrams to this destination dropped")
		return
	}
	l.Info("udp datagrams to this destination dropped")
}

// logSession ends the session's record: its one line and its one metrics update. A session
// that carried datagrams is not refused or blocked as a whole because one of its destinations
// was: its line gives the datagrams dropped and the first reason.
func (u *udpInbound) logSession(r nat.UDPSessionReport) {
	d, f, ok := tagged(r.Tag)
	if !ok {
		f = route.Flow{Network: route.UDP, Src: r.Src, Dst: r.FirstDst, Inbound: capturedInbound(r.Src, route.TProxy)}
	}
	extra := logrus.Fields{"packets_up": r.PacketsUp, "packets_down": r.PacketsDown, "dests": r.Dests}
	if r.Dropped > 0 {
		extra["dropped"] = r.Dropped
	}
	if r.DropErr != nil && r.Err == nil {
		extra["drop_reason"] = r.DropErr.Error()
	}
	if r.Idle {
		extra["end"] = "idle"
	}
	u.g.ended(flowEnd{
		f: f, d: d,
		up: int64(r.BytesUp), down: int64(r.BytesDown), dur: r.Duration, err: r.Err, extra: extra,
	})
	u.g.deviceEnd(udpKey{r.Src, r.Start}, f, int64(r.BytesUp), int64(r.BytesDown))
}

// logError logs per-datagram drops, at most one line a second per kind, with the number of
// lines suppressed since the last one and the table's total.
func (u *udpInbound) logError(err error) {
	var re *nat.ReplyError
	if errors.As(err, &re) {
		if n, ok := u.replyErrLog.allow(time.Now()); ok {
			st := u.table.Stats()
			u.log.WithError(err).WithFields(logrus.Fields{
				"src": re.Client.String(), "remote": re.Remote.String(), "suppressed": n,
				"reply_bind_errors": st.ReplyBindErrors, "reply_errors": st.ReplyErrors, "reply_limited": st.ReplyLimited,
			}).Warn("udp reply dropped")
		}
		return
	}
	if n, ok := u.sendErrLog.allow(time.Now()); ok {
		u.log.WithError(err).WithFields(logrus.Fields{
			"suppressed": n, "upstream_errors": u.table.Stats().UpstreamErrors,
		}).Warn("udp datagram dropped")
	}
}

// rateLimit lets one event a second through and counts the rest.
type rateLimit struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLimit) allow(now time.Time) (suppressed int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < time.Second {
		r.suppressed++
		return 0, false
	}
	r.last, suppressed, r.suppressed = now, r.suppressed, 0
	return suppressed, true
}

// udpCarrier adapts an upstream's PacketConn to nat.UDPConn, without allocating per datagram
// for SOCKS5 associations and UDP sockets.
func udpCarrier(pc net.PacketConn) nat.UDPConn {
	switch c := pc.(type) {
	case *socksclient.Association:
		return assocCarrier{c}
	case *net.UDPConn:
		return &udpSocketCarrier{c: c}
	}
	return packetCarrier{pc}
}

type assocCarrier struct{ a *socksclient.Association }

func (c assocCarrier) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	return c.a.WriteToSocks(b, socks.Addr{IP: dst.Addr(), Port: dst.Port()})
}

func (c assocCarrier) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	for {
		n, from, err := c.a.ReadFromSocks(b)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if ap, ok := from.AddrPort(); ok {
			return n, ap, nil
		}
		// A reply named by a domain has no address to answer the client from: dropped.
	}
}

func (c assocCarrier) ServeReplies(pool *udpbatch.Pool, fn func([]byte, netip.AddrPort) bool) error {
	return c.a.ServeSocks(pool, func(b []byte, from socks.Addr) bool {
		if ap, ok := from.AddrPort(); ok {
			return fn(b, ap)
		}
		return true // named by a domain: no address to answer the client from, dropped
	})
}

func (c assocCarrier) WatchReplies(l *udploop.Loop, b *udpbatch.Batch, fn func([]byte, netip.AddrPort), ended func(error)) error {
	return c.a.WatchReplies(l, b, func(p []byte, from socks.Addr) {
		if ap, ok := from.AddrPort(); ok {
			fn(p, ap)
		} // named by a domain: no address to answer the client from, dropped
	}, ended)
}

func (c assocCarrier) Close() error { return c.a.Close() }

// udpSocketCarrier is a direct way out: a marked UDP socket, moved into the table's loop
// once it watches the socket's replies (raw).
type udpSocketCarrier struct {
	c   *net.UDPConn // nil once raw is set
	raw atomic.Pointer[udploop.Conn]
}

func (c *udpSocketCarrier) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	if r := c.raw.Load(); r != nil {
		return r.WriteToAddrPort(b, dst)
	}
	return c.c.WriteToUDPAddrPort(b, dst)
}

// WatchReplies moves the socket into l; the table calls it before the carrier is in use.
func (c *udpSocketCarrier) WatchReplies(l *udploop.Loop, b *udpbatch.Batch, fn func([]byte, netip.AddrPort), ended func(error)) error {
	r, err := udploop.Dup(c.c)
	if err != nil {
		return err
	}
	if err := l.WatchBatches(r, b, func(b *udpbatch.Batch, n int) {
		for i := range n {
			fn(b.Bufs[i][:b.N[i]], b.From[i])
		}
	}, ended); err != nil {
		r.Close()
		return err
	}
	c.raw.Store(r)
	// The Go socket is done with: held, it and its addresses were a third of a kilobyte of
	// every session.
	c.c.Close()
	c.c = nil
	return nil
}

func (c *udpSocketCarrier) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, ap, err := c.c.ReadFromUDPAddrPort(b)
	return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
}

func (c *udpSocketCarrier) ServeReplies(pool *udpbatch.Pool, fn func([]byte, netip.AddrPort) bool) error {
	rc, err := c.c.SyscallConn()
	if err != nil {
		return err
	}
	return udpbatch.Serve(rc, pool.Get, pool.Put, func(b *udpbatch.Batch, n int) bool {
		for i := range n {
			if !fn(b.Bufs[i][:b.N[i]], b.From[i]) {
				return false
			}
		}
		return true
	})
}

func (c *udpSocketCarrier) Close() error {
	if r := c.raw.Load(); r != nil {
		return r.Close()
	}
	return c.c.Close()
}

type packetCarrier struct{ pc net.PacketConn }

func (c packetCarrier) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	return c.pc.WriteTo(b, net.UDPAddrFromAddrPort(dst))
}

func (c packetCarrier) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	for {
		n, addr, err := c.pc.ReadFrom(b)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		var ap netip.AddrPort
		if ua, ok := addr.(*net.UDPAddr); ok {
			ap = ua.AddrPort()
		} else if ap, err = netip.ParseAddrPort(addr.String()); err != nil {
			continue
		}
		return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
}

func (c packetCarrier) Close() error { return c.pc.Close() }
