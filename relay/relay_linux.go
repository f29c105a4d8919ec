package relay

import (
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// read waits in the runtime poller until src has data, end of stream or an error, holding no
// buffer, then reads once into a borrowed one: one read(2) per wake-up, no readability probe.
// It returns the buffer with n > 0 bytes (the caller puts it back), n == 0 at end of stream,
// or the error (the read deadline's timeout when src stayed idle until it).
func (d *direction) read() (bp *[]byte, n int, err error) {
	if err := d.rs.Read(d.readFn); err != nil {
		return nil, 0, err
	}
	bp, n, err = d.bp, d.rn, d.rerr
	d.bp, d.rerr = nil, nil
	if err != nil || n == 0 {
		relayBufs.Put(bp)
		if err != nil {
			return nil, 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
		}
		return nil, 0, nil
	}
	return bp, n, nil
}

// tryRead is read's callback: it borrows a buffer and reads; on EAGAIN it gives the buffer back
// and asks the poller to wait.
func (d *direction) tryRead(fd uintptr) bool {
	if d.bp == nil {
		d.bp = relayBufs.Get().(*[]byte)
	}
	for {
		n, err := rawRead(int(fd), *d.bp)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			relayBufs.Put(d.bp)
			d.bp = nil
			return false
		case nil:
			d.rn, d.rerr = n, nil
		default:
			d.rn, d.rerr = 0, err
		}
		return true
	}
}

// write writes all of p to dst, waiting in the poller while dst's send buffer is full (and
// honouring its write deadline, as dst.Write does).
func (d *direction) write(p []byte) (int, error) {
	if d.wd == nil {
		return d.dst.Write(p)
	}
	d.wb, d.wn, d.werr = p, 0, nil
	err := d.wd.Write(d.writeFn)
	n := d.wn
	if err == nil && d.werr != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Source: d.dst.LocalAddr(), Addr: d.dst.RemoteAddr(), Err: os.NewSyscallError("write", d.werr)}
	}
	d.wb, d.werr = nil, nil
	return n, err
}

// tryWrite is write's callback: it writes until p is all written or fails; on EAGAIN it asks
// the poller to wait until dst takes more.
func (d *direction) tryWrite(fd uintptr) bool {
	for d.wn < len(d.wb) {
		n, err := rawSend(int(fd), d.wb[d.wn:])
		switch err {
		case nil:
			d.wn += n
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			d.werr = err
			return true
		}
	}
	return true
}

// The relay's own system calls, on sockets and pipes that are all non-blocking, are made
// without telling the scheduler (RawSyscall): they never wait, they only work in the kernel.
// A call the scheduler knows about that runs longer than sysmon's 20 µs tick (splicing a MiB
// does) lets sysmon hand the goroutine's P to another thread, and keeps sysmon itself waking
// every 20 µs: 14% of the gateway's CPU in a profile of 8 bulk streams, gone with raw calls.

func rawRead(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSend writes p to a socket; with MSG_NOSIGNAL a peer that has gone is an EPIPE, not a signal.
func rawSend(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSplice moves up to n bytes from in to out (one of them a pipe).
func rawSplice(in, out, n, flags int) (int, error) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(m), nil
}

// shutdownWrite shuts down the sending half of the socket rc.
func shutdownWrite(rc syscall.RawConn) error {
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0)
	}); err != nil {
		return err
	}
	if errno != 0 {
		return os.NewSyscallError("shutdown", errno)
	}
	return nil
}
