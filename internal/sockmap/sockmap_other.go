//go:build !linux

package sockmap

import (
	"errors"
	"net"
)

// Relay is the kernel relay; on this system it cannot be opened.
type Relay struct{}

// Flow is one kernel-relayed flow.
type Flow struct{}

// Open always fails on systems other than Linux.
func Open() (*Relay, error) {
	return nil, &OpenError{Step: "open", Hint: "needs Linux", Err: errors.ErrUnsupported}
}

func (r *Relay) Close() error { return nil }

func (r *Relay) Add(a, b *net.TCPConn, onDone func(*Flow, error)) (*Flow, error) {
	return nil, ErrUnsupported
}

func (f *Flow) Bytes() (aToB, bToA int64)                  { return 0, 0 }
func (f *Flow) OnReadable(side int) (done bool, err error) { return true, ErrUnsupported }
func (f *Flow) Remove() error                              { return nil }
