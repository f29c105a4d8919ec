//go:build !linux

package relay

import (
	"errors"
	"net"
	"syscall"
)

// No readability probe and no parker off Linux: a direction waits in Read, holding its buffer
// and its goroutine.
const CanPark = false

// read is never called: without CanPark no direction has a raw source.
func (d *direction) read() (*[]byte, int, error) { return nil, 0, errors.ErrUnsupported }

func (d *direction) tryRead(fd uintptr) bool { return true }

func (d *direction) tryWrite(fd uintptr) bool { return true }

// write is the plain Write: no raw calls off Linux.
func (d *direction) write(p []byte) (int, error) { return d.dst.Write(p) }

func park(d *direction) error { return errors.ErrUnsupported }

func forget(d *direction) {}

func startParker() {}

// rawTarget: no raw writes and no splice off Linux, so the hybrid relay is the buffered one.
func rawTarget(dst net.Conn) (syscall.RawConn, bool) { return nil, false }

type relayPipe struct{}

func getPipe() (*relayPipe, error) { return nil, errors.ErrUnsupported }
func putPipe(p *relayPipe)         {}

// FreeIdlePipes: no pipes off Linux.
func FreeIdlePipes() int    { return 0 }
func (p *relayPipe) close() {}

type splicer struct{}

func spliceBurst(d *direction, p *relayPipe) (int64, bool, error) { return 0, true, nil }

// shutdownWrite is never called: without raw targets the relay uses CloseWrite.
func shutdownWrite(rc syscall.RawConn) error { return errors.ErrUnsupported }
