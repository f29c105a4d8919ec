package socksclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/socksgate/socksgate/internal/netctx"
	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
	"github.com/socksgate/socksgate/socks"
)

// ListenPacket opens a SOCKS5 UDP association (UDP ASSOCIATE) and returns it as a
// net.PacketConn (an *Association) whose WriteTo carries the real destination.
//
// The request's DST.ADDR is 0.0.0.0:0 ("any source"): servers such as dante enforce the address
// given there as the client's UDP source. An unspecified BND.ADDR in the reply means the proxy's
// own address: the host of Address when it is an IP literal, else the remote address of the
// control connection. ctx bounds the handshake only; the association then lives until Close or
// until the proxy ends its control connection. SOCKS4 and SOCKS4a return ErrUDPUnsupported.
//
// Errors are *net.OpError{Op: "socks udp associate", Net: "udp", Source: the proxy}, wrapping
// the same errors as DialContext.
func (d *Dialer) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	proxy := d.proxyAddr()
	opErr := func(err error) error {
		return &net.OpError{Op: "socks udp associate", Net: "udp", Source: proxy, Err: err}
	}
	if d.Version != SOCKS5 {
		return nil, opErr(ErrUDPUnsupported)
	}
	c, err := d.dialProxy(ctx)
	if err != nil {
		return nil, opErr(err)
	}
	var bnd socks.Addr
	err = netctx.Do(ctx, c, func() error {
		var err error
		bnd, err = d.handshake5(c, socks.CmdUDPAssociate, socks.Addr{IP: netip.IPv4Unspecified()})
		return err
	})
	if err != nil {
		c.Close()
		return nil, opErr(err)
	}
	relay, err := d.relayAddr(ctx, c, bnd)
	if err != nil {
		c.Close()
		return nil, opErr(err)
	}
	listen := d.ListenUDP
	if listen == nil {
		var lc net.ListenConfig
		listen = lc.ListenPacket
	}
	network := "udp6"
	if relay.Addr().Is4() {
		network = "udp4"
	}
	pc, err := listen(ctx, network, ":0")
	if err != nil {
		c.Close()
		return nil, opErr(fmt.Errorf("open udp socket: %w", err))
	}
	a := &Association{
		ctrl:      c,
		pc:        pc,
		relay:     relay,
		relayAddr: net.UDPAddrFromAddrPort(relay),
		done:      make(chan struct{}),
	}
	a.udp, _ = pc.(*net.UDPConn)
	go a.watch(c)
	return a, nil
}

// relayAddr turns the reply's BND.ADDR into the address to send datagrams to.
func (d *Dialer) relayAddr(ctx context.Context, ctrl net.Conn, bnd socks.Addr) (netip.AddrPort, error) {
	if bnd.Port == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: udp relay port 0 in reply", ErrProtocol)
	}
	if bnd.IsName() {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", bnd.Name)
		if err != nil || len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("resolve udp relay %q: %w", bnd.Name, err)
		}
		return netip.AddrPortFrom(ips[0].Unmap(), bnd.Port), nil
	}
	ip := bnd.IP.Unmap()
	if !ip.IsUnspecified() {
		return netip.AddrPortFrom(linkZone(ip, ctrl), bnd.Port), nil
	}
	// The proxy's own address. Address wins over the control connection's peer, which is the
	// next hop, not the proxy, when ProxyDial goes through another proxy.
	if host, _, err := net.SplitHostPort(d.Address); err == nil {
		if pip, err := netip.ParseAddr(host); err == nil {
			return netip.AddrPortFrom(linkZone(pip.Unmap(), ctrl), bnd.Port), nil
		}
	}
	remote := ctrl.RemoteAddr()
	if ta, ok := remote.(*net.TCPAddr); ok {
		return netip.AddrPortFrom(ta.AddrPort().Addr().Unmap(), bnd.Port), nil
	}
	if ap, err := netip.ParseAddrPort(remote.String()); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), bnd.Port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("udp relay address unspecified and proxy address %q unknown", d.Address)
}

// linkZone gives a link-local IPv6 address without a zone the zone of the control connection
// (the link the proxy was reached on): without one, datagrams to it leave by whichever link's
// route comes first.
func linkZone(ip netip.Addr, ctrl net.Conn) netip.Addr {
	if !ip.Is6() || !ip.IsLinkLocalUnicast() || ip.Zone() != "" {
		return ip
	}
	if ta, ok := ctrl.RemoteAddr().(*net.TCPAddr); ok && ta.Zone != "" {
		return ip.WithZone(ta.Zone)
	}
	return ip
}

// sameRelay reports whether a datagram from src comes from the relay. Zones are left out: the
// kernel names a link by its interface name, a configured address may name it by its index.
func sameRelay(src, relay netip.AddrPort) bool {
	return src.Port() == relay.Port() && src.Addr().WithZone("") == relay.Addr().WithZone("")
}

// Association is a SOCKS5 UDP association: a local UDP socket talking to the proxy's relay,
// and the TCP control connection that keeps the association alive. A goroutine reads the control
// connection (the loop, once WatchReplies has moved both sockets there); when the proxy closes
// it (or it fails), the association ends: pending and later reads and writes return an error
// wrapping the cause, and Done is closed.
//
// Datagrams from anywhere but the relay, fragmented datagrams (FRAG not 0) and malformed ones
// are dropped and counted (Dropped). Reads and writes reuse per-association buffers; the
// ReadFromSocks and WriteToSocks forms allocate nothing for IP addresses.
type Association struct {
	ctrl      net.Conn // under mu once built
	pc        net.PacketConn
	udp       *net.UDPConn // pc, when it is one
	relay     netip.AddrPort
	relayAddr *net.UDPAddr

	wmu  sync.Mutex
	wbuf []byte
	rmu  sync.Mutex
	rbuf []byte

	dropped atomic.Uint64

	// raw is the UDP socket once WatchReplies moved it into a loop: writes go by it.
	raw atomic.Pointer[udploop.Conn]
	// stopping is set as shutdown begins: raw's closing, which it causes, calls back here.
	stopping atomic.Bool

	// moved is set once the control connection is the loop's to watch: its goroutine stops.
	moved atomic.Bool

	once sync.Once
	done chan struct{}
	mu   sync.Mutex
	// ctrl (nil then) is ctrlRaw once the loop watches the control connection.
	ctrlRaw *udploop.Conn
	cause   error // why the association ended; nil after Close
}

// RelayAddr is the proxy's UDP relay address that datagrams are sent to.
func (a *Association) RelayAddr() netip.AddrPort { return a.relay }

// Done is closed when the association ends, by Close or by the loss of the control connection.
func (a *Association) Done() <-chan struct{} { return a.done }

// Err returns why the association ended: nil while it lives or after Close, else the control
// connection's failure.
func (a *Association) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cause
}

// Dropped counts datagrams discarded on receive: not from the relay, fragmented or malformed.
func (a *Association) Dropped() uint64 { return a.dropped.Load() }

// watch reads the control connection until it fails, or until the loop watches it instead;
// the proxy sends nothing on it.
func (a *Association) watch(ctrl net.Conn) {
	var buf [64]byte
	for {
		if _, err := ctrl.Read(buf[:]); err != nil {
			if !a.moved.Load() {
				a.shutdown(fmt.Errorf("udp association ended: control connection: %w", err))
			}
			return
		}
	}
}

func (a *Association) shutdown(cause error) error {
	err := net.ErrClosed
	a.once.Do(func() {
		a.stopping.Store(true)
		a.mu.Lock()
		a.cause = cause
		ctrl, ctrlRaw := a.ctrl, a.ctrlRaw
		a.mu.Unlock()
		close(a.done)
		if ctrlRaw != nil {
			ctrlRaw.Close()
		}
		if r := a.raw.Load(); r != nil {
			err = r.CloseWith(cause)
		} else {
			err = a.pc.Close()
		}
		if ctrlRaw == nil {
			if cerr := ctrl.Close(); err == nil && cause == nil {
				err = cerr
			}
		}
	})
	return err
}

// watchControl moves the control connection into loop, when it is a socket: its descriptor
// is duplicated for the loop and the connection closed, so no goroutine waits on it, and
// neither Go's poller nor the connection's wrappers hold anything for it (together 3.3 KiB of
// a session's 8). A connection that is no socket (TLS, a pipe) keeps its goroutine.
//
// The wrapper closed is the one that recorded the connection among socksgate's own dials
// (upstream.OwnConns): that record is for telling a dial of its own come back when it is
// accepted, and this connection was accepted long ago.
func (a *Association) watchControl(loop *udploop.Loop) {
	ctrl := a.ctrl
	sc, ok := ctrl.(syscall.Conn)
	if !ok {
		return
	}
	cr, err := udploop.Dup(sc)
	if err != nil {
		return
	}
	err = loop.Watch(cr, func() {
		var b [64]byte
		if _, err := cr.Read(b[:]); err != nil {
			a.shutdown(fmt.Errorf("udp association ended: control connection: %w", err))
		}
	}, nil)
	if err != nil {
		cr.Close()
		return
	}
	a.mu.Lock()
	if a.stopping.Load() { // shut down meanwhile: it closed ctrl
		a.mu.Unlock()
		cr.Close()
		return
	}
	a.moved.Store(true)
	a.ctrl, a.ctrlRaw = nil, cr
	a.mu.Unlock()
	ctrl.Close() // the goroutine's Read returns and, moved set, it stops; the socket lives on in cr
}

func (a *Association) isDone() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Close ends the association: the UDP socket and the control connection are closed.
func (a *Association) Close() error { return a.shutdown(nil) }

// ioErr builds the error of a failed read or write, naming the control connection's loss when
// that is what ended the association.
func (a *Association) ioErr(op string, addr net.Addr, err error) error {
	if cause := a.Err(); cause != nil && errors.Is(err, net.ErrClosed) {
		err = cause
	} else if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "udp", Source: a.pc.LocalAddr(), Addr: addr, Err: err}
}

// ReadFromSocks reads one datagram's payload into b and returns its remote address: an IP
// address, or a name when the relay sent a domain (allocating only then). A payload longer than b
// is truncated.
func (a *Association) ReadFromSocks(b []byte) (int, socks.Addr, error) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	need := len(b) + socks.MaxUDPHeaderLen
	if cap(a.rbuf) < need {
		a.rbuf = make([]byte, need)
	}
	buf := a.rbuf[:need]
	for {
		n, src, err := a.readRaw(buf)
		if err != nil {
			return 0, socks.Addr{}, a.ioErr("read", a.relayAddr, err)
		}
		if !sameRelay(src, a.relay) {
			a.dropped.Add(1)
			continue
		}
		h, hl, err := socks.ParseUDPHeader(buf[:n])
		if err != nil || h.Frag != 0 {
			a.dropped.Add(1)
			continue
		}
		return copy(b, buf[hl:n]), h.Addr, nil
	}
}

// ServeSocks reads the relay's datagrams several at a time (recvmmsg), into batches taken
// from pool only while datagrams are in hand, and calls fn with each one's payload and remote
// until fn returns false or the association ends (the error then is ReadFromSocks'). Datagrams
// are dropped as ReadFromSocks drops them; a payload is at most pool.Size() less its header.
// It returns an error wrapping udpbatch.ErrUnsupported, at once, where it cannot batch (the
// system, or a socket from ListenUDP that is not a *net.UDPConn): read with ReadFromSocks then.
func (a *Association) ServeSocks(pool *udpbatch.Pool, fn func(payload []byte, from socks.Addr) bool) error {
	if a.udp == nil || !udpbatch.Supported {
		return udpbatch.ErrUnsupported
	}
	rc, err := a.udp.SyscallConn()
	if err != nil {
		return a.ioErr("read", a.relayAddr, err)
	}
	a.rmu.Lock()
	defer a.rmu.Unlock()
	err = udpbatch.Serve(rc, pool.Get, pool.Put, func(b *udpbatch.Batch, n int) bool {
		for i := range n {
			if p, from, ok := a.relayed(b.From[i], b.Bufs[i][:b.N[i]]); ok && !fn(p, from) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return a.ioErr("read", a.relayAddr, err)
	}
	return nil
}

// WatchReplies moves the association's UDP socket into loop (internal/udploop): loop reads
// the relay's datagrams into b, in batches, and calls fn with each one's payload and remote,
// dropping what ServeSocks drops; ended is called once the socket is closed, with the
// association's cause (nil after Close). Writes go on; ReadFromSocks and ServeSocks are not
// used afterwards. It fails, leaving the association as it was, where it cannot (the system,
// or a socket from ListenUDP that is not a *net.UDPConn).
func (a *Association) WatchReplies(loop *udploop.Loop, b *udpbatch.Batch, fn func(payload []byte, from socks.Addr), ended func(error)) error {
	if a.udp == nil || !udploop.Supported {
		return udploop.ErrUnsupported
	}
	a.rmu.Lock()
	defer a.rmu.Unlock()
	if a.raw.Load() != nil {
		return errors.New("socks udp association: already watched")
	}
	select {
	case <-a.done:
		return net.ErrClosed
	default:
	}
	r, err := udploop.Dup(a.udp)
	if err != nil {
		return err
	}
	err = loop.WatchBatches(r, b, func(b *udpbatch.Batch, n int) {
		for i := range n {
			if p, from, ok := a.relayed(b.From[i], b.Bufs[i][:b.N[i]]); ok {
				fn(p, from)
			}
		}
	}, func(err error) {
		if err != nil && !a.stopping.Load() {
			a.shutdown(fmt.Errorf("udp association ended: %w", err))
		}
		ended(a.Err())
	})
	if err != nil {
		r.Close()
		return err
	}
	a.raw.Store(r)
	// Closed after the swap: a write that took a.udp just before sees it closed and fails;
	// shutdown (under a.once) closes r from now on.
	a.udp.Close()
	if a.isDone() { // shut down meanwhile: it closed a.udp, not r
		r.CloseWith(a.Err())
		return nil
	}
	a.watchControl(loop)
	return nil
}

// relayed is the payload and remote of datagram d from from; ok false (counted as dropped)
// when it is not from the relay, fragmented or malformed.
func (a *Association) relayed(from netip.AddrPort, d []byte) ([]byte, socks.Addr, bool) {
	if !sameRelay(from, a.relay) {
		a.dropped.Add(1)
		return nil, socks.Addr{}, false
	}
	h, hl, err := socks.ParseUDPHeader(d)
	if err != nil || h.Frag != 0 {
		a.dropped.Add(1)
		return nil, socks.Addr{}, false
	}
	return d[hl:], h.Addr, true
}

func (a *Association) readRaw(buf []byte) (int, netip.AddrPort, error) {
	if a.udp != nil {
		n, ap, err := a.udp.ReadFromUDPAddrPort(buf)
		return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
	}
	n, addr, err := a.pc.ReadFrom(buf)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	if ua, ok := addr.(*net.UDPAddr); ok {
		ap = ua.AddrPort()
	} else {
		ap, _ = netip.ParseAddrPort(addr.String())
	}
	return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ReadFrom implements net.PacketConn. The address is a *net.UDPAddr, or a socks.Addr when the
// relay named the remote by a domain.
func (a *Association) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := a.ReadFromSocks(b)
	if err != nil {
		return 0, nil, err
	}
	if ap, ok := from.AddrPort(); ok {
		return n, net.UDPAddrFromAddrPort(ap), nil
	}
	return n, from, nil
}

// WriteToSocks sends b to the remote to through the relay. It returns len(b) on success.
func (a *Association) WriteToSocks(b []byte, to socks.Addr) (int, error) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	buf, err := socks.AppendUDPHeader(a.wbuf[:0], socks.UDPHeader{Addr: to})
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: a.pc.LocalAddr(), Addr: to, Err: err}
	}
	buf = append(buf, b...)
	a.wbuf = buf[:0] // keep the grown buffer
	if r := a.raw.Load(); r != nil {
		_, err = r.WriteToAddrPort(buf, a.relay)
	} else if a.udp != nil {
		_, err = a.udp.WriteToUDPAddrPort(buf, a.relay)
	} else {
		_, err = a.pc.WriteTo(buf, a.relayAddr)
	}
	if err != nil {
		return 0, a.ioErr("write", to, err)
	}
	return len(b), nil
}

// WriteTo implements net.PacketConn. addr is a *net.UDPAddr (an IPv6 zone is dropped: it means
// nothing at the proxy), a socks.Addr (possibly a name, resolved by the proxy), or any net.Addr
// whose String is "host:port".
func (a *Association) WriteTo(b []byte, addr net.Addr) (int, error) {
	var to socks.Addr
	switch v := addr.(type) {
	case *net.UDPAddr:
		ap := v.AddrPort()
		to = socks.Addr{IP: ap.Addr().WithZone(""), Port: ap.Port()}
	case socks.Addr:
		to = v
	case *socks.Addr:
		to = *v
	default:
		var err error
		if addr == nil {
			err = errors.New("no destination address")
		} else if to, err = socks.ParseAddr(addr.String()); err != nil {
			err = fmt.Errorf("destination: %w", err)
		}
		if err != nil {
			return 0, &net.OpError{Op: "write", Net: "udp", Source: a.pc.LocalAddr(), Addr: addr, Err: err}
		}
	}
	if !to.IsName() && !to.IP.IsValid() {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: a.pc.LocalAddr(), Addr: addr, Err: errors.New("invalid destination address")}
	}
	return a.WriteToSocks(b, to)
}

// LocalAddr is the local UDP socket's address.
func (a *Association) LocalAddr() net.Addr { return a.pc.LocalAddr() }

// SetDeadline sets the UDP socket's read and write deadlines.
func (a *Association) SetDeadline(t time.Time) error { return a.pc.SetDeadline(t) }

// SetReadDeadline sets the UDP socket's read deadline.
func (a *Association) SetReadDeadline(t time.Time) error { return a.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the UDP socket's write deadline.
func (a *Association) SetWriteDeadline(t time.Time) error { return a.pc.SetWriteDeadline(t) }
