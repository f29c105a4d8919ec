package udpbatch

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Supported reports whether Read batches on this system.
const Supported = true

// ErrUnsupported is returned where recvmmsg/sendmmsg are not available.
var ErrUnsupported = errors.New("udp batching unsupported on this system")

// mmsghdr is struct mmsghdr: a msghdr and the length the kernel received or sent. Go pads it
// to the alignment of Msghdr exactly as C does (64 bytes on 64-bit systems, 32 on 32-bit).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// Batch is a set of datagram buffers: Read fills the first n of them, Write sends them.
// Make one with New; it is not safe for concurrent use.
type Batch struct {
	// Bufs are the datagram buffers: Read reads into each at most len(Bufs[i]) bytes. The
	// caller may reslice them between calls (New gives full ones).
	Bufs [][]byte
	// OOB are control message buffers (nil: none), read into by Read.
	OOB [][]byte
	// After Read: each datagram's length, control length, flags (MSG_TRUNC...) and source.
	N, OOBN, Flags []int
	From           []netip.AddrPort

	hs    []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6

	// The callback rc.Read runs, made once (a closure made per call would be an allocation
	// per call), and what it leaves.
	readFn func(fd uintptr) bool
	rn     int
	rerrno syscall.Errno
}

// New makes a batch of n datagram buffers of size bytes, each with an oob-byte control buffer
// when oob > 0.
func New(n, size, oob int) *Batch {
	b := &Batch{
		Bufs: make([][]byte, n), N: make([]int, n), OOBN: make([]int, n), Flags: make([]int, n),
		From: make([]netip.AddrPort, n),
		hs:   make([]mmsghdr, n), iovs: make([]unix.Iovec, n), names: make([]unix.RawSockaddrInet6, n),
	}
	b.readFn = func(fd uintptr) bool {
		var again bool
		b.rn, b.rerrno, again = b.recv(fd)
		return !again
	}
	mem := make([]byte, n*size)
	for i := range b.Bufs {
		b.Bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
	}
	if oob > 0 {
		b.OOB = make([][]byte, n)
		om := make([]byte, n*oob)
		for i := range b.OOB {
			b.OOB[i] = om[i*oob : (i+1)*oob : (i+1)*oob]
		}
	}
	return b
}

// Len is the number of buffers.
func (b *Batch) Len() int { return len(b.Bufs) }

func (b *Batch) prepare() {
	for i := range b.Bufs {
		h := &b.hs[i]
		*h = mmsghdr{}
		buf := b.Bufs[i]
		if len(buf) > 0 {
			b.iovs[i].Base = &buf[0]
		} else {
			b.iovs[i].Base = nil
		}
		b.iovs[i].SetLen(len(buf))
		h.hdr.Iov = &b.iovs[i]
		h.hdr.SetIovlen(1)
		h.hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		if b.OOB != nil && len(b.OOB[i]) > 0 {
			h.hdr.Control = &b.OOB[i][0]
			h.hdr.SetControllen(len(b.OOB[i]))
		}
	}
}

// Read waits until at least one datagram is queued on rc's socket and reads as many as are
// queued, up to b.Len(), returning how many. Sources are unmapped (an IPv4 client of a
// dual-stack socket comes as IPv4); an IPv6 zone is dropped.
func (b *Batch) Read(rc syscall.RawConn) (int, error) {
	b.rn, b.rerrno = 0, 0
	if err := rc.Read(b.readFn); err != nil {
		return 0, err
	}
	if b.rerrno != 0 {
		return 0, b.rerrno
	}
	return b.rn, nil
}

// recv is one recvmmsg; again reports that nothing was queued.
func (b *Batch) recv(fd uintptr) (n int, errno syscall.Errno, again bool) {
	b.prepare()
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hs[0])), uintptr(len(b.hs)), unix.MSG_DONTWAIT, 0, 0)
		runtime.KeepAlive(b)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, 0, true
		case 0:
		default:
			return 0, e, false
		}
		n = int(r)
		for i := range n {
			h := &b.hs[i]
			b.N[i] = int(h.len)
			b.OOBN[i] = int(h.hdr.Controllen)
			b.Flags[i] = int(h.hdr.Flags)
			b.From[i] = decodeSockaddr(&b.names[i], h.hdr.Namelen)
		}
		return n, 0, false
	}
}

// Serve reads rc's socket in batches, handing each to fn (the batch's first n datagrams),
// until fn returns false or the socket fails (net.ErrClosed once it is closed). Batches come
// from get, which is called only once a datagram is queued, and go back through put as soon
// as fn has run: a socket that waits holds no buffer.
//
// It stays inside one rc.Read for its whole life, so the poller keeps every readiness event
// it sees: after a batch that was not full the kernel's queue was empty, and Serve waits at
// once instead of asking again for the EAGAIN that Go's edge-triggered poller otherwise needs,
// one system call fewer per wake-up.
func Serve(rc syscall.RawConn, get func() *Batch, put func(*Batch), fn func(b *Batch, n int) bool) error {
	var errno syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		for {
			b := get()
			n, e, again := b.recv(fd)
			if again {
				put(b)
				return false
			}
			if e != 0 {
				put(b)
				errno = e
				return true
			}
			more := fn(b, n)
			full := n == b.Len()
			put(b)
			if !more {
				return true
			}
			if !full {
				return false
			}
		}
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// decodeSockaddr reads an AF_INET or AF_INET6 sockaddr as the kernel wrote it.
func decodeSockaddr(sa *unix.RawSockaddrInet6, l uint32) netip.AddrPort {
	raw := (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(sa))
	port := binary.BigEndian.Uint16(raw[2:4])
	switch sa.Family {
	case unix.AF_INET:
		if l < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[4:8])), port)
	case unix.AF_INET6:
		if l < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(raw[8:24])).Unmap(), port)
	}
	return netip.AddrPort{}
}

// ReadFD reads as many datagrams as are queued on the nonblocking socket fd, up to b.Len(),
// without waiting: 0 and no error when none is queued. It is for sockets that no Go poller
// watches (internal/udploop's).
func (b *Batch) ReadFD(fd int) (int, error) {
	n, errno, again := b.recv(uintptr(fd))
	if again {
		return 0, nil
	}
	if errno != 0 {
		return 0, errno
	}
	return n, nil
}
