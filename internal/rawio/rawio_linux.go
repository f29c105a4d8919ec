package rawio

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const supported = true

// errWouldBlock is EAGAIN, for ReadNow.
const errWouldBlock = unix.EAGAIN

func (x *IO) tryRead(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(x.p))), uintptr(len(x.p)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if x.now {
				x.errno = errWouldBlock
				return true
			}
			return false
		case 0:
			x.n = int(n)
		default:
			x.errno = e
		}
		return true
	}
}

func (x *IO) tryWrite(fd uintptr) bool {
	for x.n < len(x.p) {
		rest := x.p[x.n:]
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)), unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			x.n += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			x.errno = e
			return true
		}
	}
	return true
}
