//go:build !linux

package udploop

import (
	"errors"
	"net"
	"net/netip"
	"syscall"

	"github.com/socksgate/socksgate/internal/udpbatch"
)

// Supported reports whether this system has the loop.
const Supported = false

// ErrUnsupported is returned where the loop is not available.
var ErrUnsupported = errors.New("udp event loop unsupported on this system")

// Conn is a detached UDP socket; not available on this system.
type Conn struct{}

// Dup fails with ErrUnsupported.
func Dup(syscall.Conn) (*Conn, error) { return nil, ErrUnsupported }

// Detach fails with ErrUnsupported.
func Detach(*net.UDPConn) (*Conn, error) { return nil, ErrUnsupported }

func (c *Conn) LocalAddr() net.Addr { return nil }

func (c *Conn) WriteToAddrPort([]byte, netip.AddrPort) (int, error) { return 0, ErrUnsupported }

func (c *Conn) WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error) { return 0, ErrUnsupported }

func (c *Conn) Read([]byte) (int, error) { return 0, ErrUnsupported }

func (c *Conn) ReadBatch(*udpbatch.Batch) (int, error) { return 0, ErrUnsupported }

func (c *Conn) Close() error { return nil }

func (c *Conn) CloseWith(error) error { return nil }

// Loop is not available on this system.
type Loop struct{}

// New fails with ErrUnsupported.
func New() (*Loop, error) { return nil, ErrUnsupported }

func (l *Loop) Watch(*Conn, func(), func(error)) error { return ErrUnsupported }

func (l *Loop) WatchBatches(*Conn, *udpbatch.Batch, func(*udpbatch.Batch, int), func(error)) error {
	return ErrUnsupported
}

func (l *Loop) Len() int { return 0 }

func (l *Loop) Run() {}

func (l *Loop) Close() error { return nil }
