package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// tcpOnlyUpstream dials TCP on loopback and carries no UDP, like SOCKS4 or HTTP CONNECT.
type tcpOnlyUpstream struct{ addr string }

func (u tcpOnlyUpstream) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, u.addr)
}

func (tcpOnlyUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, ErrUDPUnsupported
}

func (tcpOnlyUpstream) String() string { return "tcp-only" }

// serveDNSOverTCP answers each length-prefixed message with "re:" + the message.
func serveDNSOverTCP(t *testing.T) string {
	return serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		var hdr [2]byte
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			if _, err := io.ReadFull(c, msg); err != nil {
				return
			}
			out := append([]byte{0, 0}, "re:"...)
			out = append(out, msg...)
			binary.BigEndian.PutUint16(out, uint16(len(out)-2))
			c.Write(out)
		}
	}).String()
}

// Through an upstream without UDP, DNS datagrams travel as length-prefixed messages over its
// TCP and come back as datagrams from the server; other UDP is refused with ErrUDPUnsupported
// under the block policy.
func TestUDPFallbackCarriesDNSOverTCP(t *testing.T) {
	up := tcpOnlyUpstream{serveDNSOverTCP(t)}
	u := &udpInbound{withoutSupport: "block", dnsOverTCP: true, dialTimeout: 2 * time.Second}
	c, err := u.open(context.Background(), up)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server := netip.MustParseAddrPort("203.0.113.10:53")
	for _, q := range []string{"query-1", "query-2", "query-3"} {
		if _, err := c.WriteToAddrPort([]byte(q), server); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100)
	for _, want := range []string{"re:query-1", "re:query-2", "re:query-3"} {
		n, from, err := c.ReadFromAddrPort(buf)
		if err != nil || string(buf[:n]) != want || from != server {
			t.Fatalf("got %q from %s (%v), want %q from %s", buf[:n], from, err, want, server)
		}
	}
	if _, err := c.WriteToAddrPort([]byte("x"), netip.MustParseAddrPort("203.0.113.10:123")); !errors.Is(err, ErrUDPUnsupported) {
		t.Fatalf("non-DNS datagram: %v, want ErrUDPUnsupported", err)
	}
	c.Close()
	if _, _, err := c.ReadFromAddrPort(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// Without dns_over_tcp and with the block policy, opening through a TCP-only upstream fails
// with ErrUDPUnsupported (the session ends, logged with that reason).
func TestUDPOpenWithoutSupportBlocks(t *testing.T) {
	u := &udpInbound{withoutSupport: "block"}
	if _, err := u.open(context.Background(), tcpOnlyUpstream{}); !errors.Is(err, ErrUDPUnsupported) {
		t.Fatalf("open: %v, want ErrUDPUnsupported", err)
	}
}

// The per-datagram error log lets one line a second through and counts the rest.
func TestUDPErrorLogIsRateLimited(t *testing.T) {
	var r rateLimit
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0}, {100 * time.Millisecond, false, 0}, {900 * time.Millisecond, false, 0},
		{1100 * time.Millisecond, true, 2}, {1200 * time.Millisecond, false, 0}, {5 * time.Second, true, 1},
	}
	for _, s := range steps {
		n, ok := r.allow(t0.Add(s.at))
		if ok != s.ok || (ok && n != s.suppressed) {
			t.Fatalf("at %v: allow = %d, %v; want %d, %v", s.at, n, ok, s.suppressed, s.ok)
		}
	}
}
