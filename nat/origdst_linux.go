package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

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
			dst, serr = originalDst4(int(fd))
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

// originalDst4 reads a struct sockaddr_in. unix.GetsockoptIPv6Mreq is used only as a 20-byte
// buffer: its Multiaddr field receives the first 16 bytes, which hold the whole sockaddr_in.
func originalDst4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	b := m.Multiaddr
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// originalDst6 reads a struct sockaddr_in6 (28 bytes); unix.GetsockoptIPv6MTUInfo's Addr field is
// exactly a RawSockaddrInet6.
func originalDst6(fd int) (netip.AddrPort, error) {
	mi, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSOOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := mi.Addr
	// Port holds network byte order in memory: put it back as the native bytes it was.
	var pb [2]byte
	binary.NativeEndian.PutUint16(pb[:], sa.Port)
	port := binary.BigEndian.Uint16(pb[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}
