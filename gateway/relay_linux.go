package gateway

import (
	"net"
	"os"

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
		n, err := unix.Read(int(fd), *d.bp)
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
