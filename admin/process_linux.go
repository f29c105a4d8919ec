package admin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"
)

// processStart is when this process started, as far as a scrape can tell: package
// initialisation runs within milliseconds of exec, finer than the kernel's 10 ms clock ticks
// the Prometheus client reads from /proc/self/stat.
var processStart = time.Now()

// processSeries adds the process series, with the names, help and meaning of the Prometheus
// client's process collector, from getrusage, getrlimit and /proc/self. A value that cannot
// be read is left out, as the client leaves it out.
func processSeries(e *expo) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		e.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
			float64(ru.Utime.Nano()+ru.Stime.Nano())/1e9)
	}
	if n, err := countOpenFDs(); err == nil {
		e.gauge("process_open_fds", "Number of open file descriptors.", float64(n))
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		e.gauge("process_max_fds", "Maximum number of open file descriptors.", float64(lim.Cur))
	}
	if syscall.Getrlimit(syscall.RLIMIT_AS, &lim) == nil {
		e.gauge("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", float64(lim.Cur))
	}
	if statm, err := os.ReadFile("/proc/self/statm"); err == nil {
		if size, resident, err := parseStatm(statm); err == nil {
			page := uint64(os.Getpagesize())
			e.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", float64(size*page))
			e.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", float64(resident*page))
		}
	}
	e.gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
		float64(processStart.UnixNano())/1e9)
}

// countOpenFDs counts the entries of /proc/self/fd (the descriptor reading it included, as the
// Prometheus client counts it).
func countOpenFDs() (int, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("count open fds: %w", err)
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("count open fds: %w", err)
		}
	}
}

// parseStatm reads the first two fields of /proc/self/statm: the virtual memory size and the
// resident set size, both in pages.
func parseStatm(b []byte) (size, resident uint64, err error) {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("parse statm: %d fields", len(f))
	}
	if size, err = strconv.ParseUint(string(f[0]), 10, 64); err != nil {
		return 0, 0, fmt.Errorf("parse statm size: %w", err)
	}
	if resident, err = strconv.ParseUint(string(f[1]), 10, 64); err != nil {
		return 0, 0, fmt.Errorf("parse statm resident: %w", err)
	}
	return size, resident, nil
}

// residentBytes is the process's resident set size (GET /memory's inuse); 0 when unknown.
func residentBytes() uint64 {
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	_, resident, err := parseStatm(statm)
	if err != nil {
		return 0
	}
	return resident * uint64(os.Getpagesize())
}
