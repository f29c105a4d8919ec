package gateway

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socksserver"
)

// Stats counts what the gateway did, for the admin endpoint. Its zero value is ready to use and
// every method is safe for concurrent use. TCP flows are counted once each, when they end (and
// their dial once, when it completes), never per byte; live flows are read from the flow table
// and the kernel's TCP_INFO only when someone asks.
//
// The exported counters are hooks for inbounds that keep UDP sessions of their own (the explicit
// SOCKS5 associations): they update them directly; a table that counts its own sessions (the
// transparent UDP NAT) reports them through SetUDPSource instead.
type Stats struct {
	// UDPSessions is the number of UDP sessions now that no table reports through SetUDPSource
	// (explicit SOCKS5 associations): Add(1) on create, Add(-1) at the end.
	UDPSessions atomic.Int64
	// UDPSessionsTotal counts UDP sessions created.
	UDPSessionsTotal atomic.Uint64
	// ReplyBindFailures counts UDP replies dropped because their transparent reply socket could
	// not be bound (EADDRINUSE: a local daemon holds that address).
	ReplyBindFailures atomic.Uint64
	// RulesRestored counts the times the kernel rules were put back after someone else
	// removed or changed them.
	RulesRestored atomic.Uint64
	// SOCKSUDP counts the datagrams the explicit SOCKS5 UDP relay dropped; every
	// socksserver.Server of a run counts into it.
	SOCKSUDP socksserver.UDPCounters

	upTotal, downTotal atomic.Uint64 // bytes of every ended flow, for the control API's traffic

	mu      sync.Mutex
	udp     func() UDPCounts // see SetUDPSource
	ended   map[endKey]*endTotals
	refused map[string]uint64
	dial    map[string]*latency
}

type endKey struct{ inbound, upstream, outcome string }

type endTotals struct{ flows, up, down uint64 }

// dialBuckets are the upper bounds (seconds) of the dial latency histogram: a LAN-side proxy
// answers in milliseconds, a distant one or a chain in hundreds, a failing one at the timeout.
var dialBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

type latency struct {
	counts []uint64 // per bucket, not cumulative; one extra for +Inf
	sum    float64
}

// UDPCounts are the UDP NAT table's counters as the admin endpoint shows them.
type UDPCounts struct {
	Active            int64  // sessions now
	Total             uint64 // sessions created
	ReplyBindFailures uint64 // replies dropped: reply socket bind failed
}

// SetUDPSource makes the admin endpoint read the UDP counters from f (for a NAT table that
// keeps its own, e.g. nat.UDPTable.Stats) instead of the UDPSessions, UDPSessionsTotal and
// ReplyBindFailures fields; what f returns is added to those fields.
func (s *Stats) SetUDPSource(f func() UDPCounts) {
	s.mu.Lock()
	s.udp = f
	s.mu.Unlock()
}

// FlowEnded counts one ended flow: its outcome (blocked by a rule, failed with err, or ok) and
// its bytes each way. Handle calls it for TCP; a UDP session (transparent or an explicit
// association) is counted once when it ends, with its first destination's route.
func (s *Stats) FlowEnded(f route.Flow, d route.Decision, up, down int64, err error) {
	k := endKey{f.Inbound.String(), upstreamLabel(d), outcomeOf(d, err).String()}
	s.upTotal.Add(uint64(max(up, 0)))
	s.downTotal.Add(uint64(max(down, 0)))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended == nil {
		s.ended = make(map[endKey]*endTotals)
	}
	t := s.ended[k]
	if t == nil {
		t = &endTotals{}
		s.ended[k] = t
	}
	t.flows++
	t.up += uint64(max(up, 0))
	t.down += uint64(max(down, 0))
}

// carried is the bytes of every ended flow, each way.
func (s *Stats) carried() (up, down uint64) { return s.upTotal.Load(), s.downTotal.Load() }

// Refuse counts a flow refused before it was routed, by its Refusal's reason ("loop",
// "max_flows", ...).
func (s *Stats) Refuse(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refused == nil {
		s.refused = make(map[string]uint64)
	}
	s.refused[reason]++
}

// DialDone records how long a successful dial took, from the flow's start to a ready upstream
// connection (routing, connect, proxy handshakes). Failed dials are counted by FlowEnded.
func (s *Stats) DialDone(d route.Decision, took time.Duration) {
	sec := took.Seconds()
	i := sort.SearchFloat64s(dialBuckets, sec) // first bound >= sec
	label := upstreamLabel(d)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dial == nil {
		s.dial = make(map[string]*latency)
	}
	l := s.dial[label]
	if l == nil {
		l = &latency{counts: make([]uint64, len(dialBuckets)+1)}
		s.dial[label] = l
	}
	l.counts[i]++
	l.sum += sec
}

// snapshot copies the counters kept by s (not the live flows).
func (s *Stats) snapshot() admin.Snapshot {
	snap := admin.Snapshot{
		Refused:           map[string]uint64{},
		UDPSessions:       s.UDPSessions.Load(),
		UDPSessionsTotal:  s.UDPSessionsTotal.Load(),
		ReplyBindFailures: s.ReplyBindFailures.Load(),
		RulesRestored:     s.RulesRestored.Load(),
	}
	d := s.SOCKSUDP.Load()
	snap.SOCKSUDPDropped = admin.SOCKSUDPDrops{ForeignSource: d.Foreign, Fragment: d.Fragmented, Malformed: d.Malformed}
	s.mu.Lock()
	udp := s.udp
	s.mu.Unlock()
	if udp != nil {
		c := udp()
		snap.UDPSessions += c.Active
		snap.UDPSessionsTotal += c.Total
		snap.ReplyBindFailures += c.ReplyBindFailures
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, t := range s.ended {
		snap.Ended = append(snap.Ended, admin.FlowCount{
			Inbound: k.inbound, Upstream: k.upstream, Outcome: k.outcome,
			Flows: t.flows, BytesUp: t.up, BytesDown: t.down,
		})
	}
	sort.Slice(snap.Ended, func(i, j int) bool {
		a, b := snap.Ended[i], snap.Ended[j]
		return a.Inbound+"\x00"+a.Upstream+"\x00"+a.Outcome < b.Inbound+"\x00"+b.Upstream+"\x00"+b.Outcome
	})
	for r, n := range s.refused {
		snap.Refused[r] += n
	}
	for label, l := range s.dial {
		h := admin.Histogram{Upstream: label, Sum: l.sum, Buckets: make(map[float64]uint64, len(dialBuckets))}
		for i, c := range l.counts {
			h.Count += c
			if i < len(dialBuckets) {
				h.Buckets[dialBuckets[i]] = h.Count
			}
		}
		snap.DialLatency = append(snap.DialLatency, h)
	}
	sort.Slice(snap.DialLatency, func(i, j int) bool { return snap.DialLatency[i].Upstream < snap.DialLatency[j].Upstream })
	return snap
}

// upstreamLabel names a decision's way out for metrics and /flows: the upstream's redacted
// String, or "none" for a block.
func upstreamLabel(d route.Decision) string {
	if d.Upstream != nil {
		return d.Upstream.String()
	}
	return "none"
}

// routed is Handle's hook once the dial is done: the decision becomes visible in the live flow
// table and a successful dial's latency is recorded.
func (g *Gateway) routed(lf *liveFlow, d route.Decision, err error) {
	d.CountHit()
	g.mu.Lock()
	lf.decision, lf.routed = d, true
	g.mu.Unlock()
	if err == nil {
		g.Stats.DialDone(d, time.Since(lf.start))
	}
}

// LiveFlows lists the flows being handled now, oldest first. Bytes are read from the client
// socket's TCP_INFO (bytes received from the client, bytes it acknowledged), so the relay keeps
// no counters; for explicit inbounds they include the client's proxy handshake.
func (g *Gateway) LiveFlows() []admin.Flow {
	type entry struct {
		lf     liveFlow
		client any
	}
	g.mu.Lock()
	entries := make([]entry, 0, len(g.flows))
	for lf := range g.flows {
		entries = append(entries, entry{lf: liveFlow{Flow: lf.Flow, id: lf.id, start: lf.start, decision: lf.decision, routed: lf.routed}, client: lf.client})
	}
	g.mu.Unlock()
	now := time.Now()
	t := g.tracker()
	out := make([]admin.Flow, 0, len(entries))
	for _, e := range entries {
		f := e.lf.Flow
		af := admin.Flow{
			ID:      flowID(e.lf.id),
			Network: f.Network.String(),
			Src:     f.Src.String(),
			Name:    f.Host,
			Inbound: f.Inbound.String(),
			User:    f.User,
			Start:   e.lf.start,
			Age:     math.Round(now.Sub(e.lf.start).Seconds()*1000) / 1000,
		}
		if f.Host != "" {
			af.NameFrom = f.From.String()
		}
		if af.Network == "" {
			af.Network = "tcp"
		}
		if f.Dst.IsValid() {
			af.Dst = f.Dst.String()
		} else if f.Host != "" {
			af.Dst = f.Address()
		}
		if e.lf.routed {
			af.Upstream = upstreamLabel(e.lf.decision)
			if m := e.lf.decision.Member; m != "" {
				af.Upstream += " via " + m // the group, and the member carrying this flow
			}
			af.Rule = e.lf.decision.Rule
			af.Action = e.lf.decision.Action.String()
			af.Way, af.Member = e.lf.decision.Way, e.lf.decision.Member
		}
		af.BytesUp, af.BytesDown = liveBytes(e.client)
		deviceOf(t, &af, f.Src.Addr())
		out = append(out, af)
	}
	out = append(out, g.udpFlows(now)...)
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// udpFlows lists the live UDP sessions: transparent ones from the NAT table, explicit SOCKS5
// associations. A session may talk to many destinations; dst, rule and upstream are those of
// its first datagram.
func (g *Gateway) udpFlows(now time.Time) []admin.Flow {
	g.mu.Lock()
	tbl := g.udpTable
	assocs := make([]*explicitUDP, 0, len(g.assocs))
	for u := range g.assocs {
		assocs = append(assocs, u)
	}
	g.mu.Unlock()
	var out []admin.Flow
	t := g.tracker()
	add := func(id string, f route.Flow, d route.Decision, routed bool, start time.Time, up, down uint64) {
		af := admin.Flow{
			ID:      id,
			Network: "udp", Src: f.Src.String(), Name: f.Host, Inbound: f.Inbound.String(), User: f.User, Start: start,
			Age:     math.Round(now.Sub(start).Seconds()*1000) / 1000,
			BytesUp: up, BytesDown: down,
		}
		if f.Dst.IsValid() {
			af.Dst = f.Dst.String()
		} else if f.Host != "" {
			af.Dst = f.Address()
		}
		if routed {
			af.Upstream, af.Rule, af.Action = upstreamLabel(d), d.Rule, d.Action.String()
			af.Way, af.Member = d.Way, d.Member
		}
		deviceOf(t, &af, f.Src.Addr())
		out = append(out, af)
	}
	if tbl != nil {
		for _, s := range tbl.Sessions() {
			d, f, routed := tagged(s.Tag)
			if !routed {
				f = route.Flow{Src: s.Src, Dst: s.FirstDst, Inbound: capturedInbound(s.Src, route.TProxy)}
			}
			add(udpSessionID(s.Src, s.Start), f, d, routed, s.Start, s.BytesUp, s.BytesDown)
		}
	}
	for _, u := range assocs {
		u.seen.Lock() // not u.mu: an association holds it while it dials an upstream
		f, d, routed := u.first, u.firstD, u.first.Network != 0
		u.seen.Unlock()
		if !routed { // no datagram yet
			f = route.Flow{Src: u.src, Inbound: route.SOCKS}
		}
		add(flowID(u.id), f, d, routed, u.start, uint64(u.upBytes.Load()), uint64(u.downBytes.Load()))
	}
	return out
}

// activeCounts groups the live flows by inbound and upstream ("pending" while dialing).
func (g *Gateway) activeCounts() []admin.ActiveCount {
	type key struct{ inbound, upstream string }
	counts := map[key]int{}
	g.mu.Lock()
	for lf := range g.flows {
		k := key{lf.Inbound.String(), "pending"}
		if lf.routed {
			k.upstream = upstreamLabel(lf.decision)
		}
		counts[k]++
	}
	g.mu.Unlock()
	out := make([]admin.ActiveCount, 0, len(counts))
	for k, n := range counts {
		out = append(out, admin.ActiveCount{Inbound: k.inbound, Upstream: k.upstream, Flows: n})
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Inbound+"\x00"+out[i].Upstream < out[j].Inbound+"\x00"+out[j].Upstream
	})
	return out
}
