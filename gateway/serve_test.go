package gateway

import (
	"net"
	"net/netip"
	"testing"
)

// serveLoopback listens on 127.0.0.1 and runs serve on each connection it accepts, each on a
// goroutine of its own, until the test ends. serve owns the connection.
func serveLoopback(t *testing.T, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
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
