//go:build !linux

package tcpinfo

// IdleFor is unknown off Linux: flows are never expired as idle there.
func IdleFor(any) uint32 { return 0 }

// StalledFor is unknown off Linux.
func StalledFor(any) uint32 { return 0 }

// Bytes is unknown off Linux: live flows report zero bytes there.
func Bytes(any) (in, out uint64) { return 0, 0 }
