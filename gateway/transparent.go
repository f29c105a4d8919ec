package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/route"
)

// ServeRedirect accepts connections captured by the nftables REDIRECT rule on ln, recovers each
// one's original destination and hands it to Handle. It returns when ln is closed.
func (g *Gateway) ServeRedirect(ctx context.Context, ln net.Listener) error {
	return g.serveAccept(ctx, ln, func(c net.Conn) {
		tc, ok := c.(*net.TCPConn)
		if !ok || g.refuseOwnDial(c, route.Redirect) {
			c.Close()
			return
		}
		src := addrPort(c.RemoteAddr())
		dst, err := nat.OriginalDst(tc)
		if err != nil {
			err = fmt.Errorf("%w: %w", errNoOriginalDst, err)
		} else if dst == addrPort(c.LocalAddr()) {
			// Not redirected: someone connected to the listener itself. Relaying it would
			// dial ourselves again, forever.
			err = errListenerLoop
		}
		f := route.Flow{Network: route.TCP, Src: src, Dst: dst, Inbound: capturedInbound(src, route.Redirect)}
		if err != nil {
			c.Close()
			g.refuse(f, err)
			return
		}
		if err := g.nameFlow(&f); err != nil {
			c.Close()
			g.refuse(f, err)
			return
		}
		bp := g.sniffName(tc, &f)
		g.handle(ctx, c, f, nil, sniffed(bp))
		putSniffed(bp) // handle has replayed it (or failed) before it returns
	})
}

// refuseOwnDial refuses c, accepted on an inbound of kind in, when its peer is one of
// socksgate's own live dials: the flow that dialled it came back (a loop). The caller closes c.
// The check is one lookup in a sharded map (upstream.OwnConns); a connection from one of the
// router's own addresses that is not known may be a dial that has not returned yet, and waits
// for the dials in flight (at most ownDialWait; nothing from a LAN host ever waits).
func (g *Gateway) refuseOwnDial(c net.Conn, in route.Inbound) bool {
	if g.Own == nil {
		return false
	}
	src := addrPort(c.RemoteAddr())
	if !g.Own.Has(src) && !(isLocalAddr(src.Addr()) && g.Own.Await(src, ownDialWait)) {
		return false
	}
	g.refuse(route.Flow{Network: route.TCP, Src: src, Dst: addrPort(c.LocalAddr()), Inbound: in}, errOwnDial)
	return true
}

// ownDialWait bounds how long a connection from the router itself waits for socksgate's dials
// in flight to say whether it is one of them: the time from a connection's establishment in
// the kernel to its dialler's return, which is a scheduling delay.
const ownDialWait = 200 * time.Millisecond

// serveAccept runs the accept loop shared by every TCP inbound: one goroutine per connection,
// and on a temporary error (EMFILE, ENFILE, ECONNABORTED) a growing pause instead of a busy
// loop, as net/http does.
func (g *Gateway) serveAccept(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if isTemporaryAccept(err) || (errors.As(err, &ne) && ne.Timeout()) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(pause):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		pause = 0
		// A burst faster than the handshakes can refuse would otherwise fill the table with
		// sockets no flow holds yet, and the flows already admitted would find no descriptor
		// to dial with (fdBudget.acceptFits).
		if !g.fds.acceptFits() {
			c.Close()
			g.refuse(route.Flow{Network: route.TCP, Src: addrPort(c.RemoteAddr()), Dst: addrPort(c.LocalAddr())}, ErrDescriptorLimit)
			continue
		}
		go func() {
			// A panic in an inbound's handshake (outside Handle's own recover) costs this
			// connection, not the process.
			defer func() {
				if p := recover(); p != nil {
					c.Close()
					if g.Log != nil {
						g.Log.WithFields(logrus.Fields{"src": c.RemoteAddr().String(), "local": c.LocalAddr().String()}).
							Errorf("panic in connection handler: %v\n%s", p, debug.Stack())
					}
				}
			}()
			handle(c)
		}()
	}
}

// addrPort converts a *net.TCPAddr or *net.UDPAddr, unmapping IPv4-in-IPv6.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
