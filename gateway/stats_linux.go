package gateway

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketBytes reads a TCP socket's byte counts from the kernel (TCP_INFO): up is what the peer
// sent us (tcpi_bytes_received), down what we sent that the peer acknowledged
// (tcpi_bytes_acked). Zero for anything that is not a TCP socket.
func socketBytes(c any) (up, down uint64) {
	sc, ok := unwrapConn(c).(syscall.Conn)
	if !ok {
		return 0, 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, 0
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return 0, 0
	}
	return info.Bytes_received, info.Bytes_acked
}
