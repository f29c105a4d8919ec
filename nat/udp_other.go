//go:build !linux

package nat

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
)

var errUDPNotLinux = errors.New("transparent udp: only supported on Linux")

// UDPListener is the transparent UDP socket; it needs Linux.
type UDPListener struct{}

// ListenUDPTransparent needs Linux TPROXY.
func ListenUDPTransparent(context.Context, string) (*UDPListener, error) {
	return nil, errUDPNotLinux
}

// ReadDatagram needs Linux.
func (*UDPListener) ReadDatagram([]byte) (int, netip.AddrPort, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, netip.AddrPort{}, errUDPNotLinux
}

// LocalAddr is nil off Linux.
func (*UDPListener) LocalAddr() net.Addr { return nil }

// Close does nothing off Linux.
func (*UDPListener) Close() error { return nil }

// ListenReply needs Linux transparent sockets.
func ListenReply(netip.AddrPort, func(string, string, syscall.RawConn) error) (ReplyConn, error) {
	return nil, errUDPNotLinux
}
