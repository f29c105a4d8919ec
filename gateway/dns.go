package gateway

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/dns"
	"github.com/socksgate/socksgate/internal/state"
	"github.com/socksgate/socksgate/redirect"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// dnsService is socksgate's DNS on the gateway (the dns section): a server for the LAN whose
// every query is decided by the rules on its name, and the names it hands out, which flows to
// the answered addresses then carry (Gateway.nameFlow). The cache, the real-IP map and the
// fake-ip pool live as long as the process; reloads swap the ways out and the settings.
type dnsService struct {
	log     *logrus.Logger
	g       *Gateway
	direct  upstream.Direct
	handler *dns.Handler
	server  *dns.Server
	stats   *dns.Stats
	cache   *dns.Cache
	names   *dns.Names
	fake    *dns.FakeIP // nil: real-IP mode
	state   *state.Dir  // nil: nothing persists (the directory could not be opened)
	saved   [32]byte    // SHA-256 of the fake-ip pool as last written
	cfg     configs.DNS // in force

	mu   sync.Mutex
	ways atomic.Pointer[waySet]
	stop chan struct{}
	done sync.WaitGroup
}

// waySet is the ways out of one configuration: one resolver per upstream (by identity, as
// decisions carry them), the direct one and the local one.
type waySet struct {
	byKey  map[any]*wayOut
	byName map[string]*wayOut
	direct *wayOut
	local  *wayOut
}

// wayOut is the resolver a rule's queries are asked through. The cache is keyed by the wayOut,
// which stays the same value across reloads while its upstream's name and the servers do: the
// exchanger inside is swapped for one over the reloaded upstream, and the cache still holds.
type wayOut struct {
	spec  string // what it was built from: servers and transport, for reuse on reload
	inner atomic.Pointer[exchangerBox]
}

type exchangerBox struct{ dns.Exchanger }

func (w *wayOut) Exchange(ctx context.Context, m *mdns.Msg) (*mdns.Msg, error) {
	return w.inner.Load().Exchange(ctx, m)
}

func (w *wayOut) String() string { return w.inner.Load().String() }

// newDNS starts the DNS service of cfg (its dns section is on): the ways out, the handler and
// the server on dns.listen and, with dns.hijack, on the hijack port. Errors are returned with
// nothing left open.
func (rt *running) newDNS(cfg *configs.Config) (*dnsService, error) {
	d := cfg.DNS
	s := &dnsService{
		log: rt.log, g: rt.g, direct: rt.direct(), stats: &dns.Stats{},
		names: dns.NewNames(d.Names.Entries, time.Duration(d.Names.Grace)),
		stop:  make(chan struct{}),
	}
	if d.Cache.Entries > 0 && d.Cache.MiB > 0 {
		s.cache = dns.NewCache(d.Cache.Entries, d.Cache.MiB<<20)
	} // else no cache: every query is asked (a nil *dns.Cache caches nothing)
	if d.FakeIP.Enabled {
		fake, err := dns.NewFakeIP(dns.FakeIPConfig{Range4: d.FakeIP.Range4, Range6: d.FakeIP.Range6, Exclude: d.FakeIP.Exclude})
		if err != nil {
			return nil, fmt.Errorf("dns.fake_ip: %w", err)
		}
		s.fake = fake
		s.loadState(cfg.StateDir)
	}
	if err := s.setWays(cfg, rt.ups); err != nil {
		return nil, err
	}
	s.handler = dns.NewHandler(s.handlerConfig(d))
	s.handler.Cache, s.handler.Names, s.handler.Stats = s.cache, s.names, s.stats
	s.handler.Observe = s.observe
	if s.fake != nil {
		s.handler.Names = nil // fake-ip flows are named by the pool
	}
	allow, err := dnsAllow(cfg)
	if err != nil {
		return nil, err
	}
	rate := float64(d.Rate)
	s.server = &dns.Server{
		Handler: s.handler, Allow: allow, Rate: rate, Burst: 2 * d.Rate, Control: rt.mark, Stats: s.stats,
		OnError: func(addr string, err error) {
			rt.log.WithError(err).WithField("addr", addr).Error("dns listener stopped")
			rt.health.stopped("dns "+addr, err)
		},
	}
	addrs, err := dnsListenAddrs(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.server.Serve(addrs...); err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	s.cfg = d
	rt.g.namer.Store(&flowNamer{names: s.names, fake: s.fake, svc: s})
	s.done.Go(s.housekeeping)
	rt.log.WithFields(logrus.Fields{"listen": addrs, "hijack": d.Hijack, "fake_ip": d.FakeIP.Enabled}).Info("dns on")
	return s, nil
}

// dnsListenAddrs are the addresses the server listens on: dns.listen as written ("lan:53"
// expanded as the explicit ports' are), and every address on the hijack port.
func dnsListenAddrs(cfg *configs.Config) ([]string, error) {
	var out []string
	for _, s := range cfg.DNS.Listen {
		as, err := listenAddrs(cfg, s)
		if err != nil {
			return nil, fmt.Errorf("dns.listen %q: %w", s, err)
		}
		out = append(out, as...)
	}
	if cfg.DNS.Hijack && len(cfg.LAN.Interfaces) > 0 {
		out = append(out, net.JoinHostPort("::", strconv.Itoa(int(cfg.DNS.HijackPort))))
	}
	return out, nil
}

// dnsAllow are the sources the server answers: dns.allow, or the LAN's prefixes (lan.prefixes
// and those of lan.interfaces' addresses); loopback always.
func dnsAllow(cfg *configs.Config) ([]netip.Prefix, error) {
	allow := slices.Clone(cfg.DNS.Allow)
	if len(allow) == 0 {
		allow = append(allow, cfg.LAN.Prefixes...)
		if len(cfg.LAN.Interfaces) > 0 {
			own, err := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
			if err != nil {
				return nil, fmt.Errorf("dns.allow: the LAN's prefixes: %w", err)
			}
			allow = append(allow, own...)
		}
	}
	return append(allow, dns.Loopback...), nil
}

func (s *dnsService) handlerConfig(d configs.DNS) dns.Config {
	ways := s.ways.Load()
	c := dns.Config{
		Policy: s, Local: ways.local, LocalZones: d.LocalDomains,
		Timeout: time.Duration(d.Timeout), FakeIP: s.fake,
	}
	if d.BlockAnswer == configs.BlockUnspecified {
		c.BlockAnswer = dns.BlockUnspecified
	}
	return c
}

// Decide is the rules' decision on a query (dns.Policy): block, direct (dns.direct), or the
// rule's upstream asked for dns.servers.
func (s *dnsService) Decide(_ context.Context, q dns.Query) dns.Decision {
	ways := s.ways.Load()
	r, ok := s.g.router().(interface {
		RouteQuery(netip.Addr, string) route.Decision
	})
	if !ok {
		return dns.Decision{Action: dns.Resolve, Exchanger: ways.direct, Rule: "direct"}
	}
	d := r.RouteQuery(q.Client.Addr(), q.Name)
	switch d.Action {
	case route.ActionBlock:
		return dns.Decision{Action: dns.Block, Rule: d.Rule}
	case route.ActionDirect:
		return dns.Decision{Action: dns.Resolve, Exchanger: ways.direct, Rule: d.Rule}
	}
	if w := ways.byKey[upstream.Key(d.Upstream)]; w != nil {
		return dns.Decision{Action: dns.Resolve, Exchanger: w, Rule: d.Rule}
	}
	return dns.Decision{Action: dns.Resolve, Rule: d.Rule} // no resolver: SERVFAIL
}

// setWays builds the ways out for cfg over ups, reusing those whose upstream name and servers
// are unchanged (their cache entries still hold).
func (s *dnsService) setWays(cfg *configs.Config, ups map[string]upstream.Upstream) error {
	d := cfg.DNS
	timeout := time.Duration(d.Timeout)
	var tlsConf *tls.Config
	if d.CAFile != "" {
		pool, err := configs.LoadCertPool(d.CAFile)
		if err != nil {
			return fmt.Errorf("dns.ca_file: %w", err)
		}
		tlsConf = &tls.Config{RootCAs: pool}
	}
	old := s.ways.Load()
	next := &waySet{byKey: map[any]*wayOut{}, byName: map[string]*wayOut{}}
	reuse := func(name, spec string, ex dns.Exchanger) *wayOut {
		var w *wayOut
		if old != nil {
			if o := old.byName[name]; o != nil && o.spec == spec {
				w = o
			}
		}
		if w == nil {
			w = &wayOut{spec: spec}
		}
		w.inner.Store(&exchangerBox{ex})
		next.byName[name] = w
		return w
	}
	build := func(servers []string, t dns.Transport) (dns.Exchanger, error) {
		var list []dns.Exchanger
		for _, sv := range servers {
			ep, err := dns.ParseEndpoint(sv)
			if err != nil {
				return nil, err
			}
			ex, err := ep.Exchanger(t)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", sv, err)
			}
			list = append(list, ex)
		}
		return dns.NewSequence(list...), nil
	}
	for name, u := range ups {
		if name == configs.SchemeDirect {
			continue
		}
		t := dns.Transport{Dial: u.DialContext, NoUDP: true, Timeout: timeout, Via: name, TLSConfig: tlsConf}
		ex, err := build(d.Servers, t)
		if err != nil {
			return fmt.Errorf("dns.servers: %w", err)
		}
		if d.ProxyUDP {
			// Over the upstream's UDP association where it has one, else over TCP.
			t.NoUDP, t.ListenPacket = false, u.ListenPacket
			uex, err := build(d.Servers, t)
			if err != nil {
				return fmt.Errorf("dns.servers: %w", err)
			}
			ex = dns.NewSequence(uex, ex)
		}
		w := reuse(name, fmt.Sprint(d.Servers, d.ProxyUDP, d.Timeout, d.CAFile), ex)
		next.byKey[upstream.Key(u)] = w
	}
	direct := d.Direct
	if len(direct) == 0 {
		var err error
		if direct, err = routerResolvers(); err != nil {
			return fmt.Errorf("dns.direct is empty and the router's own resolvers cannot be read: %w", err)
		}
	}
	if err := checkNotSelf(cfg, direct); err != nil {
		return fmt.Errorf("dns.direct: %w", err)
	}
	dt := dns.Transport{Dial: s.direct.DialContext, Timeout: timeout, TLSConfig: tlsConf}
	dex, err := build(direct, dt)
	if err != nil {
		return fmt.Errorf("dns.direct: %w", err)
	}
	next.direct = reuse(configs.SchemeDirect, fmt.Sprint(direct, d.Timeout, d.CAFile), dex)
	next.byKey[upstream.Key(ups[configs.SchemeDirect])] = next.direct
	local := d.Local
	if len(local) == 0 {
		// The router's own resolver knows the LAN's names (on OpenWrt, its dnsmasq with the
		// DHCP leases, which /etc/resolv.conf names); without one, the direct resolvers.
		local = direct
		if own, err := resolversIn("/etc/resolv.conf"); err == nil && len(own) > 0 && checkNotSelf(cfg, own) == nil {
			local = own
		}
	}
	if err := checkNotSelf(cfg, local); err != nil {
		return fmt.Errorf("dns.local: %w", err)
	}
	lex, err := build(local, dt)
	if err != nil {
		return fmt.Errorf("dns.local: %w", err)
	}
	next.local = reuse(" local", fmt.Sprint(local, d.Timeout, d.CAFile), lex)
	s.ways.Store(next)
	return nil
}

// resolvConfs are where the router's own resolvers are listed: OpenWrt keeps the WAN's in
// resolv.conf.auto (its /etc/resolv.conf names its own dnsmasq), other systems in resolv.conf.
var resolvConfs = []string{"/tmp/resolv.conf.d/resolv.conf.auto", "/tmp/resolv.conf.auto", "/etc/resolv.conf"}

func routerResolvers() ([]string, error) {
	var errs []error
	for _, p := range resolvConfs {
		out, err := resolversIn(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return nil, errors.Join(errs...)
}

// resolversIn lists the name servers of a resolv.conf file.
func resolversIn(path string) ([]string, error) {
	cc, err := mdns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, sv := range cc.Servers {
		out = append(out, net.JoinHostPort(sv, cc.Port))
	}
	return out, nil
}

// checkNotSelf refuses direct resolvers that are socksgate's own DNS listener: every direct
// query would come back to it.
func checkNotSelf(cfg *configs.Config, servers []string) error {
	for _, sv := range servers {
		ep, err := dns.ParseEndpoint(sv)
		if err != nil || !ep.Addr.IsValid() {
			continue
		}
		for _, l := range cfg.DNS.Listen {
			la, err := configs.ParseListenAddr(l)
			if err != nil || la.Port != ep.Addr.Port() {
				continue
			}
			ip, perr := netip.ParseAddr(la.Host)
			if la.AllAddresses() || (perr == nil && ip.Unmap() == ep.Addr.Addr().Unmap()) || (la.LAN && isLocalAddr(ep.Addr.Addr())) {
				return fmt.Errorf("%s is socksgate's own dns.listen %s: every query would come back; name the router's upstream resolvers instead", sv, l)
			}
		}
	}
	return nil
}

// reload applies next's dns section and ways out over ups; what cannot change live (the
// listeners, fake-ip on or off, the cache's bounds) is named for a restart.
func (s *dnsService) reload(next *configs.Config, ups map[string]upstream.Upstream) (restart []string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.setWays(next, ups); err != nil {
		return nil, err
	}
	d := next.DNS
	s.handler.SetConfig(s.handlerConfig(d))
	was := s.cfg
	if !slices.Equal(d.Listen, was.Listen) || d.Hijack != was.Hijack || d.HijackPort != was.HijackPort ||
		!slices.Equal(d.Allow, was.Allow) || d.Rate != was.Rate {
		restart = append(restart, "dns.listen, hijack, allow, rate")
	}
	if d.FakeIP.Enabled != was.FakeIP.Enabled || d.FakeIP.Range4 != was.FakeIP.Range4 || d.FakeIP.Range6 != was.FakeIP.Range6 ||
		!slices.Equal(d.FakeIP.Exclude, was.FakeIP.Exclude) {
		restart = append(restart, "dns.fake_ip")
	}
	if d.Cache != was.Cache || d.Names != was.Names {
		restart = append(restart, "dns.cache, dns.names")
	}
	s.cfg = d
	return restart, nil
}

// observe logs one line per query at debug, and failures at info.
func (s *dnsService) observe(ev dns.Event) {
	level := logrus.DebugLevel
	if ev.Err != nil {
		level = logrus.InfoLevel
	}
	if !s.log.IsLevelEnabled(level) {
		return
	}
	f := logrus.Fields{
		"src": ev.Client.String(), "name": ev.Name, "type": mdns.TypeToString[ev.Type],
		"action": ev.Action, "rule": ev.Rule, "rcode": rcodeName(ev.Rcode), "ms": ev.Duration.Milliseconds(),
	}
	if ev.Upstream != "" {
		f["upstream"] = ev.Upstream
	}
	switch ev.Resolution {
	case dns.FromCache:
		f["cache"] = "hit"
	case dns.FromCoalesced:
		f["cache"] = "coalesced"
	}
	e := s.log.WithFields(f)
	if ev.Err != nil {
		e.WithError(ev.Err).Info("dns query failed")
		return
	}
	e.Debug("dns query")
}

func rcodeName(rc int) string {
	if rc < 0 {
		return "none"
	}
	if n, ok := mdns.RcodeToString[rc]; ok {
		return n
	}
	return strconv.Itoa(rc)
}

// loadState opens the state directory and loads the fake-ip pool from it. Neither a missing
// directory nor a damaged file stops a start: the pool starts empty and says so.
func (s *dnsService) loadState(dir string) {
	st, err := state.Open(dir)
	if err != nil {
		s.log.WithError(err).WithField("state_dir", dir).Warn("state directory unusable: the fake-ip pool will not survive a restart")
		return
	}
	s.state = st
	if err := s.fake.Load(st); err != nil {
		if state.IsMissing(err) || errors.Is(err, os.ErrNotExist) {
			return
		}
		s.log.WithError(err).Warn("fake-ip pool not restored: starting empty")
		return
	}
	s.log.WithField("mappings", s.fake.Len()).Info("fake-ip pool restored")
}

// saveState writes the fake-ip pool, if there is one to keep.
func (s *dnsService) saveState() {
	if s.fake == nil || s.state == nil {
		return
	}
	b, err := s.fake.MarshalBinary()
	if err == nil {
		sum := sha256.Sum256(b)
		if sum == s.saved {
			return // unchanged since the last save: no write (a router's flash)
		}
		if err = s.state.WriteFile(dns.StateFile, b); err == nil {
			s.saved = sum
			return
		}
	}
	s.log.WithError(err).Warn("fake-ip pool not saved")
}

// housekeeping sweeps expired real-IP mappings and saves the fake-ip pool, every minute.
func (s *dnsService) housekeeping() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.names.Sweep()
			s.saveState()
		}
	}
}

// close stops the server (queries in progress may finish until ctx ends) and saves the state.
func (s *dnsService) close(ctx context.Context) {
	if s == nil {
		return
	}
	close(s.stop)
	s.done.Wait()
	if err := s.server.Shutdown(ctx); err != nil {
		s.log.WithError(err).Warn("dns shutdown")
	}
	s.saveState()
}

// lookup resolves name for a flow the way a query for it would be (Gateway.resolveName).
func (s *dnsService) lookup(ctx context.Context, f route.Flow, d route.Decision) ([]netip.Addr, error) {
	ways := s.ways.Load()
	w := ways.direct
	if d.Action == route.ActionProxy {
		if pw := ways.byKey[upstream.Key(d.Upstream)]; pw != nil {
			w = pw
		}
	}
	return s.handler.Lookup(ctx, w, f.Host)
}

// flowNamer gives flows to an address socksgate's DNS handed out the name asked for.
type flowNamer struct {
	names *dns.Names
	fake  *dns.FakeIP
	svc   *dnsService
}

// errFakeUnknown is a flow to a fake-ip address the pool no longer maps (handed out before a
// restart that lost the state, or reused since).
var errFakeUnknown = &Refusal{"fake_ip_unknown", "refused: a fake-ip address with no name (handed out before a restart that lost it, or reused since)"}

// nameFlow sets f's name from socksgate's DNS: a flow to a fake-ip address becomes a flow to
// its name (it has no other destination); a flow to an address the client was given in an
// answer carries the name it asked for. It returns errFakeUnknown for a fake address with no
// name. A flow that has a name already keeps it.
func (g *Gateway) nameFlow(f *route.Flow) error {
	n := g.namer.Load()
	if n == nil || f.Host != "" || !f.Dst.IsValid() {
		return nil
	}
	dst := f.Dst.Addr()
	if n.fake != nil && n.fake.Contains(dst) {
		name, ok := n.fake.Lookup(dst)
		if !ok {
			return errFakeUnknown
		}
		f.Host, f.Port, f.From, f.Dst = name, f.Dst.Port(), route.NameFakeIP, netip.AddrPort{}
		return nil
	}
	if n.names != nil {
		if name, ok := n.names.Lookup(f.Src.Addr(), dst); ok {
			f.Host, f.From = name, route.NameDNS
		}
	}
	return nil
}

// resolveName resolves a name-only flow's name for a direct dial through socksgate's DNS,
// when it is on (ok false otherwise: the upstream resolves it as before).
func (g *Gateway) resolveName(ctx context.Context, f route.Flow, d route.Decision) (addrs []netip.Addr, ok bool, err error) {
	n := g.namer.Load()
	if n == nil {
		return nil, false, nil
	}
	addrs, err = n.svc.lookup(ctx, f, d)
	return addrs, true, err
}

// resolveWithDNS has the router resolve names for its address rules through socksgate's DNS
// (the direct resolvers and the cache the LAN's queries share) rather than the system's.
func (rt *running) resolveWithDNS(r route.Router) {
	rr, ok := r.(*route.RuleRouter)
	if !ok {
		return
	}
	if rt.dns == nil {
		// The system's resolver, over marked sockets (upstream.Direct.Resolver).
		res := rt.direct().Resolver()
		rr.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return res.LookupNetIP(ctx, "ip", host)
		}
		return
	}
	s := rt.dns
	rr.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
		return s.handler.Lookup(ctx, s.ways.Load().direct, host)
	}
}

// snapshot is the service's counters for the admin endpoint.
func (s *dnsService) snapshot() *admin.DNSStats {
	st := s.stats.Snapshot()
	out := &admin.DNSStats{
		CacheHits: st.CacheHits, CacheMisses: st.CacheMisses, Coalesced: st.Coalesced,
		UpstreamErrors: st.UpstreamErrors, RateLimited: st.RateLimited, RefusedSource: st.RefusedSource,
		Malformed: st.Malformed, Overloaded: st.Overloaded, CacheEntries: s.cache.Len(), CacheBytes: s.cache.Bytes(), Mappings: s.names.Len(),
	}
	if s.fake != nil {
		out.FakeIPs = s.fake.Len()
	}
	for k, n := range st.Queries {
		out.Queries = append(out.Queries, admin.DNSQueryCount{Rule: k.Rule, Action: k.Action, Queries: n})
	}
	sort.Slice(out.Queries, func(i, j int) bool {
		a, b := out.Queries[i], out.Queries[j]
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Action, b.Action)) < 0
	})
	for _, h := range st.Latency {
		out.Latency = append(out.Latency, admin.Histogram(h))
	}
	return out
}
