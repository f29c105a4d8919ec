//go:build !linux

package rawio

// Off Linux, Get returns nil: callers use the connection itself.
const supported = false

func (x *IO) tryRead(fd uintptr) bool  { return true }
func (x *IO) tryWrite(fd uintptr) bool { return true }
