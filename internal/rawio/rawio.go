// Package rawio reads and writes a TCP socket with raw system calls, waiting in the runtime's
// poller when the socket is not ready, as net.TCPConn's Read and Write do, deadlines included.
//
// The difference is the scheduler: a system call that net makes tells the scheduler first
// (entersyscall), and when every P was idle (a gateway waiting for its one client's next
// packet) that wakes sysmon from its deep sleep, which then polls every 20 µs for a while: on a
// two-CPU router about a dozen extra thread wake-ups per new flow. A read or write on a
// non-blocking socket never blocks, so it needs no such notice. The relay's own calls are raw
// for the same reason (package relay); this is the same for the handshakes before it.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// IO is raw reading and writing on one socket; Get makes one, Put gives it back.
type IO struct {
	c               *net.TCPConn
	rc              syscall.RawConn
	p               []byte
	n               int
	errno           error
	now             bool                  // ReadNow: EAGAIN is an answer (errWouldBlock), not a wait
	readFn, writeFn func(fd uintptr) bool // bound once: a method value per call would allocate
}

var pool = sync.Pool{New: func() any {
	x := &IO{}
	x.readFn, x.writeFn = x.tryRead, x.tryWrite
	return x
}}

// Socket is a connection that is its TCP socket with bookkeeping around it (a Close that does
// more, say) and no bytes of its own: rawio reads and writes the socket under it. A wrapper that
// holds or transforms bytes (TLS, a replay prefix) must not have this method.
type Socket interface {
	TCPSocket() *net.TCPConn
}

// Get returns raw I/O on c when c is a *net.TCPConn or a Socket (no other type: a wrapper may
// hold bytes of its own), or nil. Give it back with Put once done.
func Get(c net.Conn) *IO {
	tc, ok := c.(*net.TCPConn)
	if s, isSocket := c.(Socket); !ok && isSocket {
		tc, ok = s.TCPSocket(), true
	}
	if !ok || tc == nil || !supported {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	x := pool.Get().(*IO)
	x.c, x.rc = tc, rc
	return x
}

// Put gives x back; it must not be used afterwards.
func (x *IO) Put() {
	x.c, x.rc, x.p = nil, nil, nil
	pool.Put(x)
}

// Reader is c read with raw calls when it is a TCP socket, or c itself; done gives the raw
// reader back.
func Reader(c net.Conn) (r io.Reader, done func()) {
	if x := Get(c); x != nil {
		return x, x.Put
	}
	return c, func() {}
}

// Read reads once, waiting in the poller until the socket has data, end of stream (io.EOF) or
// an error; the read deadline applies.
func (x *IO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	x.p, x.n, x.errno = p, 0, nil
	err := x.rc.Read(x.readFn)
	n, errno := x.n, x.errno
	x.p, x.errno = nil, nil
	switch {
	case err != nil:
		return 0, x.opErr("read", err)
	case errno != nil:
		return 0, x.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// ErrWouldBlock is ReadNow's answer when the socket has nothing to read yet.
var ErrWouldBlock = errors.New("rawio: nothing to read yet")

// ReadNow reads what the socket has without waiting: ErrWouldBlock when it has nothing yet,
// io.EOF at end of stream.
func (x *IO) ReadNow(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	x.p, x.n, x.errno, x.now = p, 0, nil, true
	err := x.rc.Read(x.readFn)
	n, errno := x.n, x.errno
	x.p, x.errno, x.now = nil, nil, false
	switch {
	case err != nil:
		return 0, x.opErr("read", err)
	case errno == errWouldBlock:
		return 0, ErrWouldBlock
	case errno != nil:
		return 0, x.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting in the poller while the send buffer is full; the write
// deadline applies. A peer that has gone is an EPIPE, not a signal.
func (x *IO) Write(p []byte) (int, error) {
	x.p, x.n, x.errno = p, 0, nil
	err := x.rc.Write(x.writeFn)
	n, errno := x.n, x.errno
	x.p, x.errno = nil, nil
	switch {
	case err != nil:
		return n, x.opErr("write", err)
	case errno != nil:
		return n, x.opErr("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// Write writes all of p to c, with raw calls when c is a TCP socket.
func Write(c net.Conn, p []byte) (int, error) {
	x := Get(c)
	if x == nil {
		return c.Write(p)
	}
	defer x.Put()
	return x.Write(p)
}

// opErr is err as net reports it: an *net.OpError naming the operation and both ends (the
// poller's own errors, a deadline or a closed socket, come as net's "raw-read"/"raw-write").
func (x *IO) opErr(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: x.c.LocalAddr(), Addr: x.c.RemoteAddr(), Err: err}
}
