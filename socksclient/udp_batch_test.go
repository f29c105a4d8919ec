package socksclient

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
	"github.com/socksgate/socksgate/socks"
)

// ServeSocks hands over the relay's datagrams in order, dropping what ReadFromSocks drops, and
// returns the control connection's loss when the association ends.
func TestAssociationServeSocksBatchesAndDrops(t *testing.T) {
	if !udpbatch.Supported {
		t.Skip("no recvmmsg here")
	}
	d, relay, dropControl := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	a := listenAssociation(t, d)
	if _, err := a.WriteToSocks([]byte("hello"), socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}); err != nil {
		t.Fatal(err)
	}
	_, _, client := relayRead(t, relay)
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	remote := socks.Addr{IP: netip.MustParseAddr("198.51.100.7"), Port: 53}
	stranger.WriteToUDP(datagram(0, remote, "spoofed"), client)
	relay.WriteToUDP(datagram(1, remote, "fragment"), client)
	for _, p := range []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"} {
		relay.WriteToUDP(datagram(0, remote, p), client)
	}
	relay.WriteToUDP(datagram(0, socks.Addr{Name: "name.test", Port: 5353}, "named"), client)

	pool := udpbatch.NewPool(4, 2048, 0)
	var got []string
	err = a.ServeSocks(pool, func(b []byte, from socks.Addr) bool {
		got = append(got, from.String()+" "+string(b))
		return len(got) < 11
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "198.51.100.7:53 r0,198.51.100.7:53 r1,198.51.100.7:53 r2,198.51.100.7:53 r3,198.51.100.7:53 r4," +
		"198.51.100.7:53 r5,198.51.100.7:53 r6,198.51.100.7:53 r7,198.51.100.7:53 r8,198.51.100.7:53 r9,name.test:5353 named"
	if strings.Join(got, ",") != want {
		t.Fatalf("served %q,\nwant %q", strings.Join(got, ","), want)
	}
	if a.Dropped() != 2 {
		t.Fatalf("Dropped() = %d, want 2", a.Dropped())
	}
	errc := make(chan error, 1)
	go func() { errc <- a.ServeSocks(pool, func([]byte, socks.Addr) bool { return true }) }()
	close(dropControl)
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "control connection") {
			t.Fatalf("ServeSocks err = %v, want the control connection's loss", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeSocks still waiting after the control connection closed")
	}
}

// An association over a socket that is not a *net.UDPConn cannot batch, and says so at once.
func TestAssociationServeSocksUnsupportedWithoutAUDPSocket(t *testing.T) {
	a := &Association{}
	if err := a.ServeSocks(udpbatch.NewPool(1, 64, 0), nil); !errors.Is(err, udpbatch.ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
}

// WatchReplies moves the association into a loop: the relay's datagrams reach fn from it,
// dropped as ServeSocks drops them, writes still go out (by the loop's socket), and the loss
// of the control connection ends it with that cause. A control connection over TCP is the
// loop's to watch too: no goroutine of the association's is left; one that is no socket (a
// pipe here; TLS) keeps its goroutine, and ends the association the same way.
func TestAssociationWatchRepliesInALoop(t *testing.T) {
	if !udploop.Supported {
		t.Skip("no udp event loop here")
	}
	t.Run("tcp", func(t *testing.T) { testWatchReplies(t, true) })
	t.Run("pipe", func(t *testing.T) { testWatchReplies(t, false) })
}

func testWatchReplies(t *testing.T, tcp bool) {
	l, err := udploop.New()
	if err != nil {
		t.Fatal(err)
	}
	go l.Run()
	defer l.Close()
	d, relay, dropControl := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	if tcp {
		overTCP(t, d)
	}
	a := listenAssociation(t, d)
	got := make(chan string, 8)
	ended := make(chan error, 1)
	err = a.WatchReplies(l, udpbatch.New(4, 2048, 0), func(b []byte, from socks.Addr) {
		got <- from.String() + " " + string(b)
	}, func(err error) { ended <- err })
	if err != nil {
		t.Fatal(err)
	}
	if tcp {
		if l.Len() != 2 {
			t.Fatalf("%d sockets watched, want 2 (the relay's and the control connection)", l.Len())
		}
		testutil.WaitUntil(t, "the control connection's goroutine gone", func() bool {
			return !strings.Contains(goroutines(), "(*Association).watch(")
		})
	} else {
		if l.Len() != 1 {
			t.Fatalf("%d sockets watched, want the relay's alone", l.Len())
		}
		testutil.WaitUntil(t, "a goroutine on the pipe", func() bool {
			return strings.Contains(goroutines(), "(*Association).watch(")
		})
	}
	if _, err := a.WriteToSocks([]byte("hello"), socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}); err != nil {
		t.Fatal(err)
	}
	h, p, client := relayRead(t, relay)
	if p != "hello" || h.Addr.String() != "192.0.2.1:53" {
		t.Fatalf("relay got %q for %s", p, h.Addr)
	}
	remote := socks.Addr{IP: netip.MustParseAddr("198.51.100.7"), Port: 53}
	relay.WriteToUDP(datagram(1, remote, "fragment"), client)
	relay.WriteToUDP(datagram(0, remote, "r0"), client)
	select {
	case s := <-got:
		if s != "198.51.100.7:53 r0" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply from the loop")
	}
	if a.Dropped() != 1 {
		t.Fatalf("Dropped() = %d, want 1", a.Dropped())
	}
	close(dropControl)
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "control connection") {
			t.Fatalf("ended with %v, want the control connection's loss", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not ended after the control connection closed")
	}
	if l.Len() != 0 {
		t.Fatalf("%d still watched", l.Len())
	}
}

func goroutines() string {
	b := make([]byte, 1<<20)
	return string(b[:runtime.Stack(b, true)])
}

// Close of an association in a loop stops both its watches and reports no cause.
func TestAssociationInALoopCloses(t *testing.T) {
	if !udploop.Supported {
		t.Skip("no udp event loop here")
	}
	l, err := udploop.New()
	if err != nil {
		t.Fatal(err)
	}
	go l.Run()
	defer l.Close()
	d, _, _ := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	overTCP(t, d)
	a := listenAssociation(t, d)
	ended := make(chan error, 1)
	if err := a.WatchReplies(l, udpbatch.New(4, 2048, 0), func([]byte, socks.Addr) {}, func(err error) { ended <- err }); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("ended with %v after Close, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not ended after Close")
	}
	if l.Len() != 0 {
		t.Fatalf("%d still watched", l.Len())
	}
}

// overTCP puts a loopback TCP connection between d and its fake proxy (a pipe): the client's
// control connection is a socket, as in use.
func overTCP(t *testing.T, d *Dialer) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pipeDial := d.ProxyDial
	d.ProxyDial = func(ctx context.Context, network, address string) (net.Conn, error) {
		p, err := pipeDial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "tcp4", ln.Addr().String())
		if err != nil {
			p.Close()
			return nil, err
		}
		srv, err := ln.Accept()
		if err != nil {
			p.Close()
			c.Close()
			return nil, err
		}
		go func() { io.Copy(p, srv); p.Close() }()
		go func() { io.Copy(srv, p); srv.Close() }()
		return c, nil
	}
}
