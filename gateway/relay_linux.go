package gateway

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// peekScratch receives the byte a readability probe peeks at. The byte is never read back, so
// every probe can share it (the kernel writes it; no Go code reads it), which keeps the probe
// free of allocations.
var peekScratch [1]byte

// waitReadable parks the calling goroutine in the runtime poller, holding no buffer, until rc
// has something to read: data, end of stream or an error. A MSG_PEEK probe tells "nothing yet"
// (EAGAIN: wait) from everything else. A socket error (a reset) is reported to the probe only
// once, so it is returned here; data and end of stream are left for the caller's Read.
func waitReadable(rc syscall.RawConn) error {
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		_, _, e := unix.Recvfrom(int(fd), peekScratch[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		perr = e
		return true
	})
	if err != nil {
		return err
	}
	if perr != nil {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", perr)}
	}
	return nil
}
