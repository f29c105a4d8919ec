package upstream

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/rawio"
)

// A connection Direct dials is in Own while it is open, by its local address, and leaves it
// when it is closed (once, however often Close is called).
func TestDirectKeepsItsConnectionsInOwn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	own := &OwnConns{}
	c, err := Direct{Own: own}.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	defer peer.Close()
	from := peer.RemoteAddr().(*net.TCPAddr).AddrPort()
	if !own.Has(from) {
		t.Fatalf("accepted peer %s not known as own (own has %d)", from, own.Len())
	}
	if own.Has(netip.AddrPortFrom(from.Addr(), from.Port()+1)) {
		t.Fatal("another port is known as own")
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(from.Addr().As16()), from.Port())
	if !own.Has(mapped) {
		t.Fatalf("%s (IPv4-mapped) not known as own", mapped)
	}
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Fatal("the tracked connection lost CloseWrite")
	}
	c.Close()
	c.Close()
	if own.Has(from) || own.Len() != 0 {
		t.Fatalf("closed connection still own (len %d)", own.Len())
	}
}

// Two live connections on one local address and port (the kernel shares an ephemeral port
// across destinations) are counted: closing one leaves the other known.
func TestOwnConnsCountsSharedLocalPorts(t *testing.T) {
	var own OwnConns
	ap := netip.MustParseAddrPort("10.0.0.1:40000")
	own.add(ap)
	own.add(ap)
	own.remove(ap)
	if !own.Has(ap) {
		t.Fatal("one of two connections closed: the port is still own")
	}
	own.remove(ap)
	if own.Has(ap) {
		t.Fatal("both closed: the port is still own")
	}
	var none *OwnConns
	if none.Has(ap) {
		t.Fatal("a nil set has something")
	}
}

// The per-flow cost: one add and one remove per dial, one lookup per accepted connection,
// from many goroutines at once with a few thousand connections live.
func BenchmarkOwnConns(b *testing.B) {
	var own OwnConns
	base := netip.MustParseAddr("192.168.1.1")
	for p := range 4000 {
		own.add(netip.AddrPortFrom(base, uint16(20000+p)))
	}
	b.Run("dial+close", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			p := uint16(30000)
			for pb.Next() {
				ap := netip.AddrPortFrom(base, p)
				own.add(ap)
				own.remove(ap)
				p++
			}
		})
	})
	b.Run("accept lookup", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			p := uint16(0)
			peer := netip.MustParseAddr("192.168.1.20")
			for pb.Next() {
				if own.Has(netip.AddrPortFrom(peer, p)) {
					b.Fatal("a LAN client known as own")
				}
				p++
			}
		})
	})
}

// A connection accepted before its dial has returned and added it: Await waits for the dials
// in flight and finds it once its dial ends; with no dial in flight it answers at once.
func TestOwnConnsAwaitsDialsInFlight(t *testing.T) {
	var own OwnConns
	ap := netip.MustParseAddrPort("10.0.2.1:49104")
	if own.Await(ap, time.Hour) {
		t.Fatal("known with nothing dialled")
	}
	own.dialStart()
	found := make(chan bool)
	go func() { found <- own.Await(ap, time.Hour) }()
	for own.waiters.Load() == 0 {
		runtime.Gosched()
	}
	other := netip.MustParseAddrPort("10.0.2.1:49200")
	own.dialStart()
	own.add(other) // another dial ends first: still waiting for the one in flight
	own.dialEnd()
	own.add(ap)
	own.dialEnd()
	if !<-found {
		t.Fatal("the connection whose dial ended is not known")
	}
	own.dialStart() // a dial that never ends: the wait is bounded
	if own.Await(netip.MustParseAddrPort("10.0.2.1:1"), time.Millisecond) {
		t.Fatal("an unknown peer known")
	}
}

// A tracked connection is its socket's bytes: the handshakes on it read and write raw.
var _ rawio.Socket = (*ownConn)(nil)

// A proxy's connection asking for the destination socksgate is asking that proxy for is the
// request come back; another client asking for it, or the proxy once the handshake is over,
// is not.
func TestOwnConnsKnowsHandshakesInFlight(t *testing.T) {
	var o OwnConns
	proxy, lan := netip.MustParseAddr("10.0.2.2"), netip.MustParseAddr("10.0.1.2")
	if o.Handshaking(proxy) {
		t.Fatal("a handshake before any")
	}
	o.Handshake(proxy, "203.0.113.10:80")
	if !o.Handshaking(netip.MustParseAddr("::ffff:10.0.2.2")) || o.Handshaking(lan) {
		t.Fatal("Handshaking does not know the proxy alone")
	}
	if !o.ComesBack(proxy, "203.0.113.10:80") || !o.ComesBack(netip.MustParseAddr("::ffff:10.0.2.2"), "203.0.113.10:80") {
		t.Fatal("the proxy asking for the destination in flight was not known as a loop")
	}
	if o.ComesBack(lan, "203.0.113.10:80") || o.ComesBack(proxy, "203.0.113.10:443") {
		t.Fatal("another client, or another destination, was taken for a loop")
	}
	o.HandshakeDone(proxy, "203.0.113.10:80")
	if o.ComesBack(proxy, "203.0.113.10:80") || o.Handshaking(proxy) {
		t.Fatal("a handshake that ended is still in flight")
	}
	var none *OwnConns
	none.Handshake(proxy, "y")
	none.HandshakeDone(proxy, "y")
	if none.ComesBack(proxy, "y") || none.Handshaking(proxy) {
		t.Fatal("a nil set knows something")
	}
}

// socksgate's own lookups go over marked sockets: the resolver Direct gives dials with its
// Control (router.capture would otherwise take each lookup for the router's own traffic).
func TestDirectResolverMarksItsSockets(t *testing.T) {
	marked := 0
	d := Direct{Control: func(network, address string, c syscall.RawConn) error { marked++; return nil }}
	r := d.Resolver()
	if r == net.DefaultResolver || r.Dial == nil || !r.PreferGo {
		t.Fatal("no resolver of its own")
	}
	c, err := r.Dial(context.Background(), "udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if marked != 1 {
		t.Fatalf("the resolver's socket went through Control %d times, want 1", marked)
	}
	if d.dialer().Resolver != nil && d.dialer().Resolver.Dial == nil {
		t.Fatal("direct dials by name resolve with the default resolver")
	}
	if (Direct{}).Resolver() != net.DefaultResolver {
		t.Fatal("no Control: want the default resolver")
	}
}
