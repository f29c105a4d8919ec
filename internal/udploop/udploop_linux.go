package udploop

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/udpbatch"
)

// Supported reports whether this system has the loop.
const Supported = true

// ErrUnsupported is returned where the loop is not available.
var ErrUnsupported = errors.New("udp event loop unsupported on this system")

// writeWait bounds how long a write waits for room in a full send buffer before it gives up
// on the datagram (a UDP send buffer fills only when the device queue is backed up).
const writeWait = 100 * time.Millisecond

// Conn is a UDP socket of the loop's: not in Go's poller. Its methods are safe for concurrent
// use.
type Conn struct {
	fd int
	v6 bool // AF_INET6: IPv4 destinations are sent v4-mapped

	// state is the reference count times two, plus one once closed. The descriptor is closed
	// when it reaches one: closed, and no read or write using it.
	state atomic.Uint64

	mu       sync.Mutex
	loop     *Loop
	id       uint64
	ready    func()
	onClosed func(error)
	cause    error
}

// Dup takes a second descriptor of c's socket, for no poller but a loop's. The caller closes
// c once the Conn is in use (Go's poller then forgets its own descriptor; the socket lives on
// in the Conn's); until then both read the same socket. c's own reads and deadlines do not
// concern the Conn.
//
// c may be any socket (a TCP connection, say, watched for its end and read with Read).
func Dup(c syscall.Conn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup udp socket: %w", derr)
	}
	dom, err := unix.GetsockoptInt(nfd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("udp socket domain: %w", err)
	}
	return &Conn{fd: nfd, v6: dom == unix.AF_INET6}, nil
}

// Detach is Dup, then c is closed: c's socket is the Conn's alone.
func Detach(c *net.UDPConn) (*Conn, error) {
	rc, err := Dup(c)
	if err != nil {
		return nil, err
	}
	c.Close()
	return rc, nil
}

// LocalAddr is the socket's address (nil once closed), asked of the kernel: kept, it would
// be a hundred bytes of every session's.
func (c *Conn) LocalAddr() net.Addr {
	if !c.acquire() {
		return nil
	}
	defer c.release()
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.UDPAddr{IP: sa.Addr[:], Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.UDPAddr{IP: sa.Addr[:], Port: sa.Port}
	}
	return nil
}

func (c *Conn) acquire() bool {
	for {
		s := c.state.Load()
		if s&1 != 0 {
			return false
		}
		if c.state.CompareAndSwap(s, s+2) {
			return true
		}
	}
}

func (c *Conn) release() {
	if c.state.Add(^uint64(1)) == 1 { // minus two: closed, and this was the last user
		c.destroy()
	}
}

// WriteToAddrPort sends b to to. A full send buffer is waited for up to writeWait.
func (c *Conn) WriteToAddrPort(b []byte, to netip.AddrPort) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	var sa unix.RawSockaddrInet6
	var sl uintptr
	ip := to.Addr()
	switch {
	case c.v6:
		sa.Family = unix.AF_INET6
		sa.Addr = ip.As16() // an IPv4 address comes v4-mapped
		sl = unix.SizeofSockaddrInet6
	case ip.Is4() || ip.Is4In6():
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		s4.Family = unix.AF_INET
		s4.Addr = ip.Unmap().As4()
		sl = unix.SizeofSockaddrInet4
	default:
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: unix.EAFNOSUPPORT}
	}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(to.Port()>>8), byte(to.Port())
	var bp unsafe.Pointer
	if len(b) > 0 {
		bp = unsafe.Pointer(&b[0])
	}
	var deadline time.Time
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(c.fd), uintptr(bp), uintptr(len(b)), unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa)), sl)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(writeWait)
			} else if !now.Before(deadline) {
				return 0, &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: e}
			}
			pfd := [1]unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
			unix.Poll(pfd[:], int(deadline.Sub(now)/time.Millisecond)+1)
			continue
		}
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: e}
	}
}

// WriteToUDPAddrPort is WriteToAddrPort (the name *net.UDPConn gives it).
func (c *Conn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	return c.WriteToAddrPort(b, to)
}

// Read reads what a stream socket has queued, without waiting: 0 and no error when nothing
// is, io.EOF at its end.
func (c *Conn) Read(b []byte) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	n, _, err := unix.Recvfrom(c.fd, b, unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, nil
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// ReadBatch reads the datagrams queued, up to b.Len(), without waiting: 0 and no error when
// none is. Sources are unmapped.
func (c *Conn) ReadBatch(b *udpbatch.Batch) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	return b.ReadFD(c.fd)
}

// Close closes the socket: at once if no read or write is using it, else when the last one
// returns. A loop watching it stops first; its closed function is called once the descriptor
// is closed.
func (c *Conn) Close() error { return c.CloseWith(nil) }

// CloseWith is Close, with the cause handed to the closed function (nil: closed by its owner).
func (c *Conn) CloseWith(cause error) error {
	for {
		s := c.state.Load()
		if s&1 != 0 {
			return net.ErrClosed
		}
		if c.state.CompareAndSwap(s, s|1) {
			c.mu.Lock()
			c.cause = cause
			l, id := c.loop, c.id
			c.mu.Unlock()
			if l != nil {
				l.remove(c.fd, id)
			}
			if s == 0 {
				c.destroy()
			}
			return nil
		}
	}
}

func (c *Conn) destroy() {
	unix.Close(c.fd)
	c.mu.Lock()
	fn, cause := c.onClosed, c.cause
	c.onClosed = nil
	c.mu.Unlock()
	if fn != nil {
		fn(cause)
	}
}

// Loop waits for its sockets to be readable and calls their ready functions, one at a time,
// from the goroutine that runs Run.
type Loop struct {
	epfd, wakefd int
	closing      atomic.Bool
	done         chan struct{}

	mu     sync.Mutex
	conns  map[uint64]*Conn
	nextID uint64
	closed bool
}

// New makes a loop; Run runs it.
func New() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // id 0: the wake-up
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &Loop{epfd: epfd, wakefd: wakefd, done: make(chan struct{}), conns: make(map[uint64]*Conn), nextID: 1}, nil
}

// Watch calls ready from the loop's goroutine whenever c has datagrams queued (level
// triggered: ready need not drain them, it is called again), until c is closed; closed is
// called once c's descriptor is (with CloseWith's cause). ready should read one batch and
// return. A conn is watched by one loop, once.
func (l *Loop) Watch(c *Conn, ready func(), closed func(error)) error {
	c.mu.Lock()
	if c.loop != nil {
		c.mu.Unlock()
		return errors.New("udploop: conn already watched")
	}
	if !c.acquire() {
		c.mu.Unlock()
		return net.ErrClosed
	}
	defer c.release()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		c.mu.Unlock()
		return errors.New("udploop: loop closed")
	}
	id := l.nextID
	l.nextID++
	l.conns[id] = c
	c.loop, c.id, c.ready, c.onClosed = l, id, ready, closed
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev)
	if err != nil {
		delete(l.conns, id)
		c.loop, c.id, c.ready, c.onClosed = nil, 0, nil, nil
	}
	l.mu.Unlock()
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// WatchBatches is Watch with the reading done: whenever c is readable one batch is read into
// b and handed to fn (its first n datagrams, valid during fn); a failed read closes c with
// its error. b is used from the loop's goroutine only: one batch may serve all of a loop's
// conns.
func (l *Loop) WatchBatches(c *Conn, b *udpbatch.Batch, fn func(b *udpbatch.Batch, n int), closed func(error)) error {
	return l.Watch(c, func() {
		n, err := c.ReadBatch(b)
		if err != nil {
			c.CloseWith(fmt.Errorf("read: %w", err))
			return
		}
		if n > 0 {
			fn(b, n)
		}
	}, closed)
}

// remove stops watching fd (c's, still open).
func (l *Loop) remove(fd int, id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[id] == nil {
		return
	}
	delete(l.conns, id)
	if !l.closed {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
}

// Len is the number of sockets watched.
func (l *Loop) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Run waits and dispatches until Close. It waits in epoll_wait, a blocking system call, and
// not in Go's poller: a datagram wakes this goroutine's thread alone. (Waiting in Go's poller
// for the epoll descriptor instead, measured beside it: no faster than a goroutine per socket;
// this: 1.3 times the round trips.)
func (l *Loop) Run() {
	defer close(l.done)
	var evs [64]unix.EpollEvent
	for {
		n, err := unix.EpollWait(l.epfd, evs[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		if l.dispatch(evs[:n]) {
			return
		}
	}
}

// dispatch handles events; true when the loop is to stop.
func (l *Loop) dispatch(evs []unix.EpollEvent) bool {
	for i := range evs {
		id := uint64(uint32(evs[i].Fd)) | uint64(uint32(evs[i].Pad))<<32
		if id == 0 {
			var b [8]byte
			unix.Read(l.wakefd, b[:])
			if l.closing.Load() {
				return true
			}
			continue
		}
		l.mu.Lock()
		c := l.conns[id]
		l.mu.Unlock()
		if c == nil || !c.acquire() {
			continue // removed after the event
		}
		c.ready()
		c.release()
	}
	return false
}

// Close stops Run and waits for it to return; the sockets still watched are not closed.
func (l *Loop) Close() error {
	if l.closing.Swap(true) {
		<-l.done
		return nil
	}
	one := [8]byte{1}
	if _, err := unix.Write(l.wakefd, one[:]); err != nil && !errors.Is(err, syscall.EAGAIN) {
		return fmt.Errorf("wake udp loop: %w", err)
	}
	<-l.done
	l.mu.Lock()
	l.closed = true
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
	l.mu.Unlock()
	return nil
}
