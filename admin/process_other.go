//go:build !linux

package admin

import "runtime"

// processSeries adds nothing off Linux: the process series are read from Linux interfaces.
func processSeries(e *expo) {}

// residentBytes is the memory the Go runtime holds from the system, off Linux.
func residentBytes() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Sys - m.HeapReleased
}
