//go:build !linux

package udpbatch

import (
	"errors"
	"net/netip"
	"syscall"
)

// Supported reports whether Read batches on this system.
const Supported = false

// ErrUnsupported is returned where recvmmsg is not available.
var ErrUnsupported = errors.New("udp batching unsupported on this system")

// Batch is a set of datagram buffers; on this system Read and Serve fail with ErrUnsupported.
type Batch struct {
	Bufs           [][]byte
	OOB            [][]byte
	N, OOBN, Flags []int
	From           []netip.AddrPort
}

// New makes a batch of n buffers of size bytes (and oob-byte control buffers when oob > 0).
func New(n, size, oob int) *Batch {
	b := &Batch{Bufs: make([][]byte, n), N: make([]int, n), OOBN: make([]int, n), Flags: make([]int, n),
		From: make([]netip.AddrPort, n)}
	for i := range b.Bufs {
		b.Bufs[i] = make([]byte, size)
	}
	if oob > 0 {
		b.OOB = make([][]byte, n)
		for i := range b.OOB {
			b.OOB[i] = make([]byte, oob)
		}
	}
	return b
}

// Len is the number of buffers.
func (b *Batch) Len() int { return len(b.Bufs) }

// Read fails with ErrUnsupported.
func (b *Batch) Read(syscall.RawConn) (int, error) { return 0, ErrUnsupported }

// Serve fails with ErrUnsupported.
func Serve(syscall.RawConn, func() *Batch, func(*Batch), func(*Batch, int) bool) error {
	return ErrUnsupported
}

// ReadFD fails with ErrUnsupported.
func (b *Batch) ReadFD(int) (int, error) { return 0, ErrUnsupported }
