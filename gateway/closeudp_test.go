package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/socksserver"
)

// udpFlowsOf lists g's live UDP flows.
func udpFlowsOf(g *Gateway) []admin.Flow {
	var out []admin.Flow
	for _, f := range g.LiveFlows() {
		if f.Network == "udp" {
			out = append(out, f)
		}
	}
	return out
}

// closedLines counts the lines of hook that say the API closed their flow.
func closedLines(hook *logtest.Hook) int {
	n := 0
	for _, e := range hook.AllEntries() {
		if err, _ := e.Data[logrus.ErrorKey].(error); errors.Is(err, ErrClosedByAPI) {
			n++
		}
	}
	return n
}

// A transparent UDP session closed through the control API leaves the flow list at once, is
// logged and counted with the reason, and the client's next datagram starts a new session.
func TestCloseFlowFromTheAPIEndsATransparentUDPSession(t *testing.T) {
	sink := udpSink(t)
	up := &udpUpstream{stubUpstream{"proxy"}, make(chan net.PacketConn, 4)}
	logger, hook := logtest.NewNullLogger()
	g := &Gateway{Router: fixedRouter{Action: route.ActionProxy, Upstream: up, Rule: "all"}, Log: logrus.NewEntry(logger)}
	in := &udpInbound{g: g, port: 12345, withoutSupport: configs.UDPBlock}
	in.table = &nat.UDPTable{Route: in.route, OnSessionEnd: in.logSession}
	defer in.table.Close()
	g.udpTable = in.table
	client := netip.MustParseAddrPort("10.0.1.2:5000")
	in.table.Handle([]byte("one"), client, sink)
	var opened net.PacketConn
	select {
	case opened = <-up.opened:
	case <-time.After(5 * time.Second):
		t.Fatal("no way out opened")
	}
	flows := udpFlowsOf(g)
	if len(flows) != 1 || !strings.HasPrefix(flows[0].ID, "udp-") {
		t.Fatalf("flows %+v, want the session", flows)
	}
	a := AdminSource{G: g}
	if a.CloseFlow(flows[0].ID + "0") {
		t.Fatal("an unknown session id closed something")
	}
	if !a.CloseFlow(flows[0].ID) {
		t.Fatalf("CloseFlow(%q) found nothing", flows[0].ID)
	}
	if l := udpFlowsOf(g); len(l) != 0 {
		t.Fatalf("flows right after the close: %+v, want none", l)
	}
	// The way out is closed by the close, or, when its open was still finishing (the upstream
	// hands it over before the table keeps it), by the open as it finds the session ended.
	testutil.WaitUntil(t, "the session's way out closed", func() bool {
		_, err := opened.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(sink))
		return errors.Is(err, net.ErrClosed)
	})
	testutil.WaitUntil(t, "the session's line", func() bool { return closedLines(hook) == 1 })
	if snap := g.Stats.snapshot(); len(snap.Ended) != 1 || snap.Ended[0].Flows != 1 || snap.Ended[0].Outcome != OutcomeFailed.String() {
		t.Errorf("ended %+v, want the session counted once, as a TCP flow closed by the API is", snap.Ended)
	}

	in.table.Handle([]byte("two"), client, sink)
	testutil.WaitUntil(t, "a new session", func() bool { return len(udpFlowsOf(g)) == 1 })
	if id := udpFlowsOf(g)[0].ID; id == flows[0].ID {
		t.Fatalf("the next datagram's session has the closed one's id %s", id)
	}
	if n := a.CloseFlows(); n != 1 {
		t.Fatalf("CloseFlows closed %d, want the new session", n)
	}
	if l := udpFlowsOf(g); len(l) != 0 {
		t.Fatalf("flows after CloseFlows: %+v", l)
	}
	testutil.WaitUntil(t, "its line", func() bool { return closedLines(hook) == 2 })
}

// An explicit SOCKS5 UDP association closed through the control API leaves the flow list at
// once, its control connection is closed (the client sees the association end), and its line
// says why.
func TestCloseFlowFromTheAPIEndsAnExplicitUDPAssociation(t *testing.T) {
	sink := udpSink(t)
	up := &udpUpstream{stubUpstream{"direct"}, make(chan net.PacketConn, 4)}
	logger, hook := logtest.NewNullLogger()
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: up, Rule: "all", Way: "direct"}, Log: logrus.NewEntry(logger)}
	srv := &socksserver.Server{Tunneler: &socksInbound{g: g}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(context.Background(), c)
		}
	}()
	open := func() (*socksclient.Association, admin.Flow) {
		t.Helper()
		pc, err := (&socksclient.Dialer{Address: ln.Addr().String()}).ListenPacket(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		if _, err := pc.WriteTo([]byte("q"), net.UDPAddrFromAddrPort(sink)); err != nil {
			t.Fatal(err)
		}
		var f admin.Flow
		testutil.WaitUntil(t, "the association listed with its datagram", func() bool {
			l := udpFlowsOf(g)
			if len(l) == 1 && l[0].Dst == sink.String() && l[0].BytesUp > 0 {
				f = l[0]
				return true
			}
			return false
		})
		return pc.(*socksclient.Association), f
	}
	assoc, f := open()
	a := AdminSource{G: g}
	if !a.CloseFlow(f.ID) {
		t.Fatalf("CloseFlow(%q) found nothing", f.ID)
	}
	if l := udpFlowsOf(g); len(l) != 0 {
		t.Fatalf("flows right after the close: %+v, want none", l)
	}
	select {
	case <-assoc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client's association did not end: its control connection is open")
	}
	if n := closedLines(hook); n != 1 {
		t.Errorf("%d lines say the API closed the association, want 1", n)
	}
	if snap := g.Stats.snapshot(); len(snap.Ended) != 1 || snap.Ended[0].Flows != 1 {
		t.Errorf("ended %+v, want the association counted once", snap.Ended)
	}
	if a.CloseFlow(f.ID) {
		t.Error("a closed association closed twice")
	}

	assoc, _ = open()
	if n := a.CloseFlows(); n != 1 {
		t.Fatalf("CloseFlows closed %d, want the association", n)
	}
	select {
	case <-assoc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("CloseFlows left the client's association open")
	}
	testutil.WaitUntil(t, "its line", func() bool { return closedLines(hook) == 2 })
}
