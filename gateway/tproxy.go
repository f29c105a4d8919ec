package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/socksgate/socksgate/route"
)

// ServeTProxy accepts TCP captured by an nftables TPROXY rule (transparent.tcp_mode: tproxy) on
// a transparent listener: the accepted socket's own local address is the original destination.
func (g *Gateway) ServeTProxy(ctx context.Context, ln net.Listener) error {
	port := addrPort(ln.Addr()).Port()
	return g.serveAccept(ctx, ln, func(c net.Conn) {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			return
		}
		f := route.Flow{Network: route.TCP, Src: addrPort(c.RemoteAddr()), Dst: addrPort(c.LocalAddr()), Inbound: route.TProxy}
		if f.Dst.Port() == port && isLocalAddr(f.Dst.Addr()) {
			// Aimed at the listener itself, not captured: relaying it would loop.
			c.Close()
			g.Stats.Refuse("loop")
			g.logFlow(f, route.Decision{Action: route.ActionBlock, Rule: "-"}, 0, 0, 0,
				errors.New("connection to the transparent listener itself (loop)"))
			return
		}
		replay := g.sniffName(tc, &f)
		g.handle(ctx, c, f, nil, replay)
	})
}

// isLocalAddr reports whether a is an address of this host (its namespace).
func isLocalAddr(a netip.Addr) bool {
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}
