package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksserver"
)

// udpSink is a loopback UDP socket that takes datagrams and answers none.
func udpSink(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// wantOneCarriedSession checks that g counted one UDP session, carried (ok), and no refusal.
func wantOneCarriedSession(t *testing.T, g *Gateway) {
	t.Helper()
	snap := g.Stats.snapshot()
	if len(snap.Refused) != 0 {
		t.Errorf("refusals %v; want none: only one destination's datagrams were refused", snap.Refused)
	}
	if len(snap.Ended) != 1 || snap.Ended[0].Outcome != OutcomeOK.String() || snap.Ended[0].Flows != 1 {
		t.Errorf("ended %+v; want one session, ok", snap.Ended)
	}
}

// A transparent UDP session whose datagrams to one destination are refused (sent to the
// listener itself: a loop) and to another carried is a carried session: only those datagrams
// are dropped, and the session is neither refused nor named by the refused destination.
func TestTransparentUDPSessionWithOneRefusedDestinationIsCarried(t *testing.T) {
	sink := udpSink(t)
	up := &udpUpstream{stubUpstream{"proxy"}, make(chan net.PacketConn, 4)}
	g := &Gateway{Router: fixedRouter{Action: route.ActionProxy, Upstream: up, Rule: "all"}}
	in := &udpInbound{g: g, port: 12345, withoutSupport: configs.UDPBlock}
	var report nat.UDPSessionReport
	in.table = &nat.UDPTable{Route: in.route, OnSessionEnd: func(r nat.UDPSessionReport) { report = r; in.logSession(r) }}
	client := netip.MustParseAddrPort("10.0.1.2:5000")
	loop := netip.MustParseAddrPort("127.0.0.1:12345")
	in.table.Handle([]byte("to the listener"), client, loop)
	for range 3 {
		in.table.Handle([]byte("to the sink"), client, sink)
	}
	testutil.WaitUntil(t, "the sink's datagrams sent", func() bool {
		ss := in.table.Sessions()
		return len(ss) == 1 && ss[0].PacketsUp == 3
	})
	in.table.Close()
	if report.Err != nil || !errors.Is(report.DropErr, errListenerLoop) || report.FirstDst != sink || report.PacketsUp == 0 {
		t.Fatalf("report %+v; want no error, the loop as drop reason, the sink as first destination", report)
	}
	wantOneCarriedSession(t, g)

	// Refused and nothing else: the session is refused, once.
	in.table = &nat.UDPTable{Route: in.route, OnSessionEnd: in.logSession}
	in.table.Handle([]byte("to the listener"), client, loop)
	in.table.Handle([]byte("to the listener"), client, loop)
	in.table.Close()
	if n := g.Stats.snapshot().Refused[errListenerLoop.Reason]; n != 1 {
		t.Errorf("a session refused as a whole counted %d times, want once", n)
	}
}

// The same for a SOCKS5 UDP association: a datagram to the router itself (refused) does not
// make the association refused when others were carried.
func TestExplicitUDPAssociationWithOneRefusedDestinationIsCarried(t *testing.T) {
	sink := udpSink(t)
	up := &udpUpstream{stubUpstream{"direct"}, make(chan net.PacketConn, 4)}
	g := &Gateway{Router: routerFunc(func(f route.Flow) route.Decision {
		// The sink stands for a WAN host: a rule names it. Anything else on loopback is the
		// router itself, refused.
		return route.Decision{Action: route.ActionDirect, Upstream: up, Rule: "all", ByDst: f.Dst == sink}
	})}
	u, err := (&socksInbound{g: g}).OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5000"), func([]byte, socks.Addr) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:9")}); !errors.Is(err, errLocalDst) {
		t.Fatalf("datagram to the router itself: %v; want it refused", err)
	}
	for range 3 {
		if err := u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: sink}); err != nil {
			t.Fatalf("datagram to the sink: %v", err)
		}
	}
	ex := u.(*explicitUDP)
	if f, _ := ex.first, ex.firstD; f.Dst != sink {
		t.Errorf("the session is named by %s, want the destination carried (%s)", f.Dst, sink)
	}
	u.Close()
	wantOneCarriedSession(t, g)

	// Refused and nothing else: the association is refused, once.
	u, _ = (&socksInbound{g: g}).OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5001"), func([]byte, socks.Addr) {})
	u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:9")})
	u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:9")})
	u.Close()
	if n := g.Stats.snapshot().Refused[errLocalDst.Reason]; n != 1 {
		t.Errorf("an association refused as a whole counted %d times, want once", n)
	}
}
