package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// The gateway's side of the Clash-style control API (admin.Controller): socksgate's upstreams,
// groups, rules and flows in the API's terms.

// RequestReload, when set (the command sets it before Run), re-reads the config file as SIGHUP
// does and says why it cannot (no file, or one that does not validate); PUT /configs calls it.
// nil: the API cannot reload.
var RequestReload func() error

// ErrClosedByAPI is the error of a flow closed through the control API (DELETE /connections).
var ErrClosedByAPI = errors.New("closed through the admin API")

var _ admin.Controller = AdminSource{}

// flowID is the control API's id of a flow: stable for its life, unique in the process.
func flowID(id uint64) string { return strconv.FormatUint(id, 10) }

// udpSessionID is the id of a transparent UDP session (the NAT table numbers none): its source
// and its start, which no other live session shares.
func udpSessionID(src interface{ String() string }, start time.Time) string {
	return "udp-" + src.String() + "-" + strconv.FormatInt(start.UnixNano(), 36)
}

// Settings implements admin.Controller from the config in force.
func (a AdminSource) Settings() admin.Settings {
	cfg := a.config()
	if cfg == nil {
		return admin.Settings{}
	}
	s := admin.Settings{IPv6: true}
	port := func(addrs configs.AddrList) int {
		for _, raw := range addrs {
			la, err := configs.ParseListenAddr(raw)
			if err != nil {
				continue
			}
			if la.LAN || !isLoopbackName(la.Host) {
				s.AllowLAN = true
			}
			if la.AllAddresses() {
				s.BindAddress = "*"
			}
			return int(la.Port)
		}
		return 0
	}
	s.HTTPPort, s.SOCKSPort, s.MixedPort = port(cfg.Listen.HTTP), port(cfg.Listen.SOCKS), port(cfg.Listen.Mixed)
	if len(cfg.LAN.Interfaces) > 0 {
		if cfg.Transparent.TCPMode == configs.TCPModeTProxy {
			s.TProxyPort = int(cfg.Transparent.TCPPort)
		} else {
			s.RedirPort = int(cfg.Transparent.TCPPort)
		}
	}
	s.LogLevel = "info"
	if a.rt != nil {
		switch a.rt.log.GetLevel() {
		case logrus.DebugLevel, logrus.TraceLevel:
			s.LogLevel = "debug"
		case logrus.WarnLevel:
			s.LogLevel = "warning"
		case logrus.ErrorLevel, logrus.FatalLevel, logrus.PanicLevel:
			s.LogLevel = "error"
		}
	}
	return s
}

func isLoopbackName(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// config is the config the upstreams in force were built from.
func (a AdminSource) config() *configs.Config {
	if gh := a.G.health.Load(); gh != nil {
		return gh.cfg
	}
	return nil
}

// Reload implements admin.Controller.
func (a AdminSource) Reload() error {
	if RequestReload == nil {
		return errors.New("this socksgate cannot reload from the API")
	}
	return RequestReload()
}

// proxyType is the Clash adapter type of an upstream.
func proxyType(u *configs.Upstream) string {
	if u.URL == nil {
		return "Unknown"
	}
	switch u.URL.Scheme {
	case configs.SchemeSOCKS5, configs.SchemeSOCKS5H, configs.SchemeSOCKS5TLS:
		return "Socks5"
	case configs.SchemeSOCKS4, configs.SchemeSOCKS4A:
		return "Socks4"
	case configs.SchemeDirect:
		return "Direct"
	}
	return "Http"
}

// groupType is the Clash group type of a policy.
func groupType(p configs.Policy) string {
	switch p {
	case configs.PolicySelect:
		return "Selector"
	case configs.PolicyURLTest:
		return "URLTest"
	case configs.PolicyFailover:
		return "Fallback"
	}
	return "LoadBalance"
}

// The names of the built-in ways out, as the Clash API calls them.
const (
	clashDirect = "DIRECT"
	clashReject = "REJECT"
)

// Proxies implements admin.Controller: DIRECT, REJECT, the upstreams, then the groups.
func (a AdminSource) Proxies() []admin.Proxy {
	gh := a.G.health.Load()
	if gh == nil {
		return nil
	}
	out := []admin.Proxy{
		{Name: clashDirect, Type: "Direct", Alive: true, UDP: true, History: []admin.DelaySample{}},
		{Name: clashReject, Type: "Reject", Alive: true, UDP: true, History: []admin.DelaySample{}},
	}
	type memberState struct {
		up     bool
		delays []upstream.Delay
	}
	seen := map[string]memberState{}
	var groups []admin.Proxy
	for _, gc := range gh.cfg.Groups {
		grp, ok := gh.ups[gc.Name].(*upstream.Group)
		if !ok {
			continue
		}
		p := admin.Proxy{Name: gc.Name, Type: groupType(gc.Policy), Members: []string{}, Now: grp.Now(), TestURL: probeURL(gc.Health.Probe)}
		for _, m := range grp.Status() {
			p.Members = append(p.Members, m.Name)
			p.Alive = p.Alive || m.Up
			if _, ok := seen[m.Name]; !ok || len(m.Delays) > len(seen[m.Name].delays) {
				seen[m.Name] = memberState{m.Up, m.Delays}
			}
			if m.Name == p.Now {
				p.History = samples(m.Delays)
			}
		}
		if p.History == nil {
			p.History = []admin.DelaySample{}
		}
		p.UDP = true
		groups = append(groups, p)
	}
	for i := range gh.cfg.Upstreams {
		u := &gh.cfg.Upstreams[i]
		p := admin.Proxy{Name: u.Name, Type: proxyType(u), Alive: true, UDP: u.SupportsUDP()}
		if st, ok := seen[u.Name]; ok {
			p.Alive, p.History = st.up, samples(st.delays)
		} else if a.rt != nil {
			p.History = samples(a.rt.delays.get(u.Name))
		}
		if p.History == nil {
			p.History = []admin.DelaySample{}
		}
		out = append(out, p)
	}
	return append(out, groups...)
}

func samples(ds []upstream.Delay) []admin.DelaySample {
	out := make([]admin.DelaySample, 0, len(ds))
	for _, d := range ds {
		out = append(out, admin.DelaySample{Time: d.At, Delay: d.Took})
	}
	return out
}

// probeURL is a group's health probe (host:port) as the URL a dashboard tests with.
func probeURL(probe string) string {
	host, port, err := net.SplitHostPort(probe)
	if err != nil {
		return ""
	}
	if port == "443" {
		return "https://" + host + "/"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// Select implements admin.Controller: the member of a select group, kept in the state
// directory so that it survives reloads and restarts.
func (a AdminSource) Select(group, member string) error {
	gh := a.G.health.Load()
	if gh == nil {
		return admin.ErrNoProxy
	}
	grp, ok := gh.ups[group].(*upstream.Group)
	if !ok {
		if _, known := gh.ups[group]; known || group == clashDirect || group == clashReject {
			return admin.ErrNotSelectable
		}
		return admin.ErrNoProxy
	}
	if err := grp.Select(member); err != nil {
		if errors.Is(err, upstream.ErrNotSelect) {
			return fmt.Errorf("%w: %s is a %s group", admin.ErrNotSelectable, group, grp.Policy())
		}
		return err
	}
	if a.rt != nil {
		a.rt.log.WithFields(logrus.Fields{"group": group, "upstream": member}).Info("select: upstream chosen")
		if err := a.rt.selections.set(group, member); err != nil {
			a.rt.log.WithError(err).Warn("select: the choice holds until a restart, the state directory did not take it")
		}
	}
	return nil
}

// Delay implements admin.Controller: an HTTP request to target through the way out called
// name, timed to its response's headers.
func (a AdminSource) Delay(ctx context.Context, name, target string) (time.Duration, error) {
	gh := a.G.health.Load()
	if gh == nil {
		return 0, admin.ErrNoProxy
	}
	key := name
	if name == clashDirect {
		key = configs.SchemeDirect
	}
	up, ok := gh.ups[key]
	if !ok || name == configs.SchemeDirect {
		return 0, admin.ErrNoProxy
	}
	start := time.Now()
	took, err := timeRequest(ctx, up, target)
	d := upstream.Delay{At: start, Took: took}
	if err != nil {
		d.Took = 0
	}
	for _, u := range gh.ups {
		if grp, ok := u.(*upstream.Group); ok {
			grp.RecordDelay(name, d) // the member's history, in each group that has it
		}
	}
	if a.rt != nil {
		a.rt.delays.add(name, d) // an upstream outside any group has only this one
	}
	return took, err
}

// timeRequest is a GET of target through up, timed until the response's headers.
func timeRequest(ctx context.Context, up upstream.Upstream, target string) (time.Duration, error) {
	tr := &http.Transport{
		DialContext:       up.DialContext,
		DisableKeepAlives: true,
		ForceAttemptHTTP2: false,
		Proxy:             nil,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "socksgate-delay")
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	took := time.Since(start)
	resp.Body.Close()
	return max(took, time.Microsecond), nil
}

// Rules implements admin.Controller from the router in force and its config.
func (a AdminSource) Rules() []admin.Rule {
	gh := a.G.health.Load()
	if gh == nil {
		return nil
	}
	var hits []uint64
	if rr, ok := gh.router.(*route.RuleRouter); ok {
		hits = rr.Hits()
	}
	out := make([]admin.Rule, 0, len(gh.cfg.Rules))
	for i, r := range gh.cfg.Rules {
		typ, payload := clashRule(r)
		ar := admin.Rule{Name: r.Name, Type: typ, Payload: payload}
		switch r.Action {
		case configs.ActionBlock:
			ar.Proxy = clashReject
		case configs.ActionDirect:
			ar.Proxy = clashDirect
		default:
			ar.Proxy = r.Upstream
		}
		if i < len(hits) {
			ar.Hits = hits[i]
		}
		out = append(out, ar)
	}
	return out
}

// clashRule writes a rule's matchers as a Clash rule type and payload: one matcher with one
// value is that type (DomainSuffix, IPCIDR, DstPort...; src_mac and device are SrcMAC and
// Device), several values of one matcher an OR, several matchers an AND, none Match.
func clashRule(r configs.Rule) (typ, payload string) {
	type part struct{ typ, payload string }
	var parts []part
	add := func(typ string, vals []string) {
		switch len(vals) {
		case 0:
		case 1:
			parts = append(parts, part{typ, vals[0]})
		default:
			inner := make([]string, len(vals))
			for i, v := range vals {
				inner[i] = "(" + typ + "," + v + ")"
			}
			parts = append(parts, part{"OR", "(" + strings.Join(inner, " || ") + ")"})
		}
	}
	strs := func(n int, f func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	var exact, suffix []string
	for _, d := range r.Domain {
		if strings.HasPrefix(d, ".") {
			suffix = append(suffix, d[1:])
		} else {
			exact = append(exact, d)
		}
	}
	add("Domain", exact)
	add("DomainSuffix", suffix)
	add("IPCIDR", strs(len(r.Dst), func(i int) string { return r.Dst[i].String() }))
	add("SrcIPCIDR", strs(len(r.Src), func(i int) string { return r.Src[i].String() }))
	add("DstPort", strs(len(r.DstPorts), func(i int) string { return r.DstPorts[i].String() }))
	add("Network", strs(len(r.Protocol), func(i int) string { return r.Protocol[i].String() }))
	add("InType", strs(len(r.Inbound), func(i int) string { return r.Inbound[i].String() }))
	// socksgate's own matchers, under names of their own: Clash has no rule for them.
	add("SrcMAC", strs(len(r.SrcMAC), func(i int) string { return r.SrcMAC[i].String() }))
	add("Device", r.Device)
	switch len(parts) {
	case 0:
		return "Match", ""
	case 1:
		return parts[0].typ, parts[0].payload
	}
	inner := make([]string, len(parts))
	for i, p := range parts {
		if p.typ == "OR" {
			inner[i] = p.payload
		} else {
			inner[i] = "(" + p.typ + "," + p.payload + ")"
		}
	}
	return "AND", "(" + strings.Join(inner, " && ") + ")"
}

// CloseFlow implements admin.Controller: the flow with the id is closed now, its line saying
// ErrClosedByAPI. A TCP flow is closed both ways (its client sees the connection end); a UDP
// session's sockets are closed and it leaves the table at once (an explicit association's
// control connection is closed too, so that its client sees it end), and the client's next
// datagram starts a new session.
func (a AdminSource) CloseFlow(id string) bool {
	g := a.G
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		src, start, ok := parseUDPSessionID(id)
		g.mu.Lock()
		tbl := g.udpTable
		g.mu.Unlock()
		return ok && tbl != nil && tbl.EndSession(src, start, ErrClosedByAPI)
	}
	g.mu.Lock()
	for lf := range g.flows {
		if lf.id == n {
			g.cutLocked(lf, ErrClosedByAPI)
			g.mu.Unlock()
			return true
		}
	}
	var assoc *explicitUDP
	for u := range g.assocs {
		if u.id == n {
			assoc = u
			break
		}
	}
	g.mu.Unlock()
	if assoc == nil {
		return false
	}
	assoc.cut(ErrClosedByAPI)
	return true
}

// parseUDPSessionID reads udpSessionID's id back.
func parseUDPSessionID(id string) (src netip.AddrPort, start time.Time, ok bool) {
	rest, found := strings.CutPrefix(id, "udp-")
	i := strings.LastIndexByte(rest, '-')
	if !found || i < 0 {
		return src, start, false
	}
	src, err := netip.ParseAddrPort(rest[:i])
	if err != nil {
		return src, start, false
	}
	ns, err := strconv.ParseInt(rest[i+1:], 36, 64)
	if err != nil {
		return src, start, false
	}
	return src, time.Unix(0, ns), true
}

// CloseFlows implements admin.Controller: every live flow and UDP session is closed, as
// CloseFlow closes one.
func (a AdminSource) CloseFlows() int {
	g := a.G
	g.mu.Lock()
	for lf := range g.flows {
		g.cutLocked(lf, ErrClosedByAPI)
	}
	n := len(g.flows)
	assocs := make([]*explicitUDP, 0, len(g.assocs))
	for u := range g.assocs {
		assocs = append(assocs, u)
	}
	tbl := g.udpTable
	g.mu.Unlock()
	for _, u := range assocs {
		u.cut(ErrClosedByAPI)
	}
	n += len(assocs)
	if tbl != nil {
		n += tbl.EndSessions(ErrClosedByAPI)
	}
	return n
}

// cutLocked closes lf from outside with err as its line's error; g.mu is held.
func (g *Gateway) cutLocked(lf *liveFlow, err error) {
	if lf.cutErr == nil {
		lf.cutErr = err
	}
	lf.close()
}

// Traffic implements admin.Controller: the bytes of the ended flows and of the live ones (read
// from their client sockets, as /flows reads them).
func (a AdminSource) Traffic() (up, down uint64) {
	up, down = a.G.Stats.carried()
	u, d := a.G.liveBytes()
	return up + u, down + d
}

// Logs implements admin.Controller.
func (a AdminSource) Logs() *admin.LogFeed {
	if a.rt == nil {
		return nil
	}
	return a.rt.logs
}

// liveBytes sums the live flows' bytes each way, the router's own flows included.
func (g *Gateway) liveBytes() (up, down uint64) {
	g.eachLiveFlow(false, func(_ any, _ netip.Addr, u, d uint64) { up, down = up+u, down+d })
	return up, down
}

// delayLog keeps the control API's delay tests of upstreams outside any group, whose history
// no group keeps.
type delayLog struct {
	mu sync.Mutex
	by map[string][]upstream.Delay
}

const delayLogLen = 10

func (l *delayLog) add(name string, d upstream.Delay) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string][]upstream.Delay{}
	}
	h := append(l.by[name], d)
	if len(h) > delayLogLen {
		h = h[len(h)-delayLogLen:]
	}
	l.by[name] = h
}

func (l *delayLog) get(name string) []upstream.Delay {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]upstream.Delay(nil), l.by[name]...)
}

// logHook hands log lines to the /logs streams while anyone listens; otherwise it costs an
// atomic load per line.
type logHook struct{ feed *admin.LogFeed }

func (logHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h logHook) Fire(e *logrus.Entry) error {
	if !h.feed.Listening() {
		return nil
	}
	typ := "info"
	switch e.Level {
	case logrus.DebugLevel, logrus.TraceLevel:
		typ = "debug"
	case logrus.WarnLevel:
		typ = "warning"
	case logrus.ErrorLevel, logrus.FatalLevel, logrus.PanicLevel:
		typ = "error"
	}
	var b strings.Builder
	b.WriteString(e.Message)
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := fmt.Sprint(e.Data[k])
		if strings.ContainsAny(v, " \"=") {
			v = strconv.Quote(v)
		}
		b.WriteString(" " + k + "=" + v)
	}
	h.feed.Publish(admin.LogLine{Type: typ, Payload: b.String()})
	return nil
}
