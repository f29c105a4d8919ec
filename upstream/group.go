package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/socksclient"
)

// ErrGroupDown is wrapped by the dial error of a group whose every member is down while its
// on_down is block: the flow fails at once and nothing goes direct.
var ErrGroupDown = errors.New("every upstream of the group is down")

// GroupMember is one upstream of a group, with the name the config gave it.
type GroupMember struct {
	Name     string
	Upstream Upstream
}

// MemberStatus is the health of one group member, for reporting.
type MemberStatus struct {
	Name    string
	Up      bool
	Reason  string // why it is in its state (the last failure while down)
	Since   time.Time
	Active  int64   // connections dialed through it that are still open (least-connections only)
	Delays  []Delay // the last health checks' latencies, oldest first (at most historyLen)
	Current bool    // the member new flows take (select, url-test, failover)
}

// Delay is one measured latency of a member: a health check, or a test through the control
// API. Took 0 is a failed one.
type Delay struct {
	At   time.Time
	Took time.Duration
}

// historyLen is how many delays a member keeps (the Clash API's history is about as long).
const historyLen = 10

// Group is a set of upstreams used under a policy; it is itself an Upstream, so rules name it
// like any upstream. Each member is up or down: a dial that fails in a way that speaks about the
// proxy (unreachable, refused, timed out reaching it, authentication, protocol violation) marks
// it down at once and the flow moves on to the next member within its own context; a refusal
// about the destination (a SOCKS reply code, an HTTP 403 or 502) is returned as is and says
// nothing about the member's health. Health checks bring members back (and take them out):
// every Health.Interval each member dials Health.Probe (a real handshake through it; without a
// probe, a TCP connection to the proxy itself), and Rise consecutive successes mark a down member
// up, Fall consecutive failures mark an up member down. With Interval 0 there are no periodic
// checks, and a down member is retried in the background with a growing backoff.
//
// Members start up. When every member is down, a dial follows OnDown: block fails at once with
// an error wrapping ErrGroupDown; direct dials Direct. Each state change is logged once, at
// warn ("upstream down") or info ("upstream up"), with the member and the reason.
type Group struct {
	// Log receives the state changes; nil discards them.
	Log *logrus.Entry

	name      string
	policy    configs.Policy
	onDown    configs.OnDown
	health    configs.Health
	direct    Upstream
	members   []*member
	next      atomic.Uint64          // round-robin cursor
	current   atomic.Pointer[member] // select: the chosen member; url-test: the fastest (within tolerance)
	tolerance time.Duration          // url-test

	backoffMin, backoffMax time.Duration // retry of down members when health.interval is 0

	ctx     context.Context // ends at Close: stops checks and retries
	stop    context.CancelFunc
	started sync.Once
	mu      sync.Mutex // guards closed and wg.Add against Close's Wait
	closed  bool
	wg      sync.WaitGroup
}

type member struct {
	GroupMember
	idx    int
	active atomic.Int64

	mu          sync.Mutex
	up          bool
	reason      string
	since       time.Time
	rises, fall int  // consecutive check successes while down, failures while up
	retrying    bool // a backoff retry goroutine is running (interval 0)
	// retryWait is where the next retry backoff starts: it keeps growing for a member that
	// goes down again soon after its retry brought it up (a proxy that takes connections but
	// refuses our credentials passes the retry's check and fails the next flow).
	retryWait time.Duration
	delays    [historyLen]Delay // ring; next is where the next one goes
	next      int
	ndelays   int
	latency   time.Duration // the last successful health check's; 0: none yet (url-test)
}

// record adds a delay to m's history; m.mu is held.
func (m *member) record(d Delay) {
	m.delays[m.next] = d
	m.next = (m.next + 1) % historyLen
	m.ndelays = min(m.ndelays+1, historyLen)
}

// history is m's delays, oldest first; m.mu is held.
func (m *member) history() []Delay {
	out := make([]Delay, 0, m.ndelays)
	for i := range m.ndelays {
		out = append(out, m.delays[(m.next-m.ndelays+i+historyLen)%historyLen])
	}
	return out
}

// NewGroup makes a group from its config, its members (in the config's order) and the direct
// upstream used when on_down is direct. Health checks start with Start.
func NewGroup(cfg configs.Group, members []GroupMember, direct Upstream, log *logrus.Entry) *Group {
	ctx, cancel := context.WithCancel(context.Background())
	g := &Group{
		Log: log, name: cfg.Name, policy: cfg.Policy, onDown: cfg.OnDown, health: cfg.Health,
		tolerance: cfg.Tolerance.Std(), direct: direct, ctx: ctx, stop: cancel,
		backoffMin: time.Second, backoffMax: 30 * time.Second,
	}
	if g.health.Timeout <= 0 {
		g.health.Timeout = configs.Duration(5 * time.Second)
	}
	g.health.Rise, g.health.Fall = max(g.health.Rise, 1), max(g.health.Fall, 1)
	now := time.Now()
	for i, m := range members {
		g.members = append(g.members, &member{GroupMember: m, idx: i, up: true, since: now})
	}
	if len(g.members) > 0 {
		g.current.Store(g.members[0])
	}
	return g
}

// Name is the group's name in the config.
func (g *Group) Name() string { return g.name }

// Policy is how the group picks a member.
func (g *Group) Policy() configs.Policy { return g.policy }

// ErrNotSelect is wrapped by Select on a group whose policy is not select.
var ErrNotSelect = errors.New("the group's policy is not select")

// Select makes the member called name the one every new flow of a select group takes. Flows
// already dialled keep their member.
func (g *Group) Select(name string) error {
	if g.policy != configs.PolicySelect {
		return fmt.Errorf("%s: %w", g, ErrNotSelect)
	}
	for _, m := range g.members {
		if m.Name == name {
			g.current.Store(m)
			return nil
		}
	}
	return fmt.Errorf("%s: no member named %q", g, name)
}

// Now is the member new flows take: the chosen one (select), the fastest (url-test), the first
// that is up (failover); "" for the policies that spread flows, and when none is up.
func (g *Group) Now() string {
	switch g.policy {
	case configs.PolicySelect:
		if m := g.current.Load(); m != nil {
			return m.Name
		}
	case configs.PolicyURLTest, configs.PolicyFailover:
		if m := g.pick(0); m != nil {
			return m.Name
		}
	}
	return ""
}

// RecordDelay adds a latency measured through the member called name (a test through the
// control API) to its history.
func (g *Group) RecordDelay(name string, d Delay) {
	for _, m := range g.members {
		if m.Name == name {
			m.mu.Lock()
			m.record(d)
			m.mu.Unlock()
		}
	}
}

// Start begins the periodic health checks (when Health.Interval is set). Close stops them.
func (g *Group) Start() {
	g.started.Do(func() {
		if g.health.Interval <= 0 {
			return
		}
		for _, m := range g.members {
			g.goBackground(func() { g.checkLoop(m) })
		}
	})
}

// goBackground runs fn in a goroutine Close waits for, unless the group is closed.
func (g *Group) goBackground(fn func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Go(fn)
	return true
}

// Close stops the health checks and background retries and waits for them to end. The group
// still dials afterwards (members keep their last state), so flows in their grace period work.
func (g *Group) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.stop()
	g.wg.Wait()
	return nil
}

// String names the group for logs: "group:NAME".
func (g *Group) String() string { return "group:" + g.name }

// Status reports every member's health, in the config's order.
func (g *Group) Status() []MemberStatus {
	out := make([]MemberStatus, 0, len(g.members))
	now := g.Now()
	for _, m := range g.members {
		m.mu.Lock()
		out = append(out, MemberStatus{Name: m.Name, Up: m.up, Reason: m.reason, Since: m.since, Active: m.active.Load(),
			Delays: m.history(), Current: m.Name == now})
		m.mu.Unlock()
	}
	return out
}

// DialContext dials address through the member the policy picks, moving on to the next up
// member when one fails as a proxy; see Group.
func (g *Group) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var tried uint64 // bit i: member i was tried in this flow (groups are small)
	var failures []string
	for {
		m := g.pick(tried)
		if m == nil {
			break
		}
		tried |= 1 << (m.idx % 64)
		c, err := m.Upstream.DialContext(ctx, network, address)
		if err == nil {
			return g.track(m, c), nil
		}
		if ctx.Err() != nil {
			// The flow's own time is up or its client left: no verdict on the member unless the
			// proxy itself could not be reached in time.
			if (errors.As(err, new(*proxyReachError)) || errors.As(err, new(*tlsError))) && ctx.Err() == context.DeadlineExceeded {
				g.markDown(m, "dial: "+err.Error())
			}
			return nil, fmt.Errorf("%s via %s: %w", g, m.Name, err)
		}
		reason, fault := proxyFault(err)
		if !fault {
			return nil, fmt.Errorf("%s via %s: %w", g, m.Name, err)
		}
		g.markDown(m, reason)
		failures = append(failures, m.Name+": "+err.Error())
	}
	if g.serving() {
		// Every member that was up when this flow began failed it; others came up meanwhile, but
		// this flow has spent its attempts.
		return nil, fmt.Errorf("%s: every upstream failed: %s", g, strings.Join(failures, "; "))
	}
	if g.onDown == configs.OnDownDirect && g.direct != nil {
		return g.direct.DialContext(ctx, network, address)
	}
	return nil, g.downError(failures)
}

func (g *Group) downError(failures []string) error {
	if len(failures) == 0 {
		return fmt.Errorf("%s: %w (on_down: block)", g, ErrGroupDown)
	}
	return fmt.Errorf("%s: %w (on_down: block): %s", g, ErrGroupDown, strings.Join(failures, "; "))
}

// ListenPacket opens a UDP association through the first up member that carries UDP.
func (g *Group) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	var failures []string
	unsupported := true
	for _, m := range g.order() {
		if !m.isUp() {
			unsupported = false
			continue
		}
		pc, err := m.Upstream.ListenPacket(ctx)
		if err == nil {
			return pc, nil
		}
		if errors.Is(err, ErrUDPUnsupported) {
			continue
		}
		unsupported = false
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s via %s: %w", g, m.Name, err)
		}
		reason, fault := proxyFault(err)
		if !fault {
			return nil, fmt.Errorf("%s via %s: %w", g, m.Name, err)
		}
		g.markDown(m, reason)
		failures = append(failures, m.Name+": "+err.Error())
	}
	if unsupported {
		return nil, fmt.Errorf("%s: no member carries UDP: %w", g, ErrUDPUnsupported)
	}
	if !g.serving() && g.onDown == configs.OnDownDirect && g.direct != nil {
		return g.direct.ListenPacket(ctx)
	}
	if g.serving() {
		return nil, fmt.Errorf("%s: every UDP upstream failed: %s", g, strings.Join(failures, "; "))
	}
	return nil, g.downError(failures)
}

// pick returns the member the policy chooses among those up and not yet tried, or nil.
func (g *Group) pick(tried uint64) *member {
	n := len(g.members)
	if n == 0 {
		return nil
	}
	usable := func(m *member) bool { return tried&(1<<(m.idx%64)) == 0 && m.isUp() }
	switch g.policy {
	case configs.PolicyRoundRobin:
		start := int((g.next.Add(1) - 1) % uint64(n))
		for i := range n {
			if m := g.members[(start+i)%n]; usable(m) {
				return m
			}
		}
		return nil
	case configs.PolicyLeastConnections:
		var best *member
		for _, m := range g.members {
			if usable(m) && (best == nil || m.active.Load() < best.active.Load()) {
				best = m
			}
		}
		return best
	case configs.PolicySelect:
		// The chosen member only: while it is down the group is down (on_down), as the
		// one who chose it would expect; no other member takes its flows.
		if m := g.current.Load(); m != nil && usable(m) {
			return m
		}
		return nil
	case configs.PolicyURLTest:
		if m := g.current.Load(); m != nil && usable(m) {
			return m
		}
		// The current member is down or tried: the fastest other one that is up.
		var best *member
		for _, m := range g.members {
			if usable(m) && (best == nil || faster(m, best)) {
				best = m
			}
		}
		return best
	}
	for _, m := range g.members { // failover: the first up member, in order
		if usable(m) {
			return m
		}
	}
	return nil
}

// order is the members in the order a UDP association tries them: the chosen one only
// (select), the current one first (url-test), the config's order otherwise.
func (g *Group) order() []*member {
	cur := g.current.Load()
	switch {
	case cur == nil:
	case g.policy == configs.PolicySelect:
		return []*member{cur}
	case g.policy == configs.PolicyURLTest:
		out := append(make([]*member, 0, len(g.members)), cur)
		for _, m := range g.members {
			if m != cur {
				out = append(out, m)
			}
		}
		return out
	}
	return g.members
}

// serving reports whether the group has a member to give flows to: the chosen one for select,
// any for the others.
func (g *Group) serving() bool {
	if g.policy == configs.PolicySelect {
		m := g.current.Load()
		return m != nil && m.isUp()
	}
	return g.anyUp()
}

// faster reports whether a's last check was faster than b's; a member with no latency yet is
// slower than any with one, and among equals the earlier in the config's order wins.
func faster(a, b *member) bool {
	la, lb := a.lastLatency(), b.lastLatency()
	switch {
	case la == 0 || lb == 0:
		return la != 0 || (lb == 0 && a.idx < b.idx)
	case la != lb:
		return la < lb
	}
	return a.idx < b.idx
}

func (m *member) lastLatency() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.up {
		return 0
	}
	return m.latency
}

// retest moves a url-test group to its fastest member that is up, unless the current one is
// up and within the tolerance of it: a member of about the same latency does not take over.
func (g *Group) retest() {
	if g.policy != configs.PolicyURLTest {
		return
	}
	var best *member
	for _, m := range g.members {
		if m.lastLatency() > 0 && (best == nil || faster(m, best)) {
			best = m
		}
	}
	cur := g.current.Load()
	if best == nil || best == cur {
		return
	}
	if cl := cur.lastLatency(); cl > 0 && best.lastLatency()+g.tolerance >= cl {
		return
	}
	g.current.Store(best)
	if g.Log != nil {
		from := ""
		if cur != nil {
			from = cur.Name
		}
		g.Log.WithFields(logrus.Fields{"group": g.name, "upstream": best.Name, "from": from,
			"latency": best.lastLatency().String()}).Info("url-test: new fastest upstream")
	}
}

func (g *Group) anyUp() bool {
	for _, m := range g.members {
		if m.isUp() {
			return true
		}
	}
	return false
}

func (m *member) isUp() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.up
}

// markDown takes m out of use at once (a failed live dial) and, without periodic checks,
// starts retrying it in the background.
func (g *Group) markDown(m *member, reason string) {
	m.mu.Lock()
	changed := m.up
	m.rises, m.fall = 0, 0
	if changed {
		if time.Since(m.since) > g.backoffMax {
			m.retryWait = 0 // it stayed up a while: this is a new failure, not the same one
		}
		m.up, m.reason, m.since = false, reason, time.Now()
	}
	retry := g.health.Interval <= 0 && !m.retrying
	if retry {
		m.retrying = true
	}
	m.mu.Unlock()
	if changed {
		g.logChange(m, false, reason)
	}
	if retry && !g.goBackground(func() { g.retryLoop(m) }) {
		m.mu.Lock()
		m.retrying = false
		m.mu.Unlock()
	}
}

// checked records one health check's outcome, applying rise and fall.
func (g *Group) checked(m *member, err error) {
	m.mu.Lock()
	var changed bool
	var reason string
	switch {
	case err == nil && !m.up:
		m.rises++
		if m.rises >= g.health.Rise {
			changed, reason = true, fmt.Sprintf("%d health check(s) in a row passed", m.rises)
			m.up, m.rises, m.fall, m.reason, m.since = true, 0, 0, "", time.Now()
		}
	case err == nil:
		m.fall = 0
	case m.up:
		m.fall++
		if m.fall >= g.health.Fall {
			changed, reason = true, fmt.Sprintf("%d health check(s) in a row failed: %v", m.fall, err)
			m.up, m.rises, m.fall, m.reason, m.since = false, 0, 0, reason, time.Now()
		}
	default:
		m.rises = 0
		m.reason = "health check: " + err.Error()
	}
	up := m.up
	m.mu.Unlock()
	if changed {
		g.logChange(m, up, reason)
	}
}

func (g *Group) logChange(m *member, up bool, reason string) {
	if g.Log == nil {
		return
	}
	e := g.Log.WithFields(logrus.Fields{"group": g.name, "upstream": m.Name, "proxy": m.Upstream.String(), "reason": reason})
	if up {
		e.Info("upstream up")
	} else {
		e.Warn("upstream down")
	}
}

// check runs one health check of m: a handshake through it to the probe target, or without a
// probe a connection to the proxy itself.
func (g *Group) check(m *member) error {
	ctx, cancel := context.WithTimeout(g.ctx, g.health.Timeout.Std())
	defer cancel()
	if g.health.Probe != "" {
		c, err := m.Upstream.DialContext(ctx, "tcp", g.health.Probe)
		if err != nil {
			return err
		}
		return c.Close()
	}
	if p, ok := m.Upstream.(proxyProber); ok {
		return p.probeProxy(ctx)
	}
	return nil
}

// measured records one health check's latency in m's history, and lets a url-test group move
// to its fastest member.
func (g *Group) measured(m *member, at time.Time, took time.Duration, err error) {
	d := Delay{At: at, Took: max(took, time.Microsecond)}
	m.mu.Lock()
	if err != nil {
		d.Took = 0
		m.latency = 0
	} else {
		m.latency = d.Took
	}
	m.record(d)
	m.mu.Unlock()
	g.retest()
}

// checkLoop checks m at once and then every interval until the group is closed.
func (g *Group) checkLoop(m *member) {
	t := time.NewTicker(g.health.Interval.Std())
	defer t.Stop()
	for {
		start := time.Now()
		err := g.check(m)
		took := time.Since(start)
		if g.ctx.Err() != nil {
			return
		}
		g.checked(m, err)
		g.measured(m, start, took, err)
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// retryLoop retries a down member with a growing backoff until it answers (interval 0).
func (g *Group) retryLoop(m *member) {
	m.mu.Lock()
	wait := max(m.retryWait, g.backoffMin)
	m.mu.Unlock()
	for {
		select {
		case <-g.ctx.Done():
			m.mu.Lock()
			m.retrying = false
			m.mu.Unlock()
			return
		case <-time.After(wait):
		}
		err := g.check(m)
		if g.ctx.Err() != nil {
			continue
		}
		m.mu.Lock()
		if err == nil {
			m.retrying = false
			m.retryWait = min(2*wait, g.backoffMax) // if it fails again soon
			changed := !m.up
			m.up, m.rises, m.fall, m.reason, m.since = true, 0, 0, "", time.Now()
			m.mu.Unlock()
			if changed {
				g.logChange(m, true, "retry succeeded")
			}
			return
		}
		m.reason = "retry: " + err.Error()
		m.mu.Unlock()
		wait = min(2*wait, g.backoffMax)
	}
}

// track wraps a member's connection: it names the member for the flow's log line, and for
// least-connections counts the member's live connections.
func (g *Group) track(m *member, c net.Conn) net.Conn {
	mc := &memberConn{Conn: c, member: m.Name}
	if g.policy == configs.PolicyLeastConnections {
		m.active.Add(1)
		mc.done = func() { m.active.Add(-1) }
	}
	return mc
}

// memberConn is a connection through one member of a group; done, if set, runs once when it
// closes. It keeps the relay's fast paths: half-close, WriteTo/ReadFrom reaching the TCP
// connection (splice) and SyscallConn.
type memberConn struct {
	net.Conn
	member string
	once   sync.Once
	done   func()
}

// Member names the group member the connection went through.
func (c *memberConn) Member() string { return c.member }

func (c *memberConn) Close() error {
	if c.done != nil {
		c.once.Do(c.done)
	}
	return c.Conn.Close()
}

func (c *memberConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %T cannot half-close", c.Conn)
}

func (c *memberConn) WriteTo(w io.Writer) (int64, error)  { return io.Copy(w, c.Conn) }
func (c *memberConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

func (c *memberConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, fmt.Errorf("%T has no syscall connection", c.Conn)
}

// proxyProber is an upstream that can check that its proxy accepts connections.
type proxyProber interface {
	probeProxy(ctx context.Context) error
}

// proxyReachError is a failure to reach a proxy at all (the TCP connection to it, through the
// hop below); upstreams wrap their ProxyDial with reachDial so a group can tell it from a
// refusal about the destination.
type proxyReachError struct{ err error }

func (e *proxyReachError) Error() string { return e.err.Error() }
func (e *proxyReachError) Unwrap() error { return e.err }

// reachDial wraps a hop's dial function so that its failures are proxyReachErrors.
func reachDial(dial func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, &proxyReachError{err}
		}
		return c, nil
	}
}

// proxyFault reports whether a dial error says the proxy itself is unusable (so the member goes
// down) rather than that the destination was refused or unreachable through it, with a short
// reason for the log.
func proxyFault(err error) (reason string, fault bool) {
	var se *httpproxy.StatusError
	var re *socksclient.ReplyError
	switch {
	case errors.As(err, new(*proxyReachError)):
		return "cannot reach the proxy: " + err.Error(), true
	case errors.As(err, new(*tlsError)):
		return "tls: " + err.Error(), true
	case errors.Is(err, socksclient.ErrAuthFailed), errors.Is(err, socksclient.ErrNoAcceptableMethods):
		return "authentication: " + err.Error(), true
	case errors.As(err, &se):
		if se.Code == 407 || se.Code == 401 { // 401: tinyproxy's answer to bad credentials
			return "authentication: " + err.Error(), true
		}
		return "", false
	case errors.As(err, &re):
		// A reply code speaks about the destination (or the proxy's rules for it).
		return "", false
	case errors.Is(err, socksclient.ErrUnsupportedDestination):
		return "", false
	case errors.Is(err, socksclient.ErrProtocol), errors.Is(err, httpproxy.ErrProtocol),
		errors.Is(err, httpproxy.ErrResponseTooLarge):
		return "protocol violation: " + err.Error(), true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "proxy closed the handshake: " + err.Error(), true
	}
	return "", false
}
