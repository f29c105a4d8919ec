package gateway

import (
	"errors"
	"net"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/route"
)

// The flow record: every inbound (captured TCP and UDP, HTTP CONNECT and forwarding, SOCKS
// CONNECT and UDP) goes through it. begin counts the flow against the limits and lists it in
// the live table, or refuses it (one "flow refused" line, one count by reason); routed records
// the decision; finish writes the flow's one line and its one metrics update. The layout of the
// line is the same for every inbound: src, dst (the name when there is one), ip, network,
// inbound, rule, action, upstream, member, tls, up, down, duration, outcome, and error when it failed.

// Outcome is how a flow ended, the "outcome" label of socksgate_flows_total.
type Outcome uint8

const (
	OutcomeOK      Outcome = iota // carried
	OutcomeFailed                 // routed, but the dial or the relay failed
	OutcomeBlocked                // a rule blocked it
	OutcomeRefused                // refused before routing: a limit, a loop, shutdown
)

func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeFailed:
		return "failed"
	case OutcomeBlocked:
		return "blocked"
	case OutcomeRefused:
		return "refused"
	}
	return "unknown"
}

// A Refusal is why a flow was refused before it was routed. Reason is its metric label
// (socksgate_flows_refused_total{reason}); the error text is for people.
type Refusal struct {
	Reason string
	text   string
}

func (r *Refusal) Error() string { return r.text }

// Reasons a flow is refused before it is routed.
var (
	ErrFlowLimit    = &Refusal{"max_flows", "refused: flow limit reached (limits.max_flows)"}
	ErrSourceLimit  = &Refusal{"max_flows_per_source", "refused: per-source flow limit reached (limits.max_flows_per_source)"}
	ErrShuttingDown = &Refusal{"shutting_down", "refused: shutting down"}
	// errLoop: the destination is one of socksgate's own listeners (the flow would come back in).
	errLoop = &Refusal{"loop", "refused: destination is socksgate's own listener (loop)"}
	// errListenerLoop: a connection to the transparent listener itself, not captured.
	errListenerLoop = &Refusal{"loop", "refused: connection to the transparent listener itself (loop)"}
	// errOwnDial: an accepted connection comes from one of socksgate's own dials (Gateway.Own):
	// an upstream, a name or a NAT that check could not see leads back to socksgate.
	errOwnDial = &Refusal{"loop", "refused: the connection is socksgate's own dial come back (an upstream, a name or a NAT leads to socksgate itself: loop)"}
	// errViaLoop: an HTTP request whose Via carries socksgate's own pseudonym (httpproxy.Via):
	// it went out through a proxy that sent it back.
	errViaLoop = &Refusal{"loop", "refused: the request has passed through socksgate already (its Via names this process): a proxy chain leads back to socksgate (loop)"}
	// errChainLoop: a proxy asks socksgate for the very destination socksgate is asking that
	// proxy for at this moment: a chain through it (SOCKS has no Via) leads back to socksgate.
	errChainLoop = &Refusal{"loop", "refused: the upstream proxy asks for the destination socksgate is asking it for: a proxy chain leads back to socksgate (loop)"}
	// errNoOriginalDst: conntrack does not know where a captured connection was going.
	errNoOriginalDst = &Refusal{"no_original_dst", "refused: original destination unknown"}
)

// outcomeOf classifies an ended flow.
func outcomeOf(d route.Decision, err error) Outcome {
	var r *Refusal
	switch {
	case errors.As(err, &r):
		return OutcomeRefused
	case d.Action == route.ActionBlock || errors.Is(err, ErrBlocked):
		return OutcomeBlocked
	case err != nil:
		return OutcomeFailed
	}
	return OutcomeOK
}

// begin admits a new flow: it is counted against the limits and listed in the live table, or
// refused, and then logged and counted as refused here (the caller only answers its client).
// client, when known, is the flow's client connection (closed by shutdown and the idle sweeper).
func (g *Gateway) begin(f route.Flow, client net.Conn) (*liveFlow, error) {
	if g.comesBack(f) {
		g.refuse(f, errChainLoop)
		return nil, errChainLoop
	}
	lf := &liveFlow{Flow: f, id: g.lastID.Add(1), client: client, start: time.Now()}
	if err := g.track(lf); err != nil {
		g.refuse(f, err)
		return nil, err
	}
	return lf, nil
}

// comesBack reports whether f is one of socksgate's own requests to an upstream proxy come back
// (upstream.OwnConns.ComesBack), by the destination as asked or as an address.
func (g *Gateway) comesBack(f route.Flow) bool {
	src := f.Src.Addr()
	if !g.Own.Handshaking(src) { // a new flow's usual answer: no lock, no string built
		return false
	}
	if g.Own.ComesBack(src, f.Address()) {
		return true
	}
	return f.Host != "" && f.Dst.IsValid() && g.Own.ComesBack(src, f.Dst.String())
}

// refuse logs and counts a flow refused before it was routed (err is a *Refusal).
func (g *Gateway) refuse(f route.Flow, err error) { g.ended(flowEnd{f: f, err: err}) }

// flowEnd is what the end of one flow reports.
type flowEnd struct {
	f        route.Flow
	d        route.Decision
	up, down int64
	dur      time.Duration
	err      error
	extra    logrus.Fields // per-inbound figures (datagrams of a UDP session)
}

// finish ends a tracked flow: its one line, its one metrics update, out of the live table.
func (g *Gateway) finish(lf *liveFlow, e flowEnd) {
	e.f, e.dur = lf.Flow, time.Since(lf.start)
	if cut := g.cutError(lf); cut != nil {
		e.err = cut // what the cut made of its sockets (closed, reset) is no news
	}
	g.ended(e)
	g.untrack(lf)
	g.deviceEnd(lf, e.f, e.up, e.down) // out of the table first: no sampler pass reads it again
}

// ended writes the line and the metrics update of a flow that has ended: a refused one (before
// routing, or at its dial: a loop, the router itself) among the refusals by reason, any other
// among the flows.
func (g *Gateway) ended(e flowEnd) {
	if r := (*Refusal)(nil); errors.As(e.err, &r) {
		g.Stats.Refuse(r.Reason)
	} else {
		g.Stats.FlowEnded(e.f, e.d, e.up, e.down, e.err)
	}
	g.logEnd(e)
}

// logEnd writes a flow's one line.
func (g *Gateway) logEnd(e flowEnd) {
	if g.Log == nil || e.err == nil && !g.Log.Logger.IsLevelEnabled(logrus.InfoLevel) {
		return // build no fields for a line nobody reads
	}
	f, d := e.f, e.d
	outcome := outcomeOf(d, e.err)
	fields := make(logrus.Fields, 16+len(e.extra))
	fields["src"] = f.Src.String()
	if f.Dst.IsValid() || f.Host != "" {
		fields["dst"] = f.Address()
	}
	fields["network"] = f.Network.String()
	fields["inbound"] = f.Inbound.String()
	fields["outcome"] = outcome.String()
	if outcome != OutcomeRefused {
		fields["rule"] = d.Rule
		fields["action"] = d.Action.String()
		fields["up"] = e.up
		fields["down"] = e.down
		fields["duration"] = e.dur.Round(time.Millisecond).String()
	}
	if d.Upstream != nil {
		fields["upstream"] = d.Upstream.String()
	}
	if d.Member != "" {
		fields["member"] = d.Member
	}
	if d.TLS != "" {
		fields["tls"] = d.TLS
	}
	if f.Host != "" && f.Dst.IsValid() {
		fields["ip"] = f.Dst.String()
	}
	if f.Host != "" {
		fields["name_from"] = f.From.String()
	}
	for k, v := range e.extra {
		fields[k] = v
	}
	l := g.Log.WithFields(fields)
	if e.err != nil {
		l = l.WithError(e.err)
	}
	msg := "flow"
	if f.Network == route.UDP {
		msg = "udp session"
	}
	switch outcome {
	case OutcomeOK:
		l.Info(msg)
	case OutcomeBlocked:
		l.Info(msg + " blocked")
	case OutcomeRefused:
		l.Warn(msg + " refused")
	default:
		l.Warn(msg + " failed")
	}
}
