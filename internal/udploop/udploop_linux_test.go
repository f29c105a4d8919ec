package udploop

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/udpbatch"
)

func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("%s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c interface{ LocalAddr() net.Addr }) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func startLoop(t *testing.T) *Loop {
	t.Helper()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	go l.Run()
	t.Cleanup(func() { l.Close() })
	return l
}

type datagram struct {
	b    string
	from netip.AddrPort
}

// watch detaches c into l and hands every datagram read to the returned channel.
func watch(t *testing.T, l *Loop, c *net.UDPConn) (*Conn, <-chan datagram, <-chan error) {
	t.Helper()
	rc, err := Detach(c)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan datagram, 16)
	ended := make(chan error, 1)
	b := udpbatch.New(4, 2048, 0)
	if err := l.Watch(rc, func() {
		n, err := rc.ReadBatch(b)
		if err != nil {
			rc.CloseWith(err)
			return
		}
		for i := range n {
			got <- datagram{string(b.Bufs[i][:b.N[i]]), b.From[i]}
		}
	}, func(err error) { ended <- err }); err != nil {
		t.Fatal(err)
	}
	return rc, got, ended
}

func recv(t *testing.T, ch <-chan datagram) datagram {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("no datagram")
	}
	return datagram{}
}

// A watched socket's datagrams reach its ready function from the loop, in both families, and
// its writes reach their destinations: a dual-stack socket sends to IPv4 v4-mapped, an IPv4
// one refuses an IPv6 destination with an error.
func TestLoopRelaysBothFamilies(t *testing.T) {
	l := startLoop(t)
	peer4 := listen(t, "udp4", "127.0.0.1:0")
	peer6 := listen(t, "udp6", "[::1]:0")

	s4, got4, _ := watch(t, l, listen(t, "udp4", "127.0.0.1:0"))
	s6, got6, _ := watch(t, l, listen(t, "udp", "[::]:0"))
	if l.Len() != 2 {
		t.Fatalf("%d watched, want 2", l.Len())
	}

	if _, err := peer4.WriteToUDPAddrPort([]byte("to4"), addrOf(s4)); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, got4); d.b != "to4" || d.from != addrOf(peer4) {
		t.Fatalf("got %+v, want to4 from %s", d, addrOf(peer4))
	}
	if _, err := peer6.WriteToUDPAddrPort([]byte("to6"), netip.AddrPortFrom(netip.IPv6Loopback(), addrOf(s6).Port())); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, got6); d.b != "to6" || d.from != addrOf(peer6) {
		t.Fatalf("got %+v, want to6 from %s", d, addrOf(peer6))
	}

	// Writes: v4 from the dual-stack socket, v6 from it, v6 from the IPv4 one refused.
	if _, err := s6.WriteToAddrPort([]byte("mapped"), addrOf(peer4)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	peer4.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, from, err := peer4.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != "mapped" || from.Port() != addrOf(s6).Port() {
		t.Fatalf("peer4 got %q from %s (%v)", buf[:n], from, err)
	}
	if _, err := s4.WriteToAddrPort([]byte("x"), addrOf(peer6)); !errors.Is(err, unix.EAFNOSUPPORT) {
		t.Fatalf("IPv4 socket to IPv6: %v, want EAFNOSUPPORT", err)
	}
}

// Close from inside ready (a failure found while reading) leaves the descriptor open until
// ready returns, then closes it and reports the cause once; the loop no longer watches it.
func TestCloseInsideReadyWaitsForIt(t *testing.T) {
	l := startLoop(t)
	peer := listen(t, "udp4", "127.0.0.1:0")
	c := listen(t, "udp4", "127.0.0.1:0")
	rc, err := Detach(c)
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("cause")
	var openInside atomic.Bool
	ended := make(chan error, 2)
	if err := l.Watch(rc, func() {
		rc.CloseWith(cause)
		_, err := unix.GetsockoptInt(rc.fd, unix.SOL_SOCKET, unix.SO_TYPE)
		openInside.Store(err == nil)
	}, func(err error) { ended <- err }); err != nil {
		t.Fatal(err)
	}
	peer.WriteToUDPAddrPort([]byte("x"), addrOf(rc))
	select {
	case err := <-ended:
		if err != cause {
			t.Fatalf("closed with %v, want the cause", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not closed")
	}
	if !openInside.Load() {
		t.Fatal("the descriptor was closed while ready was using it")
	}
	if l.Len() != 0 {
		t.Fatalf("%d still watched", l.Len())
	}
	if _, err := rc.WriteToAddrPort([]byte("x"), addrOf(peer)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := rc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	select {
	case err := <-ended:
		t.Fatalf("closed twice (%v)", err)
	default:
	}
}

// Close of an idle conn closes it at once, nil as the cause; Loop.Close returns with Run.
func TestCloseIdleConnAndLoop(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { l.Run(); close(ran) }()
	_, _, ended := watch(t, l, listen(t, "udp4", "127.0.0.1:0"))
	rc, _, _ := watch(t, l, listen(t, "udp4", "127.0.0.1:0"))
	rc.Close()
	if l.Len() != 1 {
		t.Fatalf("%d watched, want 1", l.Len())
	}
	select {
	case <-ended:
		t.Fatal("the other conn was closed")
	default:
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if err := l.Watch(&Conn{}, func() {}, nil); err == nil {
		t.Fatal("watch on a closed loop")
	}
}
