package udpbatch

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func listen(t *testing.T, network, addr string) (*net.UDPConn, syscall.RawConn) {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return c, rc
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// Datagrams queued before a read come back in one call, each whole, with its source; a read
// with nothing queued waits for the next one.
func TestReadTakesEveryQueuedDatagram(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}, {"udp", "[::]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			rx, rc := listen(t, tc.network, tc.addr)
			dst := addrOf(rx)
			if dst.Addr().IsUnspecified() {
				dst = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dst.Port())
			}
			srcNet := "udp4"
			if dst.Addr().Is6() {
				srcNet = "udp6"
			}
			tx, _ := listen(t, srcNet, netip.AddrPortFrom(dst.Addr(), 0).String())
			for i := range 5 {
				if _, err := tx.WriteToUDPAddrPort([]byte(fmt.Sprintf("datagram %d", i)), dst); err != nil {
					t.Fatal(err)
				}
			}
			b := New(8, 2048, 0)
			got := 0
			for got < 5 {
				n, err := b.Read(rc)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					if want := fmt.Sprintf("datagram %d", got); string(b.Bufs[i][:b.N[i]]) != want {
						t.Fatalf("datagram %q, want %q", b.Bufs[i][:b.N[i]], want)
					}
					if from, want := b.From[i], addrOf(tx); from != want {
						t.Fatalf("from %v, want %v", from, want)
					}
					got++
				}
			}
			// Nothing queued: Read waits for the next datagram.
			go func() {
				time.Sleep(20 * time.Millisecond)
				tx.WriteToUDPAddrPort([]byte("late"), dst)
			}()
			if n, err := b.Read(rc); err != nil || n != 1 || string(b.Bufs[0][:b.N[0]]) != "late" {
				t.Fatalf("read after waiting: %d %v %q", n, err, b.Bufs[0][:b.N[0]])
			}
		})
	}
}

// A read of a batch allocates nothing.
func TestReadAllocatesNothing(t *testing.T) {
	rx, rc := listen(t, "udp4", "127.0.0.1:0")
	tx, _ := listen(t, "udp4", "127.0.0.1:0")
	r := New(4, 64, 0)
	msg := []byte("x")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := tx.WriteToUDPAddrPort(msg, addrOf(rx)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(rc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per batch read, want 0", allocs)
	}
}

// A datagram longer than its buffer is truncated and says so in its flags.
func TestReadMarksTruncatedDatagrams(t *testing.T) {
	rx, rc := listen(t, "udp4", "127.0.0.1:0")
	tx, _ := listen(t, "udp4", "127.0.0.1:0")
	tx.WriteToUDPAddrPort(make([]byte, 100), addrOf(rx))
	b := New(2, 10, 0)
	n, err := b.Read(rc)
	if err != nil || n != 1 {
		t.Fatalf("read: %d %v", n, err)
	}
	if b.Flags[0]&syscall.MSG_TRUNC == 0 || b.N[0] != 10 {
		t.Fatalf("len %d flags %#x, want 10 and MSG_TRUNC", b.N[0], b.Flags[0])
	}
}

// Serve hands over every datagram in order, takes a batch only with datagrams in hand, stops
// when fn says so, and returns the socket's error once it is closed.
func TestServeBatchesUntilToldToStop(t *testing.T) {
	rx, rc := listen(t, "udp4", "127.0.0.1:0")
	tx, _ := listen(t, "udp4", "127.0.0.1:0")
	const total = 20
	for i := range total {
		tx.WriteToUDPAddrPort([]byte(fmt.Sprint(i)), addrOf(rx))
	}
	var gets, puts, got int
	var held *Batch
	get := func() *Batch {
		gets++
		if held == nil {
			held = New(4, 64, 0)
		}
		b := held
		held = nil
		return b
	}
	put := func(b *Batch) { puts++; held = b }
	err := Serve(rc, get, put, func(b *Batch, n int) bool {
		for i := range n {
			if s := string(b.Bufs[i][:b.N[i]]); s != fmt.Sprint(got) {
				t.Errorf("datagram %q, want %d", s, got)
			}
			got++
		}
		return got < total
	})
	if err != nil || got != total || gets != puts {
		t.Fatalf("Serve: %v, %d datagrams, %d batches taken and %d given back", err, got, gets, puts)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(rc, get, put, func(*Batch, int) bool { return true }) }()
	rx.Close() // before or after Serve began waiting: either way it returns an error
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve returned nil on a closed socket")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the socket closed")
	}
}
