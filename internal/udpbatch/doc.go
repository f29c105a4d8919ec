// Package udpbatch reads several queued UDP datagrams with one recvmmsg(2), through a socket's
// syscall.RawConn (so Go's poller still does the
// waiting), without allocating per datagram: sources are decoded from the kernel's sockaddrs
// into netip.AddrPort in place.
//
// golang.org/x/net's ipv4/ipv6 ReadBatch does the same system call, but hand
// every message's address over as a new *net.UDPAddr (an allocation or two per datagram on
// the hottest path a gateway has); this package keeps the kernel ABI (struct mmsghdr over
// unix.Msghdr) and nothing else. On systems without recvmmsg it reports ErrUnsupported and
// callers read one datagram at a time.
package udpbatch

import "sync"

// Pool lends batches of one shape (New's n, size, oob), so that a socket waiting for
// datagrams holds no buffers: Serve takes one only once a datagram is queued.
type Pool struct {
	n, size, oob int
	p            sync.Pool
}

// NewPool makes a pool of batches of n buffers of size bytes (and oob-byte control buffers).
func NewPool(n, size, oob int) *Pool {
	p := &Pool{n: n, size: size, oob: oob}
	p.p.New = func() any { return New(p.n, p.size, p.oob) }
	return p
}

// Get takes a batch, its buffers at full length.
func (p *Pool) Get() *Batch {
	b := p.p.Get().(*Batch)
	for i := range b.Bufs {
		b.Bufs[i] = b.Bufs[i][:cap(b.Bufs[i])]
	}
	return b
}

// Put gives a batch back.
func (p *Pool) Put(b *Batch) { p.p.Put(b) }

// Size is the size of each buffer of the pool's batches.
func (p *Pool) Size() int { return p.size }
