package tcpinfo

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// get reads TCP_INFO of the socket under c (through NetConn wrappers), or nil.
func get(c any) *unix.TCPInfo {
	sc, ok := Unwrap(c).(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return nil
	}
	return info
}

// IdleFor returns the milliseconds since c last sent or received data, or 0 when unknown.
func IdleFor(c any) uint32 {
	info := get(c)
	if info == nil {
		return 0
	}
	return min(info.Last_data_recv, info.Last_data_sent)
}

// StalledFor returns the milliseconds since c's peer last acknowledged anything while c has
// data waiting for it (in flight, or queued and not yet sent: a local drop or a full window),
// or 0 when nothing waits (or it is unknown). A peer that vanished (its path blackholed, its
// host gone) leaves data unacknowledged while the other side of the flow may keep it looking
// busy, so IdleFor alone would never see it. A live peer acknowledges, even a zero-window
// probe, so it never looks stalled.
func StalledFor(c any) uint32 {
	info := get(c)
	if info == nil || (info.Unacked == 0 && info.Notsent_bytes == 0) {
		return 0
	}
	return info.Last_ack_recv
}

// Bytes reads a TCP socket's byte counts: in is what the peer sent us (tcpi_bytes_received),
// out what we sent that the peer acknowledged (tcpi_bytes_acked). Zero for anything that is
// not a TCP socket.
func Bytes(c any) (in, out uint64) {
	info := get(c)
	if info == nil {
		return 0, 0
	}
	return info.Bytes_received, info.Bytes_acked
}
