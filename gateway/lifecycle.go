package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/socksgate/socksgate/internal/tcpinfo"
)

// ErrCutAtShutdown is the error a flow still live at shutdown's deadline ends with.
var ErrCutAtShutdown = errors.New("cut at shutdown: grace period over")

// Shutdown stops taking new flows and waits for the live ones to end until ctx is done; then it
// closes whatever is left, each flow ending with ErrCutAtShutdown. It returns the number of
// flows it had to cut.
func (g *Gateway) Shutdown(ctx context.Context) int { return g.shutdown(ctx, nil) }

// shutdown is Shutdown calling cut (when not nil) right after the flows still live at ctx's
// end have been closed, before waiting for them to end: Run ends the HTTP servers' requests
// there, after the sweep, so a forwarded request's flow is cut as one, with its error, rather
// than ended by its server's close a moment before.
func (g *Gateway) shutdown(ctx context.Context, cut func()) int {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	g.mu.Lock()
	n := len(g.flows)
	for lf := range g.flows {
		lf.cutErr = ErrCutAtShutdown // finish makes it the flow's error
		lf.close()
	}
	g.mu.Unlock()
	if cut != nil {
		cut()
	}
	<-done
	return n
}

// cutError is why lf was closed from outside, or nil.
func (g *Gateway) cutError(lf *liveFlow) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return lf.cutErr
}

// Active is the number of flows being handled now.
func (g *Gateway) Active() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flows)
}

// close ends a flow from outside (shutdown, idle expiry): the relay closes both sockets and
// wakes its parked directions, which end the flow on the closed sockets. The caller holds
// Gateway.mu, which guards lf.remote and lf.relay.
func (lf *liveFlow) close() {
	if lf.relay != nil {
		lf.relay.Close()
		return
	}
	switch c := lf.client.(type) {
	case nil: // a forwarded flow still dialling: its dial sees this and gives up
		lf.cut = true
		return
	case *loggedConn:
		go c.Close() // its close untracks the flow, which takes Gateway.mu: our caller holds it
		return
	}
	lf.client.Close()
	if lf.remote != nil {
		lf.remote.Close()
	}
}

// ExpireIdle closes every TCP flow whose client socket has neither sent nor received data for
// longer than g.Idle, or one of whose sockets has had data in flight with no acknowledgment
// from its peer for that long (a blackholed upstream while the client still trickles bytes
// toward it; a LAN host gone while the server still sends), and reports how many it closed.
// The kernel keeps those times (TCP_INFO tcpi_last_data_recv / tcpi_last_data_sent,
// tcpi_unacked / tcpi_last_ack_recv), so the relay's data path carries no timer and no
// bookkeeping: one sweep over the live flows is the whole cost.
func (g *Gateway) ExpireIdle() int {
	if g.Idle <= 0 {
		return 0
	}
	limit := uint32(g.Idle / time.Millisecond)
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for lf := range g.flows {
		idle := false
		if c, ok := lf.client.(*loggedConn); ok {
			// A forwarded request's upstream connection (its only socket here), in use or
			// idle in the client's pool: it holds a flow slot like any flow.
			idle = tcpinfo.IdleFor(c.Conn) > limit || tcpinfo.StalledFor(c.Conn) > limit
		} else if lf.remote != nil {
			idle = tcpinfo.IdleFor(lf.client) > limit || tcpinfo.StalledFor(lf.remote) > limit || tcpinfo.StalledFor(lf.client) > limit
		}
		if idle {
			lf.close() // closing only wakes the relay; the flow leaves g.flows on its own goroutine
			n++
		}
	}
	return n
}

// RunIdleSweeper calls ExpireIdle periodically until ctx ends.
func (g *Gateway) RunIdleSweeper(ctx context.Context) {
	if g.Idle <= 0 {
		return
	}
	every := g.Idle / 4
	if every > time.Minute {
		every = time.Minute
	}
	if every < 100*time.Millisecond {
		every = 100 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.ExpireIdle()
		}
	}
}
