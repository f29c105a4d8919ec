// Package testutil holds the helpers socksgate's unit tests share: loopback servers and
// connection pairs, and waiting for a condition without a fixed sleep. Test code only.
package testutil

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// WaitUntil polls cond every millisecond until it holds, failing the test after 5 s.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TCPPair returns the two ends of a loopback TCP connection, closed when the test ends.
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// ServeLoopback listens on 127.0.0.1 and runs serve on each accepted connection until the test
// ends; it returns the listener's address.
func ServeLoopback(t testing.TB, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// SyncBuffer collects a child process's output (its Stdout and Stderr) for polling and failure
// messages while the process still writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ChromiumQUICInitials are the first two datagrams of a real Chromium 156 QUIC connection to
// quic.socksgate.test: its ClientHello, with an X25519MLKEM768 key share, spans both
// (sniff/testdata/quic/README.md says how they were captured). It is called from a package
// one level below the module's root (gateway, tests).
func ChromiumQUICInitials(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range []string{"datagram-0", "datagram-1"} {
		b, err := os.ReadFile(filepath.Join("..", "sniff", "testdata", "quic", "chromium-156-mlkem", f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}
