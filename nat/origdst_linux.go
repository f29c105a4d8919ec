package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h; it shares
// its value with SO_ORIGINAL_DST (80) but lives at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// ErrNoOriginalDst means the connection was not redirected: conntrack has no NAT entry for it.
var ErrNoOriginalDst = errors.New("no original destination (connection was not redirected)")

// OriginalDst returns the destination a REDIRECTed TCP connection was addressed to before the
// kernel rewrote it to our listener. It works for IPv4, IPv6 and IPv4-mapped sockets accepted on
// a dual-stack "[::]" listener. The socket is read through SyscallConn, never duplicated.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v4 := local != nil && local.IP.To4() != nil
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v4 {
			dst, serr = OriginalDst4(int(fd))
		} else {
			dst, serr = originalDst6(int(fd))
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			err = ErrNoOriginalDst
		}
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}

// OriginalDst4 is OriginalDst for an IPv4 socket's descriptor, for a socket kept outside net
// (the bench's gobound): a struct sockaddr_in read into a stack variable, no allocation.
func OriginalDst4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockoptSockaddr(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unix.SizeofSockaddrInet4); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(sa.Port)), nil
}

// originalDst6 reads a struct sockaddr_in6.
func originalDst6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockoptSockaddr(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), unix.SizeofSockaddrInet6); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), netPort(sa.Port)), nil
}

// getsockoptSockaddr is getsockopt(2) into the caller's sockaddr. x/sys/unix has no typed
// getter for a sockaddr, and borrowing one of another shape (IPv6Mreq, IPv6MTUInfo) costs a
// heap allocation per flow; this one fills a stack variable.
func getsockoptSockaddr(fd, level, opt int, sa unsafe.Pointer, size uint32) error {
	l := size
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(sa), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// netPort converts a port as the kernel stores it in a sockaddr (network byte order in memory,
// read as a native integer) to its value.
func netPort(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
