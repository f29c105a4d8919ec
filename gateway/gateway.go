package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/internal/prefixconn"
	"github.com/socksgate/socksgate/internal/rawio"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/relay"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// ErrBlocked is the error of a flow that a rule blocked.
var ErrBlocked = errors.New("blocked by rule")

// Gateway routes and relays flows handed to it by the inbounds (transparent listeners, explicit
// HTTP and SOCKS servers). It keeps a table of live flows for shutdown, idle expiry and reporting.
type Gateway struct {
	Router      route.Router
	Log         *logrus.Entry
	DialTimeout time.Duration      // bound on routing + dialing + the upstream handshake
	Idle        time.Duration      // a TCP flow with no data either way for this long is closed; 0: never
	Sniff       *Sniffing          // name sniffing on captured TCP (transparent.sniff); nil: off
	Relay       relay.Mode         // how TCP flows are relayed; the zero value is relay.Auto
	MaxFlows    int                // concurrent TCP flows; beyond it new flows are refused at once. 0: no bound
	MaxPerSrc   int                // concurrent TCP flows per source address. 0: no bound
	UDPFallback upstream.Upstream  // UDP routed to an upstream without UDP goes here; nil: dropped
	Stats       Stats              // counters for the admin endpoint (stats.go); the zero value counts
	Own         *upstream.OwnConns // socksgate's own live dials; one accepted from them is a loop. nil: none known
	Resolver    *net.Resolver      // socksgate's own lookups (marked sockets); nil: the system's default
	fds         *fdBudget          // descriptors flows may hold (fdbudget.go); nil: no bound

	health   atomic.Pointer[groupHealth] // upstreams in force, for health reporting
	reloaded atomic.Pointer[routerBox]   // the router of the last reload, replacing Router
	fallback atomic.Pointer[upstreamBox] // UDPFallback as the last reload set it
	guard    atomic.Pointer[loopGuard]   // the explicit listeners, which a named destination may turn out to be
	namer    atomic.Pointer[flowNamer]   // socksgate's DNS, which names flows to the addresses it answered (dns.go)
	devices  atomic.Pointer[deviceBox]   // the LAN's devices (devices.go); nil: off

	lastID atomic.Uint64 // the last flow id handed out

	mu       sync.Mutex
	flows    map[*liveFlow]struct{}
	perSrc   map[netip.Addr]int
	closing  bool
	wg       sync.WaitGroup            // one per tracked flow
	udpTable *nat.UDPTable             // transparent UDP sessions, for the flow list; nil: none
	assocs   map[*explicitUDP]struct{} // explicit UDP associations, for the flow list
}

// liveFlow is one TCP flow being relayed, or the upstream connection of forwarded HTTP
// requests (then client is that connection, set once dialled, and remote is nil).
type liveFlow struct {
	route.Flow
	id             uint64 // flowID, from Gateway.lastID
	client, remote net.Conn
	relay          *relay.Relay // set with remote, under Gateway.mu
	start          time.Time
	decision       route.Decision // set once routed (routed true), for the flow list
	routed         bool
	cut            bool  // closed from outside before it had a client (a forwarded flow dialling)
	cutErr         error // why it was closed from outside (shutdown), under Gateway.mu; its line's error
}

// Dial routes f and connects to its destination the way the decision says. It returns the
// decision too, so the caller can log which rule and upstream were used even on failure.
func (g *Gateway) Dial(ctx context.Context, f route.Flow) (net.Conn, route.Decision, error) {
	d := g.router().Route(ctx, f)
	if d.Action == route.ActionBlock {
		return nil, d, ErrBlocked
	}
	if d.Upstream == nil {
		return nil, d, fmt.Errorf("rule %s: no upstream", d.Rule)
	}
	if g.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.DialTimeout)
		defer cancel()
	}
	addr := f.DialAddress(g.Sniff != nil && g.Sniff.Override)
	var to netip.AddrPort // a direct flow's address, when it is dialled by address
	if d.Action == route.ActionDirect && !f.Dst.IsValid() && !d.Addr.IsValid() {
		// A name-only flow: with socksgate's DNS on, its name is resolved there (the cache
		// the LAN's queries share, the direct resolvers), never by the system's resolver.
		if addrs, ok, err := g.resolveName(ctx, f, d); ok {
			if err != nil {
				return nil, d, fmt.Errorf("resolve %s: %w", f.Host, err)
			}
			d.Addr = addrs[0]
		}
	}
	if d.Action == route.ActionDirect {
		switch {
		case f.Dst.IsValid() && (f.From == route.NameDNS || g.directToAddress(ctx, f)):
			// The client's own address: a name its DNS answer gave stands for exactly it.
			// A captured flow with a sniffed name goes direct to the address the client
			// chose, not to whatever the gateway's own resolver says the name is.
			to = f.Dst
		case f.Dst.IsValid():
			// Only its name made it direct: it goes to that name, so that a made-up SNI or
			// Host reaches the named server and no other address.
			addr = f.Address()
		case d.Addr.IsValid():
			// The router resolved the name for an address rule: dial what it matched.
			to = netip.AddrPortFrom(d.Addr, f.DstPort())
		}
		if to.IsValid() {
			if isLocalDst(to.Addr()) && !d.ByDst {
				return nil, d, errLocalDst
			}
			addr = to.String()
		}
	}
	c, err := d.Upstream.DialContext(ctx, "tcp", addr)
	if m, ok := c.(interface{ Member() string }); ok {
		d.Member = m.Member()
	}
	if resumed, ok := upstream.TLSResumed(c); ok {
		d.TLS = "full"
		if resumed {
			d.TLS = "resumed"
		}
	}
	if err == nil && d.Action == route.ActionDirect && !to.IsValid() {
		// A name (localhost, the router's own name) can lead back to the router: to socksgate's
		// own listeners (the flow would come back in as the router, past the client's own rules
		// and limits), or to its other services.
		remote := addrPort(c.RemoteAddr())
		if guard := g.guard.Load(); guard != nil && guard.loops(remote) {
			c.Close()
			return nil, d, errLoop
		}
		if isLocalDst(remote.Addr()) && !d.ByDst {
			c.Close()
			return nil, d, errLocalDst
		}
	}
	return c, d, err
}

// directToAddress reports whether a captured flow routed direct may go to the address its client
// chose. A sniffed name is the client's claim: when the address alone would not have gone
// direct, it was the name that made the flow direct, and the flow goes to that name, resolved
// by the gateway, so that a made-up SNI or Host reaches the named server and no other address.
func (g *Gateway) directToAddress(ctx context.Context, f route.Flow) bool {
	if f.Host == "" {
		return true
	}
	f.Host = ""
	return g.router().Route(ctx, f).Action == route.ActionDirect
}

// Handle carries one TCP flow: it routes and dials f, tells the inbound the outcome through
// ready (which writes the protocol's success or failure reply; nil for transparent flows, which
// have no reply to send), starts the relay both ways and returns; the flow's line is logged when
// it ends (Shutdown waits for that). It closes client. A panic in the flow is recovered and
// logged; the process keeps serving.
func (g *Gateway) Handle(ctx context.Context, client net.Conn, f route.Flow, ready func(error) error) {
	var replay []byte
	if pc, ok := client.(*prefixconn.Conn); ok {
		// What the client sent ahead of the proxy's reply (SOCKS data before the reply, a
		// TLS hello with the CONNECT) goes to the remote first, as sniffed bytes do; the relay
		// then has the socket itself, so it can park the flow and use raw calls on it.
		replay, client = pc.Prefix, pc.Conn
	}
	g.handle(ctx, client, f, ready, replay)
}

// handle is Handle with replay: bytes already read from client (while sniffing its name),
// written to the remote right after the dial, before the relay starts. It returns once the
// relay has started: the relay ends the flow (endFlow) on its own goroutines, so the
// handshake's goroutine, whose stack the dial has grown, does not stay for the flow's life.
// (Letting it carry one direction until that parks saved no CPU measurably and kept grown
// stacks alive: 2,000 idle flows took 14.4 KiB RSS each instead of 8.2.)
func (g *Gateway) handle(ctx context.Context, client net.Conn, f route.Flow, ready func(error) error, replay []byte) {
	lf, err := g.begin(f, client)
	if err != nil {
		if ready != nil {
			ready(err)
		}
		client.Close()
		return
	}
	var d route.Decision
	relaying := false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
		if !relaying {
			g.endFlow(lf, d, 0, 0, err)
		}
	}()

	var remote net.Conn
	remote, d, err = g.Dial(ctx, f)
	g.routed(lf, d, err)
	if ready != nil {
		if rerr := ready(err); rerr != nil && err == nil {
			err = fmt.Errorf("reply to client: %w", rerr)
		}
	}
	if err != nil {
		if remote != nil {
			remote.Close()
		}
		return
	}
	if len(replay) > 0 {
		if _, err = rawio.Write(remote, replay); err != nil {
			err = fmt.Errorf("replay the client's first bytes: %w", err)
			remote.Close()
			return
		}
	}
	replayed := int64(len(replay)) // the caller reuses replay's buffer once handle returns
	r := relay.New(g.Relay, client, remote, func(up, down int64, err error) {
		g.endFlow(lf, d, up+replayed, down, err)
	})
	g.mu.Lock()
	lf.remote, lf.relay = remote, r
	g.mu.Unlock()
	relaying = true
	r.Start()
}

// endFlow closes what is left of a relayed flow and finishes its record.
func (g *Gateway) endFlow(lf *liveFlow, d route.Decision, up, down int64, err error) {
	lf.client.Close()
	g.finish(lf, flowEnd{d: d, up: up, down: down, err: err})
}

// track registers a live flow, or says why it may not start: shutdown has begun, or a flow
// limit is reached. Refusing here, before any dial, costs the refused client nothing but a
// prompt close, and keeps the accept loop turning instead of running into EMFILE.
func (g *Gateway) track(lf *liveFlow) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.admit(lf.Src.Addr()); err != nil {
		return err
	}
	g.flows[lf] = struct{}{}
	g.wg.Add(1)
	return nil
}

func (g *Gateway) untrack(lf *liveFlow) {
	g.mu.Lock()
	delete(g.flows, lf)
	g.release(lf.Src.Addr())
	g.mu.Unlock()
	g.wg.Done()
}

// admit holds the flow limits (limits.max_flows, max_flows_per_source) for one more flow from
// src, a TCP flow or an explicit UDP association, and counts it for src; g.mu is held.
func (g *Gateway) admit(src netip.Addr) error {
	if g.flows == nil {
		g.flows = make(map[*liveFlow]struct{})
		g.perSrc = make(map[netip.Addr]int)
		g.assocs = make(map[*explicitUDP]struct{})
	}
	var err error
	switch {
	case g.closing:
		err = ErrShuttingDown
	case g.MaxFlows > 0 && len(g.flows)+len(g.assocs) >= g.MaxFlows:
		err = ErrFlowLimit
	case g.MaxPerSrc > 0 && g.perSrc[src] >= g.MaxPerSrc:
		err = ErrSourceLimit
	case !g.fds.Acquire(fdsPerFlow): // last: it charges the flow
		err = ErrDescriptorLimit
	}
	if err != nil {
		return err
	}
	if g.MaxPerSrc > 0 {
		g.perSrc[src]++
	}
	return nil
}

// release gives back what admit counted for src; g.mu is held.
func (g *Gateway) release(src netip.Addr) {
	g.fds.Release(fdsPerFlow)
	if g.MaxPerSrc > 0 {
		if g.perSrc[src]--; g.perSrc[src] <= 0 {
			delete(g.perSrc, src)
		}
	}
}

type routerBox struct{ route.Router }

// upstreamBox holds an Upstream, which may be nil, for an atomic.Pointer.
type upstreamBox struct{ upstream.Upstream }

// router is the router in force: Router, or the one the last reload installed.
func (g *Gateway) router() route.Router {
	if b := g.reloaded.Load(); b != nil {
		return b.Router
	}
	return g.Router
}

// resolver is the resolver for socksgate's own lookups.
func (g *Gateway) resolver() *net.Resolver {
	if g.Resolver != nil {
		return g.Resolver
	}
	return net.DefaultResolver
}

// SetRouter switches the router for every flow routed from now on; live flows keep the
// decision they were made with.
func (g *Gateway) SetRouter(r route.Router) { g.reloaded.Store(&routerBox{r}) }

// SetUDPFallback replaces UDPFallback for new UDP sessions (a reload); nil drops such UDP.
func (g *Gateway) SetUDPFallback(up upstream.Upstream) { g.fallback.Store(&upstreamBox{up}) }

// udpFallback is the UDP fallback in force: UDPFallback, or the last reload's.
func (g *Gateway) udpFallback() upstream.Upstream {
	if b := g.fallback.Load(); b != nil {
		return b.Upstream
	}
	return g.UDPFallback
}
