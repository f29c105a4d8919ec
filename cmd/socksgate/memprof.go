//go:build memprof

package main

import (
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// A build with -tags memprof writes a heap profile to $SOCKSGATE_MEMPROFILE on SIGUSR2: for
// finding where a session's memory goes, never in a release build.
func init() {
	path := os.Getenv("SOCKSGATE_MEMPROFILE")
	if path == "" {
		return
	}
	runtime.MemProfileRate = 512
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	go func() {
		for range c {
			runtime.GC()
			if f, err := os.Create(path); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}()
}
