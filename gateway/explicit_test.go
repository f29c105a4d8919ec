package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/internal/prefixconn"
	"github.com/socksgate/socksgate/relay"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksserver"
	"github.com/socksgate/socksgate/upstream"
)

func TestExplicitLoopGuard(t *testing.T) {
	var g loopGuard
	g.add(netip.MustParseAddrPort("10.0.1.1:8080"))
	g.add(netip.MustParseAddrPort("[::]:1080"))
	tests := []struct {
		dst  string
		loop bool
	}{
		{"10.0.1.1:8080", true},
		{"127.0.0.1:1080", true},
		{"[::1]:1080", true},
		{"0.0.0.0:1080", true},
		{"10.0.1.1:8081", false},
		{"203.0.113.10:8080", false},
		{"203.0.113.10:1080", false},
	}
	for _, tt := range tests {
		if got := g.loops(netip.MustParseAddrPort(tt.dst)); got != tt.loop {
			t.Errorf("loops(%s) = %v, want %v", tt.dst, got, tt.loop)
		}
	}
	if g.loops(netip.AddrPort{}) {
		t.Error("a name-only flow counted as a loop")
	}
}

// The mixed port peeks at the first byte and leaves it in the socket for the server.
func TestExplicitPeekByteLeavesTheByte(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	if _, err := peekByte(s, 100*time.Millisecond); err == nil || time.Since(start) > time.Second {
		t.Fatalf("silent client: err %v after %v", err, time.Since(start))
	}
	c.Write([]byte{5, 1, 0})
	b, err := peekByte(s, time.Second)
	if err != nil || b != 5 {
		t.Fatalf("peek = %d, %v", b, err)
	}
	buf := make([]byte, 3)
	s.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := s.Read(buf); err != nil || n != 3 || buf[0] != 5 {
		t.Fatalf("read after peek: % x, %v", buf[:n], err)
	}
}

func TestExplicitACLDefaultsToLoopbackAndLANPrefixes(t *testing.T) {
	cfg := &configs.Config{}
	cfg.LAN.Prefixes = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
	allow, err := explicitACL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "192.168.1.20": true, "::ffff:192.168.1.20": true,
		"192.168.2.1": false, "203.0.113.1": false, "2001:db8::1": false,
	} {
		if allow(netip.MustParseAddr(a)) != want {
			t.Errorf("allow(%s) = %v, want %v", a, !want, want)
		}
	}
	cfg.Listen.Allow = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	allow, _ = explicitACL(cfg)
	if !allow(netip.MustParseAddr("203.0.113.1")) || allow(netip.MustParseAddr("::1")) {
		t.Error("an explicit allow list is not used as written")
	}
}

func TestExplicitListenAddrs(t *testing.T) {
	cfg := &configs.Config{}
	got, err := listenAddrs(cfg, "127.0.0.1:8080")
	if err != nil || len(got) != 1 || got[0] != "127.0.0.1:8080" {
		t.Fatalf("= %v, %v", got, err)
	}
	if got, err := listenAddrs(cfg, "lan:8080"); err != nil || len(got) != 0 {
		t.Fatalf("lan without interfaces = %v, %v; want nothing", got, err)
	}
	cfg.LAN.Interfaces = []string{"lo"}
	got, err = listenAddrs(cfg, "lan:1080")
	if err != nil || len(got) == 0 || got[0] != "127.0.0.1:1080" {
		t.Fatalf("lan on lo = %v, %v", got, err)
	}
	cfg.LAN.Interfaces = []string{"no-such-if0"}
	if _, err := listenAddrs(cfg, "lan:1080"); err == nil {
		t.Fatal("a missing LAN interface is not an error")
	}
}

// The upstream connection of forwarded HTTP requests is a flow: it counts against the flow
// limits, is listed live with its bytes, and is logged and counted once when it closes;
// shutdown cuts it.
func TestForwardedHTTPConnectionIsAFlow(t *testing.T) {
	dst := testutil.ServeLoopback(t, func(c net.Conn) { io.Copy(c, c); c.Close() }) // echo until the client ends
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: stubUpstream{"direct-stub"}, Rule: "all"}, MaxFlows: 1}
	h := &httpInbound{g: g, guard: &loopGuard{}}
	target := httpproxy.Target{Src: netip.MustParseAddrPort("10.0.0.1:5000"), Addr: dst, Port: dst.Port()}

	c, err := h.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Dial(context.Background(), target); !errors.Is(err, ErrFlowLimit) {
		t.Fatalf("second forwarded connection: %v, want ErrFlowLimit", err)
	}
	c.Write([]byte("hello"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	l := g.LiveFlows()
	if len(l) != 1 || l[0].Inbound != route.HTTP.String() || l[0].Upstream != "direct-stub" || l[0].Dst != dst.String() ||
		l[0].BytesUp != 5 || l[0].BytesDown != 5 {
		t.Fatalf("live flows: %+v", l)
	}
	c.Close()
	c.Close() // a second close ends nothing twice
	if g.Active() != 0 {
		t.Fatalf("%d flows live after the close", g.Active())
	}
	snap := AdminSource{G: g}.Snapshot()
	if len(snap.Ended) != 1 || snap.Ended[0].Flows != 1 || snap.Ended[0].BytesUp != 5 || snap.Ended[0].BytesDown != 5 {
		t.Fatalf("ended: %+v", snap.Ended)
	}

	// Shutdown cuts a forwarded connection nobody closed.
	if _, err := h.Dial(context.Background(), target); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if cut := g.Shutdown(ctx); cut != 1 {
		t.Fatalf("shutdown cut %d flows, want 1", cut)
	}
}

// An explicit client's bytes sent ahead of the proxy's reply (an inbound hands Handle a
// prefixconn) reach the remote first and in order, and the relay gets the socket itself: it
// can park the flow and read its TCP_INFO (the flow list's byte counts).
func TestHandleReplaysAnExplicitClientsEarlyBytes(t *testing.T) {
	got := make(chan string, 1)
	dst := testutil.ServeLoopback(t, func(c net.Conn) {
		defer c.Close()
		b := make([]byte, len("early and later"))
		_, err := io.ReadFull(c, b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
		c.Write([]byte("ok"))
		io.Copy(io.Discard, c)
	})
	client, inbound := testutil.TCPPair(t)
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: stubUpstream{"direct-stub"}, Rule: "all"}}
	ready := make(chan error, 1)
	go g.Handle(context.Background(), prefixconn.New(inbound, []byte("early ")), route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort(client.LocalAddr().String()), Dst: dst, Inbound: route.SOCKS},
		func(err error) error { ready <- err; return nil })
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	client.Write([]byte("and later"))
	select {
	case s := <-got:
		if s != "early and later" {
			t.Fatalf("remote got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reached the remote")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer := make([]byte, 2)
	if _, err := io.ReadFull(client, answer); err != nil || string(answer) != "ok" {
		t.Fatalf("answer through the relay: %q, %v", answer, err)
	}
	g.mu.Lock()
	for lf := range g.flows {
		if lf.relay == nil || !lf.relay.Parks() {
			t.Errorf("the relay reads the client through a wrapper: it cannot park it (client %T)", lf.client)
		}
	}
	g.mu.Unlock()
	if l := g.LiveFlows(); len(l) != 1 || l[0].BytesUp == 0 {
		t.Errorf("flow list: %+v, want the flow with its client's bytes", l)
	}
	client.Close()
}

// An explicit UDP association is a flow for the limits: it counts against max_flows and
// max_flows_per_source with the TCP flows, is refused beyond them, and gives its slot back when
// it ends.
func TestExplicitUDPAssociationsAreHeldToTheFlowLimits(t *testing.T) {
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: stubUpstream{"direct-stub"}, Rule: "all"}, MaxPerSrc: 2, MaxFlows: 3}
	in := &socksInbound{g: g}
	deliver := func([]byte, socks.Addr) {}
	src := netip.MustParseAddrPort("10.0.1.2:5000")
	a, err := in.OpenUDP(context.Background(), src, deliver)
	if err != nil {
		t.Fatal(err)
	}
	b, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5001"), deliver)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5002"), deliver); !errors.Is(err, ErrSourceLimit) {
		t.Fatalf("a third association from one source: %v, want ErrSourceLimit", err)
	}
	// The source's TCP flows are held to the same count.
	if err := g.track(&liveFlow{Flow: route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort("10.0.1.2:6000")}}); !errors.Is(err, ErrSourceLimit) {
		t.Fatalf("a TCP flow from a source with two associations: %v, want ErrSourceLimit", err)
	}
	c, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.3:5000"), deliver)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.4:5000"), deliver); !errors.Is(err, ErrFlowLimit) {
		t.Fatalf("a fourth association in all: %v, want ErrFlowLimit", err)
	}
	a.Close()
	if d, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5003"), deliver); err != nil {
		t.Fatalf("after one ended: %v", err)
	} else {
		d.Close()
	}
	b.Close()
	c.Close()
	if n := g.Stats.UDPSessions.Load(); n != 0 {
		t.Fatalf("%d associations counted after all closed", n)
	}
}

// slowUDPUpstream opens its UDP path only when released; entered says a dial has begun.
type slowUDPUpstream struct {
	stubUpstream
	entered, release chan struct{}
}

func (u slowUDPUpstream) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	u.entered <- struct{}{}
	select {
	case <-u.release:
	case <-ctx.Done():
	}
	return nil, errors.New("not today")
}

// The flow list does not wait for an association that is opening its path to an upstream.
func TestFlowListDoesNotWaitForAnAssociationsDial(t *testing.T) {
	up := slowUDPUpstream{stubUpstream{"slow"}, make(chan struct{}, 1), make(chan struct{})}
	defer close(up.release)
	g := &Gateway{Router: fixedRouter{Action: route.ActionProxy, Upstream: up, Rule: "all"}}
	u, err := (&socksInbound{g: g}).OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5000"), func([]byte, socks.Addr) {})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	go u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("203.0.113.10:53")})
	<-up.entered // the datagram is in the dial, holding the association
	listed := make(chan []admin.Flow, 1)
	go func() { listed <- g.LiveFlows() }()
	select {
	case l := <-listed:
		if len(l) != 1 || l[0].Network != "udp" || l[0].Dst != "203.0.113.10:53" {
			t.Fatalf("flow list: %+v", l)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the flow list waited for the association's dial")
	}
}

// The idle sweeper expires a forwarded request's upstream connection that stays silent (a
// stalled origin, or a connection idle in the client's pool): it holds a flow slot like any flow.
func TestIdleSweeperExpiresForwardedConnections(t *testing.T) {
	if !relay.CanPark { // TCP_INFO, which the sweeper reads, is Linux's
		t.Skip("no TCP_INFO here")
	}
	dst := testutil.ServeLoopback(t, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() }) // never answers
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: stubUpstream{"direct-stub"}, Rule: "all"}, Idle: 100 * time.Millisecond}
	h := &httpInbound{g: g, guard: &loopGuard{}}
	c, err := h.Dial(context.Background(), httpproxy.Target{Src: netip.MustParseAddrPort("10.0.0.1:5000"), Addr: dst, Port: dst.Port()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond)
	if n := g.ExpireIdle(); n != 1 {
		t.Fatalf("the sweeper closed %d flows, want the silent forwarded connection", n)
	}
	testutil.WaitUntil(t, "the flow to end", func() bool { return g.Active() == 0 })
}

// A destination given by name that leads back to one of socksgate's own explicit listeners
// (localhost, the router's own name) is refused once dialled direct: the flow would come back
// in as the router, past the client's own rules and limits.
func TestNamedDestinationLoopingToAListenerIsRefused(t *testing.T) {
	listener := testutil.ServeLoopback(t, func(c net.Conn) { c.Close() })
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: upstream.Direct{}, Rule: "all"}}
	guard := &loopGuard{}
	guard.add(listener)
	g.guard.Store(guard)
	f := route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort("10.0.1.2:5000"), Host: "localhost", Port: listener.Port(), Inbound: route.HTTP}
	if c, _, err := g.Dial(context.Background(), f); !errors.Is(err, errLoop) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial localhost:%d, the explicit listener: %v, want the loop refused", listener.Port(), err)
	}
}

// Two upstreams with one URL (one reached via another, which carries no UDP) are two ways out:
// an explicit association keeps a path per upstream, not per URL, so UDP meant for the one
// without UDP does not slip out through the other's association (and past
// udp_without_support). The transparent session table keys its ways out the same way.
func TestUpstreamsSharingAURLAreTwoWaysOut(t *testing.T) {
	const url = "socks5://192.0.2.1:1080"
	withUDP := &udpUpstream{stubUpstream{url}, make(chan net.PacketConn, 4)}
	chained := stubUpstream{url} // the same URL reached via another hop: no UDP
	r := routerFunc(func(f route.Flow) route.Decision {
		if f.Dst.Port() == 53 {
			return route.Decision{Action: route.ActionProxy, Upstream: withUDP, Rule: "dns", ByDst: true}
		}
		return route.Decision{Action: route.ActionProxy, Upstream: chained, Rule: "chained"}
	})
	g := &Gateway{Router: r}
	u, err := (&socksInbound{g: g}).OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.1.2:5000"), func([]byte, socks.Addr) {})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:53")}); err != nil {
		t.Fatalf("datagram for the upstream with UDP: %v", err)
	}
	err = u.Send(context.Background(), []byte("q"), socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:5353")})
	if !errors.Is(err, upstream.ErrUDPUnsupported) {
		t.Fatalf("datagram for the chained upstream (no UDP): %v; want ErrUDPUnsupported, not the other's association", err)
	}

	in := &udpInbound{g: g}
	a := in.route(netip.MustParseAddrPort("10.0.1.2:5000"), netip.MustParseAddrPort("203.0.113.1:53"), "")
	b := in.route(netip.MustParseAddrPort("10.0.1.2:5000"), netip.MustParseAddrPort("203.0.113.1:5353"), "")
	if a.Outbound == b.Outbound {
		t.Fatalf("transparent UDP: one way out (%v) for two upstreams sharing a URL", a.Outbound)
	}
}

// A flow dialled direct to the router itself (loopback, or one of its own addresses) is
// refused unless the rule that decided it names that destination with dst: a LAN client must
// not reach the admin endpoint or the router's other services through the proxy ports. A name
// that leads there (localhost) is refused once dialled.
func TestDirectFlowToTheRouterItselfNeedsARuleNamingIt(t *testing.T) {
	svc := testutil.ServeLoopback(t, func(c net.Conn) { c.Write([]byte("secret")); c.Close() })
	direct := stubUpstream{"direct"}
	for _, tt := range []struct {
		name string
		f    route.Flow
		d    route.Decision
		want error
	}{
		{"address, catch-all rule", route.Flow{Network: route.TCP, Dst: svc, Inbound: route.HTTP}, route.Decision{Action: route.ActionDirect, Upstream: direct, Rule: "all"}, errLocalDst},
		{"name, catch-all rule", route.Flow{Network: route.TCP, Host: "localhost", Port: svc.Port(), Inbound: route.SOCKS}, route.Decision{Action: route.ActionDirect, Upstream: direct, Rule: "all"}, errLocalDst},
		{"address, a rule naming it", route.Flow{Network: route.TCP, Dst: svc, Inbound: route.HTTP}, route.Decision{Action: route.ActionDirect, Upstream: direct, Rule: "router-ui", ByDst: true}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := &Gateway{Router: fixedRouter(tt.d)}
			c, _, err := g.Dial(context.Background(), tt.f)
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("dial: %v, want %v", err, tt.want)
			}
		})
	}
}

// A request aimed back at socksgate's own listener, or at the router's own services, is
// answered with what happened, not "blocked by rule" (no rule matched it); a rule's block is.
func TestHTTPAnswersSayWhyAFlowWasRefused(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code int
		text string
	}{
		{errLoop, 403, "destination is socksgate's own listener (loop)"},
		{errLocalDst, 403, "destination is the router itself"},
		{ErrBlocked, 403, "blocked by rule"},
		{ErrFlowLimit, 503, "flow limit reached"},
	} {
		code, text := httpproxy.Status(httpError(tt.err))
		if code != tt.code || !strings.Contains(text, tt.text) {
			t.Errorf("%v: %d %q, want %d %q", tt.err, code, text, tt.code, tt.text)
		}
	}
}

// A flow refused at its dial (the router itself) is counted among the refusals by its reason,
// not among the ended flows, as one refused before routing is.
func TestRefusalAtTheDialIsCountedAsARefusal(t *testing.T) {
	svc := testutil.ServeLoopback(t, func(c net.Conn) { c.Close() })
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, Upstream: stubUpstream{"direct"}, Rule: "all"}}
	client, _ := testutil.TCPPair(t)
	g.Handle(context.Background(), client, route.Flow{Network: route.TCP, Dst: svc, Inbound: route.HTTP}, nil)
	snap := g.Stats.snapshot()
	if snap.Refused[errLocalDst.Reason] != 1 || len(snap.Ended) != 0 {
		t.Fatalf("refused %v, ended %+v; want one local_destination refusal and no ended flow", snap.Refused, snap.Ended)
	}
}
