package gateway

import (
	"context"
	"net"

	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// The routers and upstreams the gateway's tests share.

// fixedRouter decides every flow the same way.
type fixedRouter route.Decision

func (r fixedRouter) Route(context.Context, route.Flow) route.Decision { return route.Decision(r) }

// routerFunc decides with a function.
type routerFunc func(route.Flow) route.Decision

func (r routerFunc) Route(_ context.Context, f route.Flow) route.Decision { return r(f) }

// stubUpstream dials loopback directly under a fixed name and carries no UDP.
type stubUpstream struct{ name string }

func (s stubUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}
func (stubUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, upstream.ErrUDPUnsupported
}
func (s stubUpstream) String() string { return s.name }

// udpUpstream carries UDP over loopback sockets it opens, and counts them, under a name it may
// share with another upstream (as two upstreams with one URL do).
type udpUpstream struct {
	stubUpstream
	opened chan net.PacketConn
}

func (u *udpUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err == nil {
		u.opened <- pc
	}
	return pc, err
}
