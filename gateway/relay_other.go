//go:build !linux

package gateway

import "syscall"

// waitReadable is a no-op where no readability probe exists: the caller then holds a buffer
// while it waits in Read.
func waitReadable(rc syscall.RawConn) error { return nil }
