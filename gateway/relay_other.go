//go:build !linux

package gateway

import (
	"errors"
	"net"
	"syscall"
)

// No readability probe and no parker off Linux: a direction waits in Read, holding its buffer
// and its goroutine.
const canPark = false

func waitReadable(rc syscall.RawConn) error { return nil }

func park(d *direction) error { return errors.ErrUnsupported }

func forget(d *direction) {}

func startParker() {}

// spliceTarget: no splice off Linux, so the hybrid relay is the buffered one.
func spliceTarget(dst net.Conn) (syscall.RawConn, bool) { return nil, false }

type relayPipe struct{}

func getPipe() (*relayPipe, error) { return nil, errors.ErrUnsupported }
func putPipe(p *relayPipe)         {}
func (p *relayPipe) close()        {}

func spliceBurst(dst, src syscall.RawConn, p *relayPipe) (int64, bool, error) { return 0, true, nil }
