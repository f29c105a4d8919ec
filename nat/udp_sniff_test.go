package nat

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// prefixSniffer is done at a datagram "name:X" (name X), at one "no" (no name); anything
// else is awaited.
type prefixSniffer struct{}

func (prefixSniffer) Feed(b []byte) (string, bool) {
	s := string(b)
	switch {
	case strings.HasPrefix(s, "name:"):
		return s[5:], true
	case s == "no":
		return "", true
	}
	return "", false
}

// sniffTable routes by name: a session's outbound records what it sent; routed records the
// names Route was given, per destination.
func sniffTable(t *testing.T, timeout time.Duration) (*UDPTable, *fakeConn, func() map[netip.AddrPort][]string) {
	conn := newFakeConn(false)
	var mu sync.Mutex
	routed := map[netip.AddrPort][]string{}
	tbl := &UDPTable{
		Route: func(src, dst netip.AddrPort, name string) UDPRoute {
			mu.Lock()
			routed[dst] = append(routed[dst], name)
			mu.Unlock()
			return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) { return conn, nil }}
		},
		Sniff: func(dst netip.AddrPort, b []byte) UDPSniffer {
			if dst.Port() != 443 || !strings.HasPrefix(string(b), "q") && !strings.HasPrefix(string(b), "name:") {
				return nil // not "QUIC": never held
			}
			return prefixSniffer{}
		},
		SniffTimeout: timeout,
		OpenReply:    (&replies{}).openReply,
	}
	t.Cleanup(func() { tbl.Close() })
	return tbl, conn, func() map[netip.AddrPort][]string {
		mu.Lock()
		defer mu.Unlock()
		out := map[netip.AddrPort][]string{}
		for k, v := range routed {
			out[k] = append([]string(nil), v...)
		}
		return out
	}
}

func (c *fakeConn) sentStrings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, d := range c.sent {
		out = append(out, d.b)
	}
	return out
}

var quicDst = netip.MustParseAddrPort("203.0.113.20:443")

// The first datagrams are held until the sniffer finds the name; the destination is routed
// once, with the name, and the held datagrams go out first, in order.
func TestUDPTableHoldsForSniffer(t *testing.T) {
	tbl, conn, routed := sniffTable(t, time.Hour)
	tbl.Handle([]byte("q1"), client1, quicDst)
	tbl.Handle([]byte("q2"), client1, quicDst)
	if r := routed(); len(r) != 0 || len(conn.sentStrings()) != 0 {
		t.Fatalf("routed %v, sent %v before the sniffer was done", r, conn.sentStrings())
	}
	tbl.Handle([]byte("name:h3.test"), client1, quicDst)
	tbl.Handle([]byte("after"), client1, quicDst)
	want := "q1 q2 name:h3.test after"
	waitUntil(t, "all sent", func() bool { return strings.Join(conn.sentStrings(), " ") == want })
	if r := routed(); len(r[quicDst]) != 1 || r[quicDst][0] != "h3.test" {
		t.Fatalf("routed %v, want once with h3.test", r)
	}
	if st := tbl.Stats(); st.Held != 3 || st.Sniffed != 1 {
		t.Fatalf("stats %+v, want 3 held, 1 sniffed", st)
	}
}

// What Sniff does not recognise, and other ports, are routed at once.
func TestUDPTableNeverHoldsUnrecognised(t *testing.T) {
	tbl, conn, routed := sniffTable(t, time.Hour)
	tbl.Handle([]byte("dns"), client1, quicDst)
	tbl.Handle([]byte("q-other-port"), client1, remoteA)
	waitUntil(t, "sent", func() bool { return len(conn.sentStrings()) == 2 })
	if r := routed(); len(r) != 2 || tbl.Stats().Held != 0 {
		t.Fatalf("routed %v, held %d", r, tbl.Stats().Held)
	}
}

// A sniffer that never decides holds at most MaxHeldDatagrams, and at most SniffTimeout.
func TestUDPTableHoldBounds(t *testing.T) {
	tbl, conn, routed := sniffTable(t, time.Hour)
	for i := 0; i < MaxHeldDatagrams; i++ {
		tbl.Handle([]byte("q"), client1, quicDst)
	}
	waitUntil(t, "released at the count bound", func() bool { return len(conn.sentStrings()) == MaxHeldDatagrams })
	if r := routed(); len(r[quicDst]) != 1 || r[quicDst][0] != "" {
		t.Fatalf("routed %v, want once without a name", r)
	}

	tbl2, conn2, routed2 := sniffTable(t, 20*time.Millisecond)
	tbl2.Handle([]byte("q"), client2, quicDst)
	waitUntil(t, "released at the timeout", func() bool { return len(conn2.sentStrings()) == 1 })
	if r := routed2(); len(r[quicDst]) != 1 || r[quicDst][0] != "" {
		t.Fatalf("routed %v, want once without a name", r)
	}
}

// A session that ends with datagrams held counts them dropped; they are never routed.
func TestUDPTableHeldDroppedAtEnd(t *testing.T) {
	var reps reports
	tbl, conn, routed := sniffTable(t, 30*time.Millisecond)
	tbl.OnSessionEnd = reps.add
	tbl.Handle([]byte("q"), client1, quicDst)
	tbl.Close()
	if r := reps.get(); len(r) != 1 || r[0].Dropped != 1 {
		t.Fatalf("reports %+v, want one with 1 dropped", r)
	}
	if len(routed()) != 0 || len(conn.sentStrings()) != 0 {
		t.Fatalf("routed %v, sent %v after the end", routed(), conn.sentStrings())
	}
}

// Datagrams queued while a way out opens go out before any read after it opened: the
// listener must not overtake them (order within one destination is what a client sent).
func TestUDPTableQueuedDatagramsKeepTheirPlace(t *testing.T) {
	for round := range 200 {
		conn := newFakeConn(false)
		opened := make(chan struct{})
		tbl := &UDPTable{
			Route: func(src, dst netip.AddrPort, name string) UDPRoute {
				return UDPRoute{Outbound: "up", Open: func(context.Context, netip.AddrPort) (UDPConn, error) {
					<-opened
					return conn, nil
				}}
			},
			OpenReply: (&replies{}).openReply,
		}
		var want []string
		for i := range 8 {
			b := fmt.Sprint("q", i)
			want = append(want, b)
			tbl.Handle([]byte(b), client1, remoteA)
		}
		close(opened)
		for i := range 8 {
			b := fmt.Sprint("n", i)
			want = append(want, b)
			tbl.Handle([]byte(b), client1, remoteA)
		}
		waitUntil(t, "all sent", func() bool { return len(conn.sentStrings()) == len(want) })
		if got := strings.Join(conn.sentStrings(), " "); got != strings.Join(want, " ") {
			t.Fatalf("round %d: sent %s, want %s", round, got, strings.Join(want, " "))
		}
		tbl.Close()
	}
}
