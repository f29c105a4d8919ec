package gateway

import (
	"context"
	"net"

	"github.com/socksgate/socksgate/route"
)

// ServeTProxy accepts TCP captured by an nftables TPROXY rule (transparent.tcp_mode: tproxy) on
// a transparent listener: the accepted socket's own local address is the original destination.
func (g *Gateway) ServeTProxy(ctx context.Context, ln net.Listener) error {
	port := addrPort(ln.Addr()).Port()
	return g.serveAccept(ctx, ln, func(c net.Conn) {
		tc, ok := c.(*net.TCPConn)
		if !ok || g.refuseOwnDial(c, route.TProxy) {
			c.Close()
			return
		}
		src := addrPort(c.RemoteAddr())
		f := route.Flow{Network: route.TCP, Src: src, Dst: addrPort(c.LocalAddr()), Inbound: capturedInbound(src, route.TProxy)}
		if f.Dst.Port() == port && isLocalAddr(f.Dst.Addr()) {
			// Aimed at the listener itself, not captured: relaying it would loop.
			c.Close()
			g.refuse(f, errListenerLoop)
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
