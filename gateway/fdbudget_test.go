package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksserver"
	"github.com/socksgate/socksgate/upstream"
)

// The budget of a 1024 limit keeps 128 for what is not a flow; an unknown limit bounds nothing.
func TestDescriptorBudgetFromTheLimit(t *testing.T) {
	if b := newFDBudget(1024); b == nil || b.room != 1024-128 {
		t.Fatalf("budget of 1024: %+v, want room for 896", b)
	}
	if b := newFDBudget(100); b.room != 50 {
		t.Fatalf("budget of 100: room %d, want 50 (never more than half reserved)", b.room)
	}
	var none *fdBudget = newFDBudget(0)
	if none != nil || !none.Acquire(1<<20) {
		t.Fatal("an unknown limit must grant everything")
	}
	none.Release(1 << 20)
}

// TCP flows and explicit UDP associations are each charged two descriptors, and an association
// is admitted only with room for its first path too; past the room a new one is refused with
// ErrDescriptorLimit and counted, and an ended one gives its room back. A path of a live
// association is refused too, as a datagram error, not the association's end.
func TestDescriptorBudgetRefusesNewFlowsNotLiveOnes(t *testing.T) {
	g := &Gateway{
		Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: upstream.Direct{}, Rule: "all"},
		fds:    &fdBudget{room: 4 * fdsPerFlow},
	}
	in := &socksInbound{g: g}
	deliver := func([]byte, socks.Addr) {}
	flow := func(port uint16) *liveFlow {
		return &liveFlow{Flow: route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port)}}
	}
	f1, f2, f3 := flow(1), flow(2), flow(3)
	for _, f := range []*liveFlow{f1, f2} {
		if err := g.track(f); err != nil {
			t.Fatalf("flow within the budget: %v", err)
		}
	}
	assoc, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.0.1:5000"), deliver)
	if err != nil {
		t.Fatalf("association within the budget: %v", err)
	}
	// Two descriptors left: enough for a TCP flow, not for an association and its first path.
	if _, err := in.OpenUDP(context.Background(), netip.MustParseAddrPort("10.0.0.1:5001"), deliver); !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("association without room for its path: %v, want ErrDescriptorLimit", err)
	}
	if err := g.track(f3); err != nil {
		t.Fatalf("flow within the budget: %v", err)
	}
	if err := g.track(flow(4)); !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("flow past the budget: %v, want ErrDescriptorLimit", err)
	}
	if r := g.Stats.snapshot().Refused; r[ErrDescriptorLimit.Reason] != 1 {
		t.Fatalf("refusals %v, want the association's for descriptors", r) // track alone counts nothing: begin does
	}
	// The live association's first datagram needs a path, for which there is no room now.
	dst := socksserver.Target{Addr: netip.MustParseAddrPort("127.0.0.1:9")}
	if err := assoc.Send(context.Background(), []byte("x"), dst); !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("a path past the budget: %v, want ErrDescriptorLimit", err)
	}
	g.untrack(f1)
	if err := assoc.Send(context.Background(), []byte("x"), dst); err != nil {
		t.Fatalf("a path once a flow ended: %v", err)
	}
	if err := g.track(flow(5)); !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("flow while the path holds the room: %v, want ErrDescriptorLimit", err)
	}
	assoc.Close()
	g.untrack(f2)
	g.untrack(f3)
	if h := g.fds.held.Load(); h != 0 {
		t.Fatalf("%d descriptors still charged after everything ended", h)
	}
}

// The descriptors really open count as well as the charges: a process whose descriptors are
// held by something the budget does not charge (handshakes, the resolver) refuses early.
func TestDescriptorBudgetCountsRealDescriptorsNearTheBound(t *testing.T) {
	open := 10
	b := &fdBudget{room: 100, near: 75, count: func() (int, error) { return open, nil }}
	if !b.Acquire(2) {
		t.Fatal("refused with 10 of 100 open")
	}
	open = 100
	// Far from near, the estimate (the last count plus charges) may be stale for a few grants,
	// but not for more than recountEvery.
	refused := false
	for range recountEvery + 1 {
		if !b.Acquire(1) {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("all 100 descriptors open and the budget still grants")
	}
	open = 10
	b.sinceCount = recountEvery
	if !b.Acquire(2) {
		t.Fatal("refused once descriptors were closed again")
	}
}

// Before it refuses, the budget asks for idle descriptors back (the relay's pooled pipes).
func TestDescriptorBudgetRelievesBeforeRefusing(t *testing.T) {
	b := &fdBudget{room: 4}
	b.relieve = func() int {
		if b.held.Load() < 4 {
			return 0
		}
		b.Release(2) // a pooled pipe closed
		return 2
	}
	if !b.Acquire(4) || !b.Acquire(2) {
		t.Fatal("the budget refused although a pooled pipe could be closed")
	}
	b.relieve = func() int { return 0 }
	if b.Acquire(1) {
		t.Fatal("granted past the room with nothing to relieve")
	}
}

// openFDs counts the process's descriptors.
func TestOpenFDsCountsDescriptors(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counted from /proc/self/fd")
	}
	const more = 10
	for attempt := 0; ; attempt++ { // another test's goroutine may still be closing its sockets
		before, err := openFDs()
		if err != nil {
			t.Fatal(err)
		}
		var files []*os.File
		for range more / 2 {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, r, w)
		}
		after, _ := openFDs()
		for _, f := range files {
			f.Close()
		}
		if after-before == more {
			return
		}
		if attempt == 5 {
			t.Fatalf("count went from %d to %d with %d more open", before, after, more)
		}
	}
}

type nopUDPConn struct{ closed *int }

func (nopUDPConn) WriteToAddrPort(b []byte, _ netip.AddrPort) (int, error) { return len(b), nil }
func (nopUDPConn) ReadFromAddrPort([]byte) (int, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, net.ErrClosed
}
func (c nopUDPConn) Close() error { *c.closed++; return nil }
func (c nopUDPConn) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) {
	return len(b), nil
}

// A transparent UDP session's ways out and reply sockets are charged while open, released once
// however often they are closed, and refused without room (a reply as over the reply limit).
func TestDescriptorBudgetChargesTransparentUDP(t *testing.T) {
	b := &fdBudget{room: fdsPerUDPPath + fdsPerReply}
	closed := 0
	open := b.openUDP(func(context.Context, netip.AddrPort) (nat.UDPConn, error) { return nopUDPConn{&closed}, nil })
	reply := b.openReply(func(netip.AddrPort) (nat.ReplyConn, error) { return nopUDPConn{&closed}, nil })
	c, err := open(context.Background(), netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := reply(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(context.Background(), netip.AddrPort{}); !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("a way out past the budget: %v", err)
	}
	if _, err := reply(netip.AddrPort{}); !errors.Is(err, nat.ErrReplyLimit) || !errors.Is(err, ErrDescriptorLimit) {
		t.Fatalf("a reply socket past the budget: %v", err)
	}
	c.Close()
	c.Close()
	rc.Close()
	if h := b.held.Load(); h != 0 || closed != 3 {
		t.Fatalf("held %d after closing, %d closes; want 0 and 3", h, closed)
	}
}

// A direct way out is one socket, and is charged one: the second descriptor reserved for an
// association's is given back once the socket is open.
func TestDescriptorBudgetChargesADirectWayOutOne(t *testing.T) {
	b := &fdBudget{room: 3}
	open := b.openUDP(func(context.Context, netip.AddrPort) (nat.UDPConn, error) {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		return udpCarrier(pc), nil
	})
	var cs []nat.UDPConn
	for range 2 {
		c, err := open(context.Background(), netip.AddrPort{})
		if err != nil {
			t.Fatalf("direct way out %d of 2 in a budget of 3: %v", len(cs)+1, err)
		}
		cs = append(cs, c)
	}
	if h := b.held.Load(); h != 2 {
		t.Fatalf("held %d for two direct ways out, want 2", h)
	}
	for _, c := range cs {
		c.Close()
	}
	if h := b.held.Load(); h != 0 {
		t.Fatalf("held %d after closing, want 0", h)
	}
}

// Pipes, which only make a flow faster, hold at most a quarter of the room between them: the
// rest is kept for flows, also when pipes were taken first (and stay held by stalled flows).
func TestDescriptorBudgetKeepsRoomForFlowsFromPipes(t *testing.T) {
	b := &fdBudget{room: 16}
	p := b.pipes()
	if !p.Acquire(2) || !p.Acquire(2) {
		t.Fatal("pipes refused within a quarter of the room")
	}
	if p.Acquire(2) {
		t.Fatal("pipes took more than a quarter of the room")
	}
	for i := range 6 {
		if !b.Acquire(fdsPerFlow) {
			t.Fatalf("flow %d refused the room kept for flows", i)
		}
	}
	if b.Acquire(fdsPerFlow) {
		t.Fatal("a flow granted past the room")
	}
	p.Release(2)
	if h, ph := b.held.Load(), b.pipesHeld.Load(); h != 14 || ph != 2 {
		t.Fatalf("held %d, of which pipes %d; want 14 and 2", h, ph)
	}
	// Full of flows, no pipe either.
	if !b.Acquire(fdsPerFlow) || p.Acquire(2) {
		t.Fatal("a pipe granted past the room")
	}
}

// An accepted socket may use the reserve but its last quarter, and is charged nothing: with
// the flows' room full, accepting goes on until the hard bound, and a new flow is refused.
func TestDescriptorBudgetBoundsAcceptedSockets(t *testing.T) {
	b := newFDBudget(1024)
	if b.hard != 1024-32 {
		t.Fatalf("hard bound %d, want %d", b.hard, 1024-32)
	}
	open := 0
	b.count = func() (int, error) { return open, nil } // the descriptors really open
	for range b.room / 2 {
		if !b.Acquire(fdsPerFlow) {
			t.Fatal("a flow within the room was refused")
		}
		open += fdsPerFlow
	}
	n := 0
	for b.acceptFits() {
		open++ // accepted, still in its handshake
		n++
	}
	if want := int(b.hard - b.room); n != want {
		t.Fatalf("%d sockets accepted with the flows' room full, want %d", n, want)
	}
	if b.Acquire(fdsPerFlow) {
		t.Fatal("a new flow was admitted with the room full")
	}
	open -= 10 // handshakes that ended without a flow
	if !b.acceptFits() {
		t.Fatal("accepting did not resume once sockets were closed")
	}
}
