package socksclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
)

// fakeAssociation starts a fake SOCKS5 proxy that accepts one UDP ASSOCIATE and answers with
// bnd(relayPort); its relay is a UDP socket on 127.0.0.1 returned to the test. Closing
// dropControl makes the proxy close the control connection.
func fakeAssociation(t *testing.T, bnd func(port uint16) socks.Addr) (d *Dialer, relay *net.UDPConn, dropControl chan struct{}) {
	t.Helper()
	relay, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	port := uint16(relay.LocalAddr().(*net.UDPAddr).Port)
	dropControl = make(chan struct{})
	d, _ = fakeProxy(t, SOCKS5, func(c net.Conn) error {
		req, err := serveNoAuth(c)
		if err != nil {
			return err
		}
		if req.Cmd != socks.CmdUDPAssociate || req.Addr.String() != "0.0.0.0:0" {
			return fmt.Errorf("request %v %v, want udp associate 0.0.0.0:0", req.Cmd, req.Addr)
		}
		if _, err := c.Write(reply(socks.ReplySucceeded, bnd(port))); err != nil {
			return err
		}
		closed := make(chan struct{})
		go func() { // the client closing its end also ends the fake proxy
			var b [1]byte
			c.Read(b[:])
			close(closed)
		}()
		select {
		case <-dropControl:
		case <-closed:
		}
		return nil
	})
	d.Address = "127.0.0.1:1080"
	return d, relay, dropControl
}

func listenAssociation(t *testing.T, d *Dialer) *Association {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err := d.ListenPacket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*Association)
}

// relayRead reads one datagram at the relay and decodes its header.
func relayRead(t *testing.T, relay *net.UDPConn) (socks.UDPHeader, string, *net.UDPAddr) {
	t.Helper()
	buf := make([]byte, 2048)
	relay.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := relay.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	h, hl, err := socks.ParseUDPHeader(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return h, string(buf[hl:n]), from
}

func datagram(frag byte, from socks.Addr, payload string) []byte {
	b, err := socks.AppendUDPHeader(nil, socks.UDPHeader{Frag: frag, Addr: from})
	if err != nil {
		panic(err)
	}
	return append(b, payload...)
}

func TestAssociationCarriesDatagramsBothWays(t *testing.T) {
	d, relay, _ := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	var listens atomic.Int32
	d.ListenUDP = func(ctx context.Context, network, address string) (net.PacketConn, error) {
		listens.Add(1)
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, network, address)
	}
	a := listenAssociation(t, d)
	if listens.Load() != 1 {
		t.Fatal("ListenUDP hook not used")
	}

	// Client to relay: an IP destination and a name destination.
	if _, err := a.WriteTo([]byte("hello"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}); err != nil {
		t.Fatal(err)
	}
	h, payload, client := relayRead(t, relay)
	if h.Addr.String() != "192.0.2.1:53" || h.Frag != 0 || payload != "hello" {
		t.Fatalf("relay got %+v %q", h, payload)
	}
	if _, err := a.WriteTo([]byte("name"), socks.Addr{Name: "example.com", Port: 53}); err != nil {
		t.Fatal(err)
	}
	if h, payload, _ = relayRead(t, relay); h.Addr.String() != "example.com:53" || payload != "name" {
		t.Fatalf("relay got %+v %q", h, payload)
	}
	if _, err := a.WriteTo([]byte("v6"), stringAddr("[2001:db8::1]:5353")); err != nil {
		t.Fatal(err)
	}
	if h, payload, _ = relayRead(t, relay); h.Addr.Type() != socks.AddrTypeIPv6 || payload != "v6" {
		t.Fatalf("relay got %+v %q", h, payload)
	}

	// Relay to client: a fragment and a stranger's datagram are dropped.
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	remote := socks.Addr{IP: netip.MustParseAddr("198.51.100.7"), Port: 53}
	stranger.WriteToUDP(datagram(0, remote, "spoofed"), client)
	relay.WriteToUDP(datagram(1, remote, "fragment"), client)
	relay.WriteToUDP([]byte{0, 0, 0, 9, 1}, client) // bad ATYP
	relay.WriteToUDP(datagram(0, remote, "reply1"), client)
	relay.WriteToUDP(datagram(0, socks.Addr{Name: "name.test", Port: 5353}, "reply2"), client)

	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := a.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if ua, ok := from.(*net.UDPAddr); !ok || ua.String() != "198.51.100.7:53" || string(buf[:n]) != "reply1" {
		t.Fatalf("ReadFrom = %q from %#v", buf[:n], from)
	}
	n, from, err = a.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if sa, ok := from.(socks.Addr); !ok || sa.String() != "name.test:5353" || string(buf[:n]) != "reply2" {
		t.Fatalf("ReadFrom = %q from %#v", buf[:n], from)
	}
	if a.Dropped() != 3 {
		t.Fatalf("Dropped() = %d, want 3", a.Dropped())
	}
}

type stringAddr string

func (s stringAddr) Network() string { return "udp" }
func (s stringAddr) String() string  { return string(s) }

func TestAssociationUnspecifiedBoundAddressMeansTheProxy(t *testing.T) {
	d, _, _ := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.IPv4Unspecified(), Port: p}
	})
	a := listenAssociation(t, d)
	if got := a.RelayAddr().Addr(); got != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("relay %v, want the proxy's address 127.0.0.1", a.RelayAddr())
	}
}

func TestAssociationEndsWithItsControlConnection(t *testing.T) {
	d, _, dropControl := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	a := listenAssociation(t, d)
	errc := make(chan error, 1)
	go func() {
		_, _, err := a.ReadFrom(make([]byte, 100))
		errc <- err
	}()
	close(dropControl)
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "control connection") {
			t.Fatalf("ReadFrom err = %v, want the control connection's loss", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrom still blocked after the control connection closed")
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("Done not closed")
	}
	if a.Err() == nil {
		t.Fatal("Err() = nil after the control connection closed")
	}
	if _, err := a.WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}); err == nil {
		t.Fatal("WriteTo succeeded on an ended association")
	}
}

func TestAssociationCloseEndsReads(t *testing.T) {
	d, _, dropControl := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	defer close(dropControl)
	a := listenAssociation(t, d)
	errc := make(chan error, 1)
	go func() {
		_, _, err := a.ReadFrom(make([]byte, 100))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom err = %v, want net.ErrClosed", err)
	}
	if a.Err() != nil {
		t.Fatalf("Err() = %v after Close, want nil", a.Err())
	}
}

func TestAssociationHotPathDoesNotAllocate(t *testing.T) {
	d, relay, _ := fakeAssociation(t, func(p uint16) socks.Addr {
		return socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: p}
	})
	a := listenAssociation(t, d)
	to := socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}
	payload := make([]byte, 512)
	if allocs := testing.AllocsPerRun(50, func() {
		if _, err := a.WriteToSocks(payload, to); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("WriteToSocks: %v allocations per datagram", allocs)
	}
	_, _, client := relayRead(t, relay)
	pkt := datagram(0, to, "answer")
	for range 60 {
		relay.WriteToUDP(pkt, client)
	}
	buf := make([]byte, 1500)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if allocs := testing.AllocsPerRun(50, func() {
		if _, _, err := a.ReadFromSocks(buf); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("ReadFromSocks: %v allocations per datagram", allocs)
	}
}

func TestListenPacketNeedsSOCKS5(t *testing.T) {
	for _, v := range []Version{SOCKS4, SOCKS4A} {
		d := &Dialer{Version: v, Address: "127.0.0.1:1080"}
		_, err := d.ListenPacket(context.Background())
		if !errors.Is(err, ErrUDPUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%v: err = %v, want ErrUDPUnsupported", v, err)
		}
	}
}

func TestListenPacketRefusal(t *testing.T) {
	d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
		if _, err := serveNoAuth(c); err != nil {
			return err
		}
		return writeLast(c, reply(socks.ReplyCommandNotSupported, socks.Addr{}))
	})
	_, err := d.ListenPacket(context.Background())
	var re *ReplyError
	if !errors.As(err, &re) || re.Code != socks.ReplyCommandNotSupported {
		t.Fatalf("err = %v, want command not supported", err)
	}
}

// zonedConn is a control connection whose peer is a link-local address on a named link.
type zonedConn struct{ net.Conn }

func (zonedConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.ParseIP("fe80::2"), Port: 1080, Zone: "lan0"}
}

// A link-local relay address gets the control connection's link, so datagrams leave by the
// link the proxy is on; replies from it are recognised whatever name the kernel gives the link.
func TestAssociationLinkLocalRelayKeepsItsLink(t *testing.T) {
	d := &Dialer{Address: "[fe80::2%lan0]:1080"}
	for _, bnd := range []socks.Addr{
		{IP: netip.MustParseAddr("fe80::2"), Port: 5000}, // as the proxy wrote it: no zone
		{IP: netip.IPv6Unspecified(), Port: 5000},        // "the proxy's own address"
	} {
		got, err := d.relayAddr(context.Background(), zonedConn{}, bnd)
		if err != nil || got != netip.MustParseAddrPort("[fe80::2%lan0]:5000") {
			t.Errorf("relay for BND.ADDR %v: %v, %v; want [fe80::2%%lan0]:5000", bnd, got, err)
		}
	}
	relay := netip.MustParseAddrPort("[fe80::2%lan0]:5000")
	if !sameRelay(netip.MustParseAddrPort("[fe80::2%3]:5000"), relay) || !sameRelay(relay, relay) {
		t.Error("a reply from the relay on the same link was not recognised")
	}
	if sameRelay(netip.MustParseAddrPort("[fe80::3%lan0]:5000"), relay) || sameRelay(netip.MustParseAddrPort("[fe80::2%lan0]:5001"), relay) {
		t.Error("a datagram from another address or port passed as the relay's")
	}
}
