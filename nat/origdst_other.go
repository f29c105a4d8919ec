//go:build !linux

package nat

import (
	"errors"
	"net"
	"net/netip"
)

// ErrNoOriginalDst means the connection was not redirected.
var ErrNoOriginalDst = errors.New("no original destination (connection was not redirected)")

// OriginalDst needs Linux conntrack.
func OriginalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: only supported on Linux")
}
