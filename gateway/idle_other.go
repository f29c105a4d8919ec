//go:build !linux

package gateway

import "net"

// idleFor is unknown off Linux: flows are never expired as idle there.
func idleFor(net.Conn) uint32 { return 0 }

// stalledFor is unknown off Linux.
func stalledFor(net.Conn) uint32 { return 0 }
