//go:build linux

package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/tests/netlab"
)

// explicitConfig is a config with transparent capture on gw's LAN interface (so "lan:PORT"
// listen entries expand to gw's LAN addresses) and the explicit ports at their defaults plus a
// mixed port; upstreamURL becomes upstream "main"; rules and extra are appended verbatim.
func explicitConfig(upstreamURL, rules, extra string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen:
  mixed: ["lan:7890"]
%s
timeouts: {dial: 3s, grace: 2s, handshake: 3s}
upstreams:
  - {name: main, url: %q}
rules:
%s`, netlab.GWLANIf, extra, upstreamURL, rules)
}

// explicitUDPEcho runs a UDP echo in wan on port 7, both families.
func explicitUDPEcho(t testing.TB, tp *netlab.Topology) {
	t.Helper()
	pc := tp.WAN.ListenPacket("udp", "[::]:7")
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// explicitUDPClient is a minimal SOCKS5 UDP ASSOCIATE client run from inside ns.
type explicitUDPClient struct {
	ctrl  net.Conn
	pc    net.PacketConn
	relay netip.AddrPort
}

// explicitAssociate opens an association at server (no authentication) from ns.
func explicitAssociate(t testing.TB, ns *netlab.NS, server string) *explicitUDPClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", server)
	if err != nil {
		t.Fatalf("dial %s: %v", server, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	g, _ := socks.AppendGreeting(nil, socks.MethodNoAuth)
	c.Write(g)
	if m, err := socks.ReadMethodSelection(c); err != nil || m != socks.MethodNoAuth {
		t.Fatalf("method selection: %v %v", m, err)
	}
	req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: socks.Addr{IP: netip.IPv4Unspecified()}})
	c.Write(req)
	rep, err := socks.ReadReply(c)
	if err != nil || rep.Code != socks.ReplySucceeded {
		t.Fatalf("udp associate reply: %+v %v", rep, err)
	}
	c.SetDeadline(time.Time{})
	relay, ok := rep.Addr.AddrPort()
	if !ok {
		t.Fatalf("relay address %v is not an address", rep.Addr)
	}
	network := "udp4"
	if relay.Addr().Is6() {
		network = "udp6"
	}
	pc := ns.ListenPacket(network, ":0")
	return &explicitUDPClient{ctrl: c, pc: pc, relay: relay}
}

// roundTrip sends payload to dst through the relay and returns the reply's payload and source.
func (u *explicitUDPClient) roundTrip(dst socks.Addr, payload []byte) ([]byte, socks.Addr, error) {
	b, err := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: dst})
	if err != nil {
		return nil, socks.Addr{}, err
	}
	b = append(b, payload...)
	if _, err := u.pc.WriteTo(b, net.UDPAddrFromAddrPort(u.relay)); err != nil {
		return nil, socks.Addr{}, err
	}
	buf := make([]byte, 65535)
	u.pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := u.pc.ReadFrom(buf)
	if err != nil {
		return nil, socks.Addr{}, err
	}
	h, hl, err := socks.ParseUDPHeader(buf[:n])
	if err != nil {
		return nil, socks.Addr{}, err
	}
	return buf[hl:n], h.Addr, nil
}

// explicitDNSLike is a DNS-sized datagram (a query-shaped 12-byte header plus padding) with a
// sequence number, so each echo can be matched to its request.
func explicitDNSLike(seq int, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint16(b, uint16(seq))
	b[2] = 0x01 // RD
	binary.BigEndian.PutUint16(b[4:], 1)
	for i := 12; i < size; i++ {
		b[i] = byte(seq + i)
	}
	return b
}
