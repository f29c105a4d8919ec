package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/upstream"
)

// tcpOnlyUpstream dials TCP on loopback and carries no UDP, like SOCKS4 or HTTP CONNECT.
type tcpOnlyUpstream struct{ addr string }

func (u tcpOnlyUpstream) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, u.addr)
}

func (tcpOnlyUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, upstream.ErrUDPUnsupported
}

func (tcpOnlyUpstream) String() string { return "tcp-only" }

// serveDNSOverTCP answers each length-prefixed message with "re:" + the message.
func serveDNSOverTCP(t *testing.T) string {
	return testutil.ServeLoopback(t, func(c net.Conn) {
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
	u := &udpInbound{withoutSupport: configs.UDPBlock, dnsOverTCP: true, dialTimeout: 2 * time.Second}
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
	if _, err := c.WriteToAddrPort([]byte("x"), netip.MustParseAddrPort("203.0.113.10:123")); !errors.Is(err, upstream.ErrUDPUnsupported) {
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
	u := &udpInbound{withoutSupport: configs.UDPBlock}
	if _, err := u.open(context.Background(), tcpOnlyUpstream{}); !errors.Is(err, upstream.ErrUDPUnsupported) {
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

// dnsQuery is a minimal DNS query for name (type A), with id.
func dnsQuery(id uint16, name string) []byte {
	q := []byte{byte(id >> 8), byte(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(name, ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

// An answer longer than the client can be sent reaches it as the header and question with TC
// set and no records (it asks again over TCP), never as a cut, malformed message.
func TestUDPFallbackTruncatesAnswersTooLongForTheClient(t *testing.T) {
	query := dnsQuery(0x1234, "big.test")
	answer := append(append([]byte(nil), query...), make([]byte, 20000)...)
	answer[2] |= 0x80                            // QR
	binary.BigEndian.PutUint16(answer[6:8], 100) // ANCOUNT
	addr := testutil.ServeLoopback(t, func(c net.Conn) {
		defer c.Close()
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(hdr[:])))
		out := binary.BigEndian.AppendUint16(nil, uint16(len(answer)))
		c.Write(append(out, answer...))
		io.Copy(io.Discard, c)
	}).String()
	u := &udpInbound{withoutSupport: configs.UDPBlock, dnsOverTCP: true, dialTimeout: 2 * time.Second}
	c, err := u.open(context.Background(), tcpOnlyUpstream{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToAddrPort(query, netip.MustParseAddrPort("203.0.113.10:53")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<10)
	n, _, err := c.ReadFromAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := buf[:n]
	want := append([]byte(nil), answer[:len(query)]...)
	want[2] |= 0x02 // TC
	binary.BigEndian.PutUint16(want[6:8], 0)
	if !bytes.Equal(got, want) {
		t.Fatalf("client got %d bytes %x, want the header and question with TC %x", n, got[:min(n, 40)], want)
	}
}

// A session talks to a bounded number of DNS servers at once over TCP, and a connection whose
// server stays silent after a query is given up, so later queries get a fresh one instead of
// disappearing into a dead path.
func TestUDPFallbackBoundsAndExpiresDNSConnections(t *testing.T) {
	var conns atomic.Int64
	silent := testutil.ServeLoopback(t, func(c net.Conn) { conns.Add(1); io.Copy(io.Discard, c); c.Close() }).String()
	u := &udpInbound{withoutSupport: configs.UDPBlock, dnsOverTCP: true, dialTimeout: 2 * time.Second, dnsReplyWait: 200 * time.Millisecond}
	c, err := u.open(context.Background(), tcpOnlyUpstream{silent})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range dnsMaxStreams {
		if _, err := c.WriteToAddrPort(dnsQuery(1, "a.test"), netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}), 53)); err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
	}
	if _, err := c.WriteToAddrPort(dnsQuery(1, "a.test"), netip.MustParseAddrPort("203.0.113.99:53")); err == nil {
		t.Fatalf("a query to a %dth DNS server was taken", dnsMaxStreams+1)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("the connections", func() bool { return conns.Load() == dnsMaxStreams })
	// The silent servers' connections are given up after dnsReplyWait: room again, and the
	// next query to the first server opens a new connection.
	fc := c.(*fallbackConn)
	waitFor("silent connections given up", func() bool { fc.mu.Lock(); defer fc.mu.Unlock(); return len(fc.streams) == 0 })
	if _, err := c.WriteToAddrPort(dnsQuery(2, "a.test"), netip.MustParseAddrPort("203.0.113.10:53")); err != nil {
		t.Fatal(err)
	}
	waitFor("a fresh connection", func() bool { return conns.Load() == dnsMaxStreams+1 })
}
