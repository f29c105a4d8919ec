//go:build !linux

package rawio

import "errors"

// Off Linux, Get returns nil: callers use the connection itself.
const supported = false

var errWouldBlock error = errors.ErrUnsupported

func (x *IO) tryRead(fd uintptr) bool  { return true }
func (x *IO) tryWrite(fd uintptr) bool { return true }
