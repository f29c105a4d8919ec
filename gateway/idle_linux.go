package gateway

import (
	"net"

	"golang.org/x/sys/unix"
)

// idleFor returns the milliseconds since c last sent or received data, or 0 when unknown.
func idleFor(c net.Conn) uint32 {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return 0
	}
	return min(info.Last_data_recv, info.Last_data_sent)
}
