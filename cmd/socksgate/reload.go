package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// reloadMain sends SIGHUP to the running socksgate: the one given with -p, or every
// `socksgate run` process found in /proc. The daemon logs whether the new config was applied
// or refused (an invalid config leaves the running one in force).
func reloadMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pid := fs.Int("p", 0, "PID of the socksgate to reload (default: every `socksgate run` process)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pids := []int{*pid}
	if *pid == 0 {
		pids = findRunning()
		if len(pids) == 0 {
			fmt.Fprintln(stderr, "socksgate reload: no running `socksgate run` process found")
			return 1
		}
	}
	code := 0
	for _, p := range pids {
		if err := syscall.Kill(p, syscall.SIGHUP); err != nil {
			fmt.Fprintf(stderr, "socksgate reload: pid %d: %v\n", p, err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "sent SIGHUP to socksgate (pid %d); its log says whether the config was applied\n", p)
	}
	return code
}

// findRunning lists the processes whose command line is `.../socksgate run ...`.
func findRunning() []int {
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		argv := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
		if len(argv) >= 2 && filepath.Base(string(argv[0])) == "socksgate" && string(argv[1]) == "run" {
			out = append(out, pid)
		}
	}
	return out
}
