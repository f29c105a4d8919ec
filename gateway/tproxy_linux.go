package gateway

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// transparentControl makes a dual-stack listener accept connections addressed to any
// destination (IPV6_TRANSPARENT, and IP_TRANSPARENT for IPv4-mapped traffic), as TPROXY needs.
func transparentControl(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
