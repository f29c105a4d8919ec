package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"

	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// Beyond MaxFlows, and beyond MaxPerSrc for one source, a new flow is refused at once (the
// inbound's reply gets the reason) and counted; flows from other sources still start.
func TestFlowLimitsRefuseAtOnceAndCount(t *testing.T) {
	dst := testutil.ServeLoopback(t, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() }) // open until the client ends
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: upstream.Direct{}, Rule: "all"}, MaxFlows: 3, MaxPerSrc: 2}

	start := func(src string) (error, func()) {
		a, b := testutil.TCPPair(t)
		replied := make(chan error, 1)
		go g.Handle(context.Background(), b, route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort(src), Dst: dst, Inbound: route.SOCKS},
			func(err error) error { replied <- err; return nil })
		select {
		case err := <-replied:
			return err, func() { a.Close() }
		case <-time.After(5 * time.Second):
			t.Fatal("no reply from Handle")
			return nil, nil
		}
	}
	var stops []func()
	for _, src := range []string{"10.0.0.1:1", "10.0.0.1:2"} {
		err, stop := start(src)
		if err != nil {
			t.Fatalf("flow from %s refused: %v", src, err)
		}
		stops = append(stops, stop)
	}
	if err, _ := start("10.0.0.1:3"); !errors.Is(err, ErrSourceLimit) {
		t.Fatalf("third flow from one source: %v, want ErrSourceLimit", err)
	}
	err, stop := start("10.0.0.2:1")
	if err != nil {
		t.Fatalf("flow from another source refused: %v", err)
	}
	stops = append(stops, stop)
	if err, _ := start("10.0.0.3:1"); !errors.Is(err, ErrFlowLimit) {
		t.Fatalf("fourth flow: %v, want ErrFlowLimit", err)
	}
	if r := g.Stats.snapshot().Refused; r[ErrSourceLimit.Reason] != 1 || r[ErrFlowLimit.Reason] != 1 {
		t.Fatalf("refusal counters %v", r)
	}
	for _, s := range stops {
		s()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cut := g.Shutdown(ctx); cut != 0 {
		t.Fatalf("%d flows still live after their clients closed", cut)
	}
}
