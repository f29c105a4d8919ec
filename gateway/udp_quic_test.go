package gateway

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/route"
)

// recordingSink is a loopback UDP socket that keeps what it receives.
type recordingSink struct {
	addr netip.AddrPort
	mu   sync.Mutex
	got  [][]byte
}

func newRecordingSink(t *testing.T) *recordingSink {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &recordingSink{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, bytes.Clone(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *recordingSink) received() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

// quicInbound is a transparent UDP inbound whose router sends flows named
// quic.socksgate.test by sniffing through byName and everything else through other, and
// records each flow it was asked about.
func quicInbound(t *testing.T, sniffPort uint16, mode configs.QUICMode) (*udpInbound, *udpUpstream, *udpUpstream, func() []route.Flow) {
	byName := &udpUpstream{stubUpstream{"by-name"}, make(chan net.PacketConn, 4)}
	other := &udpUpstream{stubUpstream{"other"}, make(chan net.PacketConn, 4)}
	var mu sync.Mutex
	var flows []route.Flow
	g := &Gateway{Router: routerFunc(func(f route.Flow) route.Decision {
		mu.Lock()
		flows = append(flows, f)
		mu.Unlock()
		if f.Host == "quic.socksgate.test" && f.From == route.NameSniff {
			return route.Decision{Action: route.ActionProxy, Upstream: byName, Rule: "quic-by-name"}
		}
		return route.Decision{Action: route.ActionProxy, Upstream: other, Rule: "other"}
	})}
	g.Sniff = &Sniffing{Ports: []configs.PortRange{{From: sniffPort, To: sniffPort}}, Timeout: time.Hour}
	in := &udpInbound{g: g, port: 12345, withoutSupport: configs.UDPBlock, quic: mode, sniffing: g.Sniff}
	in.table = &nat.UDPTable{Route: in.route, Sniff: in.sniffQUIC, SniffTimeout: g.Sniff.Timeout}
	t.Cleanup(func() { in.table.Close() })
	return in, byName, other, func() []route.Flow {
		mu.Lock()
		defer mu.Unlock()
		return append([]route.Flow(nil), flows...)
	}
}

// A real client's Initials on a sniff port are held until the ClientHello is whole, then
// routed once by the server name, and carried in order.
func TestTransparentUDPRoutesQUICByName(t *testing.T) {
	sink := newRecordingSink(t)
	in, _, _, flows := quicInbound(t, sink.addr.Port(), configs.QUICSniff)
	dgs := testutil.ChromiumQUICInitials(t)
	client := netip.MustParseAddrPort("10.0.1.2:5000")
	in.table.Handle(dgs[0], client, sink.addr)
	if len(flows()) != 0 {
		t.Fatalf("routed %v after the first Initial; want it held for the rest of the ClientHello", flows())
	}
	in.table.Handle(dgs[1], client, sink.addr)
	in.table.Handle([]byte("third"), client, sink.addr)
	testutil.WaitUntil(t, "three datagrams at the sink", func() bool { return len(sink.received()) == 3 })
	got := sink.received()
	if !bytes.Equal(got[0], dgs[0]) || !bytes.Equal(got[1], dgs[1]) || string(got[2]) != "third" {
		t.Fatal("datagrams reordered or changed")
	}
	fs := flows()
	if len(fs) != 1 || fs[0].Host != "quic.socksgate.test" || fs[0].From != route.NameSniff || fs[0].Dst != sink.addr {
		t.Fatalf("routed %+v; want once, by the sniffed name, to the address the client chose", fs)
	}
	ss := in.table.Sessions()
	d, f, ok := tagged(ss[0].Tag)
	if !ok || d.Rule != "quic-by-name" || f.Host != "quic.socksgate.test" {
		t.Fatalf("session tag %+v %+v; want the rule and the name for its line", d, f)
	}
	if st := in.table.Stats(); st.Sniffed != 1 || st.Held != 2 {
		t.Fatalf("stats %+v; want 2 held, 1 sniffed", st)
	}
}

// Non-QUIC UDP on a sniff port, and QUIC on another port, are routed at once by address.
func TestTransparentUDPNeverHoldsNonQUIC(t *testing.T) {
	sink := newRecordingSink(t)
	in, _, _, flows := quicInbound(t, sink.addr.Port(), configs.QUICSniff)
	in.table.Handle([]byte("\x12\x34 not quic"), netip.MustParseAddrPort("10.0.1.2:5000"), sink.addr)
	testutil.WaitUntil(t, "the datagram at the sink", func() bool { return len(sink.received()) == 1 })

	other := newRecordingSink(t) // not a sniff port
	in.table.Handle(testutil.ChromiumQUICInitials(t)[0], netip.MustParseAddrPort("10.0.1.3:5000"), other.addr)
	testutil.WaitUntil(t, "the Initial at the other sink", func() bool { return len(other.received()) == 1 })
	for _, f := range flows() {
		if f.Host != "" {
			t.Fatalf("flow %+v named", f)
		}
	}
	if st := in.table.Stats(); st.Held != 0 {
		t.Fatalf("%d datagrams held", st.Held)
	}
}

// transparent.quic: block drops UDP to port 443 and nothing else.
func TestTransparentUDPQUICBlock(t *testing.T) {
	in, _, _, flows := quicInbound(t, 443, configs.QUICBlock)
	r := in.route(netip.MustParseAddrPort("10.0.1.2:5000"), netip.MustParseAddrPort("203.0.113.1:443"), "")
	if !errors.Is(r.Drop, errQUICBlocked) || len(flows()) != 0 {
		t.Fatalf("route to :443 %+v; want dropped before the rules", r)
	}
	r = in.route(netip.MustParseAddrPort("10.0.1.2:5000"), netip.MustParseAddrPort("203.0.113.1:4433"), "")
	if r.Drop != nil {
		t.Fatalf("route to :4433 dropped: %v", r.Drop)
	}
}
