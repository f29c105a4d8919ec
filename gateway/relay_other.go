//go:build !linux

package gateway

import (
	"net"
	"syscall"
)

// waitReadable is a no-op where no readability probe exists: the caller then holds a buffer
// while it waits in Read.
func waitReadable(rc syscall.RawConn) error { return nil }

// rawConns: no splice off Linux, so the hybrid relay is the buffered one.
func rawConns(dst, src net.Conn) (rd, rs syscall.RawConn, ok bool) { return nil, nil, false }

func spliceBurst(dst, src syscall.RawConn) (int64, bool, error) { return 0, true, nil }
