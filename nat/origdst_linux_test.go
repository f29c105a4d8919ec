package nat

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// redirected returns connections accepted through an nftables REDIRECT inside a throwaway
// namespace: the client dials dst (port 9), the output hook redirects it to a listener on
// listenAddr. It returns the accepted end and the client end.
func redirected(t testing.TB, ns *netlab.NS, listenAddr string, dst netip.AddrPort) func() (*net.TCPConn, net.Conn) {
	t.Helper()
	ln := ns.Listen("tcp", listenAddr)
	port := ln.Addr().(*net.TCPAddr).Port
	ns.MustRun("nft", "add table inet natt")
	ns.MustRun("nft", "add chain inet natt out { type nat hook output priority -100 ; }")
	ns.MustRun("nft", "add rule inet natt out tcp dport "+strconv.Itoa(int(dst.Port()))+" redirect to :"+strconv.Itoa(port))
	return func() (*net.TCPConn, net.Conn) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cli, err := ns.Dial(ctx, "tcp", dst.String())
		if err != nil {
			t.Fatalf("dial %v: %v", dst, err)
		}
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.TCPConn), cli
	}
}

func TestOriginalDstOfRedirectedConnections(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
		dst          netip.AddrPort
	}{
		{"ipv4", "127.0.0.1:0", netip.MustParseAddrPort("127.0.0.1:9")},
		{"ipv6", "[::1]:0", netip.MustParseAddrPort("[::1]:9")},
		{"ipv4 on a dual-stack listener", "[::]:0", netip.MustParseAddrPort("127.0.0.1:9")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netlab.New(t).NS("nat")
			c, cli := redirected(t, ns, tc.listen, tc.dst)()
			defer c.Close()
			defer cli.Close()
			got, err := OriginalDst(c)
			if err != nil || got != tc.dst {
				t.Fatalf("OriginalDst = %v, %v; want %v", got, err, tc.dst)
			}
			// Once per captured flow: no allocation.
			if allocs := testing.AllocsPerRun(20, func() { OriginalDst(c) }); allocs != 0 {
				t.Errorf("OriginalDst: %v allocations per call", allocs)
			}
		})
	}
	t.Run("not redirected", func(t *testing.T) {
		ns := netlab.New(t).NS("nat")
		ln := ns.Listen("tcp", "127.0.0.1:0")
		cli, err := ns.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := OriginalDst(c.(*net.TCPConn)); !errors.Is(err, ErrNoOriginalDst) {
			t.Fatalf("OriginalDst = %v, %v; want ErrNoOriginalDst", got, err)
		}
	})
}

// OriginalDst runs once per captured flow.
func BenchmarkOriginalDst(b *testing.B) {
	for _, tc := range []struct {
		name, listen string
		dst          netip.AddrPort
	}{
		{"ipv4", "127.0.0.1:0", netip.MustParseAddrPort("127.0.0.1:9")},
		{"ipv6", "[::1]:0", netip.MustParseAddrPort("[::1]:9")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ns := netlab.New(b).NS("nat")
			c, cli := redirected(b, ns, tc.listen, tc.dst)()
			defer c.Close()
			defer cli.Close()
			b.ReportAllocs()
			for range b.N {
				if _, err := OriginalDst(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
