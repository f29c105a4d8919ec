package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/socksserver"
	"github.com/socksgate/socksgate/upstream"
)

// loopGuard knows socksgate's own listening ports, so that an explicit client asking for one of
// them (http://gw:8080/ through gw:8080) is refused instead of dialing itself forever.
type loopGuard struct {
	mu  sync.Mutex
	own []netip.AddrPort
}

func (l *loopGuard) add(ap netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.own = append(l.own, ap)
}

// loops reports whether dst is one of the listeners.
func (l *loopGuard) loops(dst netip.AddrPort) bool {
	if !dst.IsValid() {
		return false
	}
	a := dst.Addr().Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.own {
		if o.Port() != dst.Port() {
			continue
		}
		if o.Addr().Unmap() == a {
			return true
		}
		if o.Addr().IsUnspecified() || a.IsLoopback() || a.IsUnspecified() {
			if isLocalAddr(a) {
				return true
			}
		}
	}
	return false
}

// httpInbound is the gateway as the HTTP proxy's Tunneler.
type httpInbound struct {
	g     *Gateway
	guard *loopGuard
}

func (h *httpInbound) flow(t httpproxy.Target) route.Flow {
	return route.Flow{Network: route.TCP, Src: t.Src, Dst: t.Addr, Host: t.Host, Port: t.Port, Inbound: route.HTTP, User: t.User}
}

// httpError maps a gateway error to what httpproxy answers: a blocked flow is 403.
func httpError(err error) error {
	switch {
	case errors.Is(err, ErrBlocked):
		return fmt.Errorf("%w: %w", httpproxy.ErrNotAllowed, err)
	case errors.Is(err, ErrFlowLimit) || errors.Is(err, ErrSourceLimit) || errors.Is(err, ErrDescriptorLimit) || errors.Is(err, ErrShuttingDown):
		return fmt.Errorf("%w: %w", httpproxy.ErrBusy, err)
	case errors.Is(err, errLoop) || errors.Is(err, errLocalDst):
		return fmt.Errorf("%w: %w", httpproxy.ErrRefused, err) // 403 saying what happened, not "blocked by rule"
	}
	return err
}

func (h *httpInbound) Tunnel(ctx context.Context, client net.Conn, t httpproxy.Target, reply func(error) error) {
	f := h.flow(t)
	if h.guard.loops(f.Dst) {
		reply(httpError(errLoop))
		client.Close()
		h.g.refuse(f, errLoop)
		return
	}
	h.g.Handle(ctx, client, f, func(err error) error { return reply(httpError(err)) })
}

// Dial opens the upstream connection of forwarded (absolute-URI) requests. It is a flow like a
// tunnel: counted against the flow limits, listed in the live flows while open, cut at
// shutdown, and logged and counted when it closes.
func (h *httpInbound) Dial(ctx context.Context, t httpproxy.Target) (net.Conn, error) {
	f := h.flow(t)
	if h.guard.loops(f.Dst) {
		h.g.refuse(f, errLoop)
		return nil, httpError(errLoop)
	}
	lf, err := h.g.begin(f, nil)
	if err != nil {
		return nil, httpError(err)
	}
	c, d, err := h.g.Dial(ctx, f)
	h.g.routed(lf, d, err)
	if err != nil {
		h.g.finish(lf, flowEnd{d: d, err: err})
		return nil, httpError(err)
	}
	lc := &loggedConn{Conn: c, g: h.g, lf: lf, d: d}
	h.g.mu.Lock()
	lf.client = lc
	cut := lf.cut // shutdown's deadline passed while this was dialing
	h.g.mu.Unlock()
	if cut {
		lc.Close()
		return nil, ErrShuttingDown
	}
	return lc, nil
}

// loggedConn is an upstream connection of forwarded HTTP requests, the client side of its
// liveFlow: it counts bytes and ends the flow (log line, counters, live list) when it closes.
type loggedConn struct {
	net.Conn
	g        *Gateway
	lf       *liveFlow
	d        route.Decision
	up, down atomic.Int64
	once     sync.Once
}

func (c *loggedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.down.Add(int64(n))
	return n, err
}

func (c *loggedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.up.Add(int64(n))
	return n, err
}

func (c *loggedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.g.finish(c.lf, flowEnd{d: c.d, up: c.up.Load(), down: c.down.Load()})
	})
	return err
}

// flowBytes is what the live flow list shows for a forwarded flow: bytes sent to and received
// from the upstream (a tunnel's are read from its client socket instead).
func (c *loggedConn) flowBytes() (up, down uint64) {
	return uint64(c.up.Load()), uint64(c.down.Load())
}

// socksInbound is the gateway as the SOCKS server's Tunneler.
type socksInbound struct {
	g     *Gateway
	guard *loopGuard
}

func (s *socksInbound) flow(network route.Network, t socksserver.Target) route.Flow {
	return route.Flow{Network: network, Src: t.Src, Dst: t.Addr, Host: t.Host, Port: t.Port, Inbound: route.SOCKS, User: t.User}
}

// socksError maps a gateway error to what socksserver answers: a blocked flow is 0x02 / 0x5B.
func socksError(err error) error {
	if errors.Is(err, ErrBlocked) || errors.Is(err, errLoop) || errors.Is(err, errLocalDst) {
		return fmt.Errorf("%w: %w", socksserver.ErrNotAllowed, err)
	}
	return err
}

func (s *socksInbound) Tunnel(ctx context.Context, client net.Conn, t socksserver.Target, reply func(error) error) {
	f := s.flow(route.TCP, t)
	if s.guard.loops(f.Dst) {
		reply(socksError(errLoop))
		client.Close()
		s.g.refuse(f, errLoop)
		return
	}
	s.g.Handle(ctx, client, f, func(err error) error { return reply(socksError(err)) })
}

func (s *socksInbound) OpenUDP(ctx context.Context, src netip.AddrPort, deliver func([]byte, socks.Addr)) (socksserver.UDPSession, error) {
	ctx, cancel := context.WithCancel(ctx)
	u := &explicitUDP{
		g: s.g, id: s.g.lastID.Add(1), src: src, deliver: deliver, ctx: ctx, cancel: cancel, start: time.Now(),
		paths: make(map[any]net.PacketConn), names: make(map[string]netip.Addr),
	}
	s.g.mu.Lock()
	if err := s.g.admitAssociation(src.Addr()); err != nil {
		s.g.mu.Unlock()
		cancel()
		s.g.refuse(route.Flow{Network: route.UDP, Src: src, Inbound: route.SOCKS}, err)
		return nil, err
	}
	s.g.assocs[u] = struct{}{}
	s.g.mu.Unlock()
	s.g.Stats.UDPSessions.Add(1)
	s.g.Stats.UDPSessionsTotal.Add(1)
	return u, nil
}

// explicitUDP is one SOCKS5 UDP association on the gateway's side: every datagram is routed on
// its own (rules see protocol udp, the destination and its name); a proxied one goes out over
// that upstream's UDP association, opened at its first datagram and kept for the session, a
// direct one over a marked UDP socket. Replies from any remote come back to the client.
type explicitUDP struct {
	g       *Gateway
	id      uint64 // flowID
	src     netip.AddrPort
	deliver func([]byte, socks.Addr)
	ctx     context.Context
	cancel  context.CancelFunc
	start   time.Time

	mu        sync.Mutex
	paths     map[any]net.PacketConn // by upstream.Key
	dropErr   error                  // the first destination's refusal or block
	dropDsts  map[string]struct{}    // destinations refused or blocked, logged once each (bounded)
	pathNames []string               // the upstreams paths were opened to, for the session's line, by identity (not by URL, which two may share)
	names     map[string]netip.Addr  // names resolved for direct datagrams
	closed    bool
	lastErr   error
	cutErr    error          // why it was closed from outside (the admin API): its line's error
	seen      sync.Mutex     // guards first and firstD, read by the flow list while mu may be held for a dial
	first     route.Flow     // the first datagram's destination, for the flow list
	firstD    route.Decision // and its route
	carried   atomic.Bool    // a datagram has gone out: first is the first destination carried
	wg        sync.WaitGroup

	upPkts, downPkts, upBytes, downBytes, dropped atomic.Int64
}

func (u *explicitUDP) Send(ctx context.Context, payload []byte, t socksserver.Target) error {
	f := route.Flow{Network: route.UDP, Src: u.src, Dst: t.Addr, Host: t.Host, Port: t.Port, Inbound: route.SOCKS, User: t.User}
	d := u.g.router().Route(ctx, f)
	u.seen.Lock()
	if u.first.Network == 0 {
		u.first, u.firstD = f, d
		d.CountHit() // an association counts once, by its first datagram (each is routed)
	}
	u.seen.Unlock()
	err := u.send(f, d, payload)
	if err == nil && !u.carried.Load() {
		// The session is named by its first destination carried, not by one dropped.
		u.seen.Lock()
		if !u.carried.Load() {
			u.first, u.firstD = f, d
			u.carried.Store(true)
		}
		u.seen.Unlock()
	}
	if err != nil {
		u.dropped.Add(1)
		u.failed(f, err)
		return err
	}
	u.upPkts.Add(1)
	u.upBytes.Add(int64(len(payload)))
	return nil
}

// destDrop reports whether err drops one destination's datagrams (a rule's block, a refusal of
// the destination) rather than failing the session's way out.
func destDrop(err error) bool {
	return errors.Is(err, ErrBlocked) || errors.Is(err, errLocalDst) || errors.Is(err, errLoop)
}

// maxLoggedDrops bounds the destinations a session remembers having logged as dropped.
const maxLoggedDrops = 64

// failed records a datagram that could not be sent: a destination dropped is logged once and
// kept apart, so that it does not make the session refused when others were carried; any other
// failure is the session's error.
func (u *explicitUDP) failed(f route.Flow, err error) {
	u.mu.Lock()
	if !destDrop(err) {
		u.lastErr = err
		u.mu.Unlock()
		return
	}
	if u.dropErr == nil {
		u.dropErr = err
	}
	dst := f.Address()
	_, logged := u.dropDsts[dst]
	if !logged && len(u.dropDsts) < maxLoggedDrops {
		if u.dropDsts == nil {
			u.dropDsts = make(map[string]struct{})
		}
		u.dropDsts[dst] = struct{}{}
	} else {
		logged = true
	}
	u.mu.Unlock()
	if !logged {
		var log *logrus.Entry
		if u.g.Log != nil {
			log = u.g.Log.WithFields(logrus.Fields{"inbound": route.SOCKS.String(), "network": "udp"})
		}
		logUDPDrop(log, u.src, dst, err)
	}
}

func (u *explicitUDP) send(f route.Flow, d route.Decision, payload []byte) error {
	if d.Action == route.ActionBlock {
		return ErrBlocked
	}
	if d.Upstream == nil {
		return fmt.Errorf("rule %s: no upstream", d.Rule)
	}
	pc, err := u.path(d.Upstream)
	if err != nil {
		return err
	}
	var to net.Addr
	switch {
	case f.Dst.IsValid():
		to = net.UDPAddrFromAddrPort(f.Dst)
	case isAssociation(pc):
		to = socks.Addr{Name: f.Host, Port: f.Port} // the upstream resolves it
	case d.Addr.IsValid(): // the router resolved the name for an address rule
		to = net.UDPAddrFromAddrPort(netip.AddrPortFrom(d.Addr, f.Port))
	default:
		ip, err := u.resolve(f.Host)
		if err != nil {
			return err
		}
		to = net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, f.Port))
	}
	if ua, ok := to.(*net.UDPAddr); ok && !isAssociation(pc) && isLocalDst(ua.AddrPort().Addr()) && !d.ByDst {
		return errLocalDst // sent from the router itself: to its own services, or back to itself
	}
	_, err = pc.WriteTo(payload, to)
	return err
}

func isAssociation(pc net.PacketConn) bool {
	_, ok := pc.(*socksclient.Association)
	return ok
}

// resolve looks a name up once per session, for datagrams that go direct.
func (u *explicitUDP) resolve(host string) (netip.Addr, error) {
	u.mu.Lock()
	ip, ok := u.names[host]
	u.mu.Unlock()
	if ok {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(u.ctx, u.dialTimeout())
	defer cancel()
	ips, err := u.g.resolver().LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %s: no address", host)
	}
	ip = ips[0].Unmap()
	u.mu.Lock()
	u.names[host] = ip
	u.mu.Unlock()
	return ip, nil
}

func (u *explicitUDP) dialTimeout() time.Duration {
	if u.g.DialTimeout > 0 {
		return u.g.DialTimeout
	}
	return 10 * time.Second
}

// path returns the session's packet socket toward up, opening it (and its reader) at first use.
// The handshake of an upstream association holds the session's lock: the client's datagrams
// wait for it in order, which is what a client of one association expects.
func (u *explicitUDP) path(up upstream.Upstream) (net.PacketConn, error) {
	key := upstream.Key(up)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, net.ErrClosed
	}
	if pc, ok := u.paths[key]; ok {
		return pc, nil
	}
	if !u.g.fds.Acquire(fdsPerUDPPath) {
		return nil, ErrDescriptorLimit
	}
	ctx, cancel := context.WithTimeout(u.ctx, u.dialTimeout())
	defer cancel()
	pc, err := up.ListenPacket(ctx)
	if fb := u.g.udpFallback(); errors.Is(err, upstream.ErrUDPUnsupported) && fb != nil {
		// transparent.udp_without_support: direct applies to explicit clients as well.
		pc, err = fb.ListenPacket(ctx)
	}
	if err != nil {
		u.g.fds.Release(fdsPerUDPPath)
		return nil, err
	}
	u.paths[key] = pc
	u.pathNames = append(u.pathNames, up.String())
	u.wg.Add(1)
	go u.read(key, pc)
	return pc, nil
}

// read hands every datagram arriving on pc to the client, with its real source.
func (u *explicitUDP) read(key any, pc net.PacketConn) {
	defer u.wg.Done()
	defer u.g.fds.Release(fdsPerUDPPath) // after pc.Close below
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			u.mu.Lock()
			if u.paths[key] == pc {
				delete(u.paths, key) // a dead association is reopened by the next datagram
				if !u.closed {
					u.lastErr = err
				}
			}
			u.mu.Unlock()
			pc.Close()
			return
		}
		var sa socks.Addr
		switch a := from.(type) {
		case *net.UDPAddr:
			ap := a.AddrPort()
			sa = socks.Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}
		case socks.Addr:
			sa = a
		default:
			continue
		}
		u.downPkts.Add(1)
		u.downBytes.Add(int64(n))
		u.deliver(buf[:n], sa)
	}
}

// Context is done once the session has ended: socksserver then closes the control connection.
func (u *explicitUDP) Context() context.Context { return u.ctx }

// cut closes the session from outside, with err as its line's error; the client's control
// connection is closed too (socksserver watches Context).
func (u *explicitUDP) cut(err error) {
	u.mu.Lock()
	if !u.closed && u.cutErr == nil {
		u.cutErr = err
	}
	u.mu.Unlock()
	u.Close()
}

// Close ends the session and logs one line for it.
func (u *explicitUDP) Close() error {
	u.cancel() // first: a path still being opened holds mu until its dial gives up
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	var ups []string
	ups = append(ups, u.pathNames...)
	for _, pc := range u.paths {
		pc.Close()
	}
	u.mu.Unlock()
	u.g.mu.Lock()
	delete(u.g.assocs, u)
	u.g.release(u.src.Addr())
	u.g.mu.Unlock()
	u.g.Stats.UDPSessions.Add(-1)
	u.wg.Wait()
	u.mu.Lock()
	lastErr, dropErr, cutErr := u.lastErr, u.dropErr, u.cutErr
	u.mu.Unlock()
	u.seen.Lock()
	f, d := u.first, u.firstD
	u.seen.Unlock()
	var err error
	extra := logrus.Fields{}
	switch {
	case cutErr != nil:
		err = cutErr // what the cut made of its paths is no news
		if dropErr != nil {
			extra["drop_reason"] = dropErr.Error()
		}
	case u.dropped.Load() == 0:
	case lastErr != nil:
		err = lastErr // the way out failed
	case u.upPkts.Load() == 0:
		err = dropErr // nothing carried: refused or blocked as a whole
	default:
		extra["drop_reason"] = dropErr.Error() // carried elsewhere: only those datagrams dropped
	}
	if f.Network == 0 { // no datagram came: an association unused, no flow to count
		u.g.deviceEnd(u, route.Flow{Src: u.src, Inbound: route.SOCKS}, 0, 0) // the sampler may have looked
		if u.g.Log != nil {
			u.g.Log.WithFields(logrus.Fields{"src": u.src.String(), "inbound": route.SOCKS.String(), "network": "udp"}).Debug("udp association closed unused")
		}
		return nil
	}
	slices.Sort(ups)
	ups = slices.Compact(ups)
	extra["upstreams"], extra["packets_up"], extra["packets_down"], extra["dropped"] = ups, u.upPkts.Load(), u.downPkts.Load(), u.dropped.Load()
	u.g.ended(flowEnd{f: f, d: d, up: u.upBytes.Load(), down: u.downBytes.Load(), dur: time.Since(u.start), err: err, extra: extra})
	u.g.deviceEnd(u, route.Flow{Src: u.src, Inbound: route.SOCKS}, u.upBytes.Load(), u.downBytes.Load())
	return nil
}
