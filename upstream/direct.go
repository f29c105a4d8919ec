package upstream

import (
	"context"
	"net"
	"syscall"
)

// Control is a socket hook run before bind/connect, such as redirect.MarkControl.
type Control func(network, address string, c syscall.RawConn) error

// Direct reaches destinations without a proxy. Its sockets carry socksgate's mark, so the
// kernel rules let them pass and they are never captured again.
type Direct struct {
	Control Control
	// Own, when set, keeps every TCP connection dialled here while it is open, so that one
	// of them coming back to socksgate's own listeners is known as a loop (OwnConns).
	Own *OwnConns
}

// KeepAlive turns TCP keepalive on for every socket socksgate opens or accepts, with the
// kernel's timings (net.ipv4.tcp_keepalive_time, _intvl, _probes). Go's default (15 s, then
// every 15 s) would cost four setsockopt calls per socket and, on a router holding thousands of
// idle flows, a probe per socket every 15 s. Idle flows are the idle sweeper's business
// (timeouts.idle); keepalive only finds peers that vanished.
var KeepAlive = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}

// dialer is the bottom of every dial path: plain TCP with socksgate's mark and keepalive.
func (d Direct) dialer() *net.Dialer {
	return &net.Dialer{Control: d.Control, KeepAliveConfig: KeepAlive, Resolver: d.Resolver()}
}

// Resolver is the system's resolver (resolv.conf) asking over socksgate's marked sockets, so
// that the lookups socksgate makes itself (a name dialled direct, a name an address rule has to
// decide) are never captured as the router's own traffic (router.capture). Nil Control: the
// default resolver.
func (d Direct) Resolver() *net.Resolver {
	if d.Control == nil {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		return (&net.Dialer{Control: d.Control}).DialContext(ctx, network, address)
	}}
}

// DialContext connects to address directly.
func (d Direct) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if d.Own == nil {
		return d.dialer().DialContext(ctx, network, address)
	}
	d.Own.dialStart()
	defer d.Own.dialEnd()
	c, err := d.dialer().DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return d.Own.track(c), nil
}

// ListenUDP opens a marked UDP socket; it has the shape socksclient's ListenUDP hook expects.
func (d Direct) ListenUDP(ctx context.Context, network, address string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: d.Control}
	return lc.ListenPacket(ctx, network, address)
}

// ListenPacket opens an unconnected UDP socket for direct datagrams.
func (d Direct) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	return d.ListenUDP(ctx, "udp", ":0")
}

func (Direct) String() string { return "direct" }
