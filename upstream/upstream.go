// Package upstream holds the ways out of socksgate: the Upstream interface, the direct dialer,
// SOCKS4/4a/5 and HTTP CONNECT proxies chained with via, and groups of them with a policy
// (failover, round-robin, least-conn) and health checks. Every socket it opens is marked by the
// Control it is given, so that socksgate's own traffic is never captured again. It knows nothing
// of rules or flows: the router hands it an address to reach.
package upstream

import (
	"context"
	"errors"
	"net"
	"reflect"
)

// ErrUDPUnsupported is wrapped by Upstream.ListenPacket of upstreams that cannot carry UDP.
var ErrUDPUnsupported = errors.New("upstream does not carry UDP")

// Upstream is one way out: a proxy (SOCKS5, SOCKS4/4a, HTTP CONNECT, possibly chained) or direct.
// Implementations must mark every socket they open so that socksgate's own traffic is never
// captured again.
type Upstream interface {
	// DialContext connects to address ("host:port") through the upstream.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens a UDP association; WriteTo carries the real destination. Upstreams
	// that cannot carry UDP return an error wrapping ErrUDPUnsupported.
	ListenPacket(ctx context.Context) (net.PacketConn, error)
	// String names the upstream for logs, with any password redacted.
	String() string
}

// closeWriter is a connection that can shut down its sending half.
type closeWriter interface{ CloseWrite() error }

// Key is u as a map key for its identity: u itself, which every Upstream of this package is
// (pointers), or, for a value that cannot be compared (a struct holding a func), its type and
// name — never a panic.
func Key(u Upstream) any {
	if u == nil || reflect.TypeOf(u).Comparable() {
		return u
	}
	return struct {
		t    reflect.Type
		name string
	}{reflect.TypeOf(u), u.String()}
}
