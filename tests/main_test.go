//go:build linux

// Package tests holds socksgate's end-to-end tests: each builds its own network namespaces
// (tests/netlab), starts real third-party peers in them (curl, microsocks, dante, tinyproxy,
// squid) and the socksgate binary in the gateway namespace, and checks what arrives where.
// They need root and skip, saying so, without it.
package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/socksgate/socksgate/tests/netlab"
)

// socksgateBin is the binary under test, built once by TestMain (with the race detector, so the
// daemon's own races fail the run too).
var socksgateBin string

func TestMain(m *testing.M) {
	netlab.SweepStale()
	dir, err := os.MkdirTemp("", "socksgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	socksgateBin = filepath.Join(dir, "socksgate")
	args := []string{"build", "-o", socksgateBin}
	if os.Getenv("SOCKSGATE_E2E_NORACE") == "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/socksgate")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build socksgate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if opsBinPath != "" {
		os.RemoveAll(filepath.Dir(opsBinPath)) // the shipped-style build of ops_test.go
	}
	os.Exit(code)
}
