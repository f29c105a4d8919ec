package socksclient

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/socks"
)

// benchProxy is a minimal SOCKS server on loopback for the dial benchmarks: it reads exactly the
// client's messages (no authentication, an IPv4 destination, empty SOCKS4 user id), answers each
// with one write, and holds the connection until the client closes it. It uses no codec, so
// changes to the client's side show alone.
func benchProxy(b *testing.B, v Version) string {
	b.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var buf [64]byte
				if v == SOCKS5 {
					if _, err := io.ReadFull(c, buf[:3]); err != nil { // VER NMETHODS METHOD
						return
					}
					if _, err := c.Write([]byte{5, 0}); err != nil {
						return
					}
					if _, err := io.ReadFull(c, buf[:10]); err != nil { // VER CMD RSV ATYP IPv4 PORT
						return
					}
					if _, err := c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0x30, 0x39}); err != nil {
						return
					}
				} else {
					if _, err := io.ReadFull(c, buf[:9]); err != nil { // VN CD PORT IP NUL
						return
					}
					if _, err := c.Write([]byte{0, 0x5a, 0, 0, 0, 0, 0, 0}); err != nil {
						return
					}
				}
				c.Read(buf[:]) // until the client closes
			}()
		}
	}()
	return ln.Addr().String()
}

var benchDst = netip.MustParseAddrPort("203.0.113.10:80").String()

// BenchmarkDial is one new flow's upstream cost on the client side: TCP connect to the proxy,
// the handshake, and close.
func BenchmarkDial(b *testing.B) {
	for _, tc := range []struct {
		name string
		d    Dialer
	}{
		{"socks5", Dialer{Version: SOCKS5}},
		{"socks5-pipelined", Dialer{Version: SOCKS5, Pipeline: true}},
		{"socks4", Dialer{Version: SOCKS4}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			d := tc.d
			d.Address = benchProxy(b, d.Version)
			ctx := context.Background()
			b.ReportAllocs()
			for range b.N {
				c, err := d.DialContext(ctx, "tcp", benchDst)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// BenchmarkHandshake is the handshake alone, on connections dialed outside the timer.
func BenchmarkHandshake(b *testing.B) {
	for _, tc := range []struct {
		name string
		d    Dialer
	}{
		{"socks5", Dialer{Version: SOCKS5}},
		{"socks4", Dialer{Version: SOCKS4}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			d := tc.d
			d.Address = benchProxy(b, d.Version)
			dst, err := socks.ParseAddr(benchDst)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				c, err := net.Dial("tcp4", d.Address)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if d.Version == SOCKS5 {
					_, err = d.handshake5(c, socks.CmdConnect, dst)
				} else {
					err = d.handshake4(c, dst)
				}
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				c.Close()
				b.StartTimer()
			}
		})
	}
}
