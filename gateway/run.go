package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/redirect"
	"github.com/socksgate/socksgate/relay"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/ruleset"
	"github.com/socksgate/socksgate/upstream"
)

// Run serves cfg until ctx is cancelled: it opens the listeners, installs the kernel rules, and
// on cancellation closes the listeners, lets live flows and forwarded requests finish until one
// deadline (timeouts.grace from the start of shutdown), cuts what is left then, removes the
// rules and returns. A failure to start (a port in use, rules refused) is returned at once,
// with whatever was already set up undone. Every config received from reload is applied as a
// diff without dropping live flows (see running.reload); reload may be nil.
func Run(ctx context.Context, cfg *configs.Config, log *logrus.Logger, reload <-chan *configs.Config) (err error) {
	nofile := raiseFileLimit(log)
	rt := &running{log: log, cfg: cfg, mark: redirect.MarkControl(cfg.Mark), own: &upstream.OwnConns{}, health: &listenerHealth{},
		logs: &admin.LogFeed{}}
	rt.geo.changed = make(chan struct{}, 1)
	defer rt.stopHealth()
	// The control API's /logs: the hook costs an atomic load a line while nobody streams.
	hooks := logrus.LevelHooks{}
	for l, hs := range log.Hooks {
		hooks[l] = append(hooks[l], hs...)
	}
	log.AddHook(logHook{rt.logs})
	defer log.ReplaceHooks(hooks)
	rt.selections = newSelections(cfg.StateDir, log)
	commitGeo, _, err := rt.prepareGeoIP(cfg.GeoIP)
	if err != nil {
		return err
	}
	commitGeo()
	defer rt.closeGeoIP()
	rt.startSets(cfg)
	defer rt.sets.Close()
	routing, err := rt.newRouting(cfg)
	if err != nil {
		return err
	}
	rt.ups, rt.stopUps = routing.ups, routing.stop
	g := &Gateway{
		Router:      routing.router,
		Log:         logrus.NewEntry(log),
		DialTimeout: time.Duration(cfg.Timeouts.Dial),
		Idle:        time.Duration(cfg.Timeouts.Idle),
		Sniff:       NewSniffing(cfg.Transparent.Sniff),
		Relay:       cfg.Relay,
		MaxFlows:    cfg.Limits.MaxFlows,
		MaxPerSrc:   cfg.Limits.MaxFlowsPerSource,
		Own:         rt.own,
		Resolver:    rt.direct().Resolver(),
		sets:        rt.sets,
	}
	g.fds = newFDBudget(nofile)
	relay.SetDescriptorBudget(g.fds.pipes())
	rt.g = g
	if cfg.Transparent.UDPOverTCPUpstream == configs.UDPDirect {
		g.UDPFallback = rt.directUp()
	}
	g.health.Store(&groupHealth{cfg: cfg, ups: rt.ups, router: routing.router})
	if g.MaxFlows == 0 && nofile > 0 {
		// Each relayed flow holds two descriptors; keep some for listeners, UDP and the admin
		// endpoint, so the bound is met before accept(2) ever sees EMFILE.
		g.MaxFlows = max(int(nofile)-256, 64) / 2
	}
	log.WithField("max_flows", g.MaxFlows).Info("flow limit")
	// Before any listener hands the router a flow: it asks the devices for src_mac rules.
	rt.startDevices(cfg)
	defer rt.stopDevices() // after the flows have ended: their last bytes are counted
	rt.useDevices(g.Router)

	flowCtx, cancelFlows := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelFlows()
	rt.flowCtx = flowCtx
	cut, cutNow := context.WithCancel(context.Background())
	defer cutNow()
	rt.explicit = newExplicitInbound(g, flowCtx, cut, log, rt.health)
	defer func() {
		if err != nil { // a failed start: nothing to wait for
			cutNow()
			rt.closeInbounds()
		}
	}()

	// Every listener opens before the kernel is touched: a start that fails (a port taken)
	// leaves the kernel as it found it, including a table a crash left with on_crash closed,
	// which keeps the LAN from leaking direct until a start succeeds.
	// DNS first: the router resolves its address rules' names through it, and must know how
	// before any inbound routes a flow.
	if cfg.DNS.On() {
		if rt.dns, err = rt.newDNS(cfg); err != nil {
			return err
		}
	}
	rt.resolveWithDNS(g.Router)
	capture := len(cfg.LAN.Interfaces) > 0
	if capture {
		if rt.tcp, err = rt.openTransparentTCP(cfg.Transparent); err != nil {
			return err
		}
	}
	if err := rt.explicit.set(cfg); err != nil {
		return err
	}
	if rt.udp, err = g.startUDP(flowCtx, cfg, log, rt.health); err != nil {
		return err
	}
	if rt.admin, err = rt.startAdmin(cfg.Admin); err != nil {
		return err
	}

	if capture {
		spec := rt.ruleSpec(cfg)
		rt.rules, err = redirect.Apply(spec)
		if err != nil {
			return fmt.Errorf("install nftables rules: %w", err)
		}
		defer func() {
			if cerr := rt.rules.Close(); cerr != nil {
				log.WithError(cerr).Error("remove nftables rules")
				err = errors.Join(err, cerr)
			} else {
				log.Info("rules removed")
			}
		}()
		stopWatch := rt.watchRules()
		defer stopWatch() // before the rules are closed: their removal is not to be undone
		log.WithFields(logrus.Fields{
			"interfaces": cfg.LAN.Interfaces, "tcp_port": cfg.Transparent.TCPPort,
			"tcp_mode": spec.TCPMode, "on_crash": cfg.OnCrash, "bypass": len(spec.Bypass),
		}).Info("transparent capture on")
		g.directPrefixes.Store(int64(len(spec.Direct)))
		if len(spec.Direct) > 0 {
			_, from := rt.hoisted()
			rt.logDirect(spec.Direct, from)
		}
		rt.logOffload()
	} else {
		log.Info("lan.interfaces is empty: no transparent capture, explicit ports only")
		// Capture turned off by a restart after a crash with on_crash closed: the table that
		// crash left would keep capturing into nothing. (One owned by a running socksgate,
		// on_crash open, cannot be removed, nor can anything without CAP_NET_ADMIN.)
		if err := redirect.Remove(SpecFromConfig(cfg, nil)); err != nil && !errors.Is(err, syscall.EPERM) {
			log.WithError(err).Warn("removing rules an earlier run may have left")
		}
	}

	go g.RunIdleSweeper(flowCtx)
	log.WithField("upstreams", len(cfg.Upstreams)).Info("socksgate ready")
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case next := <-reload:
			rt.reload(next)
		case ev := <-rt.sets.Events():
			rt.setChanged(ev)
		case <-rt.geo.changed:
			rt.updateDirect()
		}
	}
	rt.shutdown(cutNow)
	cancelFlows()
	return nil
}

// shutdown closes every inbound and gives what is live one grace period, from now: the HTTP
// servers' requests in progress and the flows (tunnels, captured flows, forwarded requests'
// upstream connections) share its deadline, and whatever is still live then is cut, each
// flow's line saying so. cutNow ends the HTTP servers' grace (explicitInbound.cut).
func (rt *running) shutdown(cutNow context.CancelFunc) {
	grace := time.Duration(rt.cfg.Timeouts.Grace)
	rt.log.WithField("grace", grace.String()).Info("shutting down")
	graceCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var closing sync.WaitGroup
	closing.Go(rt.closeInbounds) // returns when the HTTP servers are done, by the deadline at the latest
	// At the deadline the flows are cut first, then the HTTP servers (cutNow); if every flow
	// ended before it, the servers' requests still have until the deadline.
	if cut := rt.g.shutdown(graceCtx, cutNow); cut > 0 {
		rt.log.WithField("flows", cut).Warn("grace period over: closed live flows")
	}
	stop := context.AfterFunc(graceCtx, cutNow)
	defer stop()
	closing.Wait()
}

// running is what Run holds while serving: the config in force, the upstreams and their health
// checks, the kernel rules and the open inbounds.
type running struct {
	log      *logrus.Logger
	g        *Gateway
	cfg      *configs.Config // in force: what a reload could not apply is as it was
	mark     upstream.Control
	own      *upstream.OwnConns // every TCP connection socksgate dials, while open (loop detection)
	ups      map[string]upstream.Upstream
	stopUps  func()
	sets     *ruleset.Registry // the rule sets (rulesets.go)
	rules    *redirect.Ruleset
	flowCtx  context.Context
	health   *listenerHealth
	tcp      net.Listener // transparent TCP; nil: capture off
	explicit *explicitInbound
	dns      *dnsService    // nil: dns off
	udp      []io.Closer    // transparent UDP (udp.go)
	admin    *admin.Server  // nil: none
	logs     *admin.LogFeed // the control API's /logs
	// selections are the members chosen in select groups (the control API), kept in the
	// state directory; every routing built applies them.
	selections *selections
	geo        geoDB          // the country database of the geoip rules (geoip.go)
	delays     delayLog       // delay tests of upstreams outside any group
	serving    sync.WaitGroup // the transparent TCP accept loops
	offloaded  atomic.Value   // string: the flowtable state last logged (logOffload)
}

// direct is how socksgate dials without a proxy: its sockets marked, its connections kept in
// own while open.
func (rt *running) direct() upstream.Direct { return upstream.Direct{Control: rt.mark, Own: rt.own} }

func (rt *running) directUp() upstream.Upstream { d := rt.direct(); return &d }

// closeInbounds closes every listener; flows they handed on keep running. It returns once the
// accept loops have ended and the HTTP servers have finished (or explicitInbound.cut ended them).
func (rt *running) closeInbounds() {
	if rt.tcp != nil {
		rt.tcp.Close()
		rt.tcp = nil
	}
	closeAll(rt.udp)
	if rt.admin != nil {
		rt.admin.Close()
	}
	if rt.dns != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rt.cfg.Timeouts.Grace))
		rt.dns.close(ctx)
		cancel()
		rt.dns = nil
	}
	rt.udp, rt.admin = nil, nil
	rt.serving.Wait()
	rt.explicit.close()
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		c.Close()
	}
}

// routing is a built set of upstreams (health checks running) and the router over them.
type routing struct {
	ups    map[string]upstream.Upstream
	router route.Router
	stop   func() // stops the health checks
}

// newRouting builds the upstreams (starting their health checks) and the router of cfg,
// leaving the ones in force alone.
func (rt *running) newRouting(cfg *configs.Config) (routing, error) {
	ups, stop, err := upstream.NewUpstreams(cfg, rt.direct(), logrus.NewEntry(rt.log))
	if err != nil {
		return routing{}, err
	}
	rt.selections.apply(cfg, ups)
	router, err := route.NewRouterSets(cfg, ups, rt.sets.Handles())
	if err != nil {
		stop()
		return routing{}, err
	}
	rt.useGeoIP(router)
	return routing{ups, router, stop}, nil
}

// useRouting puts r in force for new flows (flows already dialed keep their connections) and
// stops the previous upstreams' health checks.
func (rt *running) useRouting(cfg *configs.Config, r routing) {
	rt.g.SetRouter(r.router)
	rt.stopHealth()
	rt.ups, rt.stopUps = r.ups, r.stop
	rt.g.health.Store(&groupHealth{cfg: cfg, ups: r.ups, router: r.router})
}

func (rt *running) stopHealth() {
	if rt.stopUps != nil {
		rt.stopUps()
		rt.stopUps = nil
	}
}

// openTransparentTCP opens the listener captured TCP is delivered to and serves it: a plain one
// for REDIRECT (the original destination comes from conntrack), a transparent one for TPROXY
// (the original destination is the accepted socket's own local address).
func (rt *running) openTransparentTCP(t configs.Transparent) (net.Listener, error) {
	addr := net.JoinHostPort("::", strconv.Itoa(int(t.TCPPort)))
	name := transparentTCPName(t.TCPPort)
	lc := net.ListenConfig{KeepAliveConfig: upstream.KeepAlive}
	serve := rt.g.ServeRedirect
	if t.TCPMode == configs.TCPModeTProxy {
		lc.Control = transparentControl
		serve = rt.g.ServeTProxy
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transparent TCP listener: %w", err)
	}
	rt.health.forget(name)
	rt.serving.Go(func() {
		if err := serve(rt.flowCtx, ln); err != nil {
			rt.log.WithError(err).Error("transparent TCP listener stopped")
			rt.health.stopped(name, err)
		}
	})
	return ln, nil
}

// transparentTCPName names the transparent TCP listener on port for /healthz.
func transparentTCPName(port uint16) string {
	return "transparent tcp " + net.JoinHostPort("::", strconv.Itoa(int(port)))
}

// ruleSpec turns the config into the kernel rules' spec, adding the LAN interfaces' own
// prefixes to the bypass set so that traffic between LAN hosts is never captured. A LAN
// interface that does not exist yet (a bridge created later) is not an error: its name is
// matched when it appears, and its prefixes are added at the next reload.
func (rt *running) ruleSpec(cfg *configs.Config) redirect.Spec {
	own, err := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
	if err != nil {
		rt.log.WithError(err).Warn("lan.interfaces: own prefixes not found; only the configured bypass applies")
	}
	s := SpecFromConfig(cfg, own)
	s.Direct, _ = rt.hoisted()
	return s
}

// reload applies next, a config that has already been validated, as a diff, section by section
// (the way tailscale's router Set does): each step takes what is in force and what next asks
// for, changes only what differs, opening the new before closing the old, and returns what is
// in force now. Live flows are never dropped.
//
// What can refuse the reload as a whole comes first and changes nothing until it has all
// succeeded: the new upstreams and router are built (not yet used), then the explicit ports
// are set (new ones opened before any is closed; one that cannot open keeps the whole old set,
// and the reload is refused with the reason). From there on, a section that fails keeps its
// old settings in force, says so, and the others apply. Settings only a restart applies are
// named in a warning, and kept as they run in the config recorded as running.
func (rt *running) reload(next *configs.Config) {
	log, old := rt.log, rt.cfg
	sets := rt.sets.Handles() // those of the router in force
	refuse := func(err error) {
		rt.sets.Restore(sets) // not the sets the refused config added or changed
		log.WithError(err).Error("reload refused: the running config stays in force")
	}
	commitGeo, abortGeo, err := rt.prepareGeoIP(next.GeoIP)
	if err != nil {
		refuse(err)
		return
	}
	rt.logSetLoads(next, rt.sets.Apply(next.RuleSets))
	r, err := rt.newRouting(next)
	if err != nil {
		abortGeo()
		refuse(err)
		return
	}
	if err := rt.explicit.set(next); err != nil {
		abortGeo()
		r.stop()
		refuse(err)
		return
	}
	commitGeo()

	rt.sets.Prune(next.RuleSets)
	applied := *next
	changed := []string{"upstreams, groups and rules"}
	if next.GeoIP != old.GeoIP {
		changed = append(changed, "geoip")
	}
	var dnsRestart []string
	rt.resolveWithDNS(r.router)
	rt.useDevices(r.router)
	rt.useRouting(next, r)
	switch {
	case rt.dns != nil && next.DNS.On():
		var err error
		if dnsRestart, err = rt.dns.reload(next, r.ups); err != nil {
			log.WithError(err).Error("reload: dns; its previous settings stay")
			applied.DNS = old.DNS
		} else {
			changed = append(changed, "dns")
		}
	case rt.dns != nil || next.DNS.On():
		dnsRestart = append(dnsRestart, "dns (turning it on or off)")
		applied.DNS = old.DNS
	}
	if len(dnsRestart) > 0 {
		// What only a restart applies stays as it runs, in the rules too (hijack, fake-ip).
		applied.DNS.Listen, applied.DNS.Hijack, applied.DNS.HijackPort = old.DNS.Listen, old.DNS.Hijack, old.DNS.HijackPort
		applied.DNS.FakeIP, applied.DNS.Allow, applied.DNS.Rate = old.DNS.FakeIP, old.DNS.Allow, old.DNS.Rate
		applied.DNS.Cache, applied.DNS.Names = old.DNS.Cache, old.DNS.Names
		next = &applied
	}
	if !reflect.DeepEqual(next.Listen, old.Listen) {
		changed = append(changed, "listen")
	}
	c, capChanged, restart := rt.setCapture(old, next)
	applied.Mark, applied.LAN, applied.Transparent = c.Mark, c.LAN, c.Transparent
	changed = append(changed, capChanged...)
	if applied.Admin = rt.setAdmin(old.Admin, next.Admin); !applied.Admin.Equal(old.Admin) {
		changed = append(changed, "admin")
	}
	if applied.Log.Level = rt.setLogLevel(old.Log.Level, next.Log.Level); applied.Log.Level != old.Log.Level {
		changed = append(changed, "log.level")
	}
	for _, s := range []struct {
		what    string
		differs bool
	}{
		{"relay", next.Relay != old.Relay},
		{"timeouts", next.Timeouts != old.Timeouts},
		{"limits", next.Limits != old.Limits},
		{"log.format", next.Log.Format != old.Log.Format},
		{"transparent.sniff", !equalJSON(next.Transparent.Sniff, old.Transparent.Sniff)},
		{"devices", !equalJSON(next.Devices, old.Devices)},
	} {
		if s.differs {
			restart = append(restart, s.what)
		}
	}

	applied.Devices = old.Devices // the tracker runs as started (needs_restart says so)
	rt.cfg = &applied
	e := log.WithField("applied", changed)
	restart = append(restart, dnsRestart...)
	if len(restart) > 0 {
		e = e.WithField("needs_restart", restart)
	}
	e.Info("config reloaded")
}

// capture is the part of a config the capture section owns.
type capture struct {
	Mark        uint32
	LAN         configs.LAN
	Transparent configs.Transparent
}

// setCapture is the capture section: the transparent TCP and UDP listeners, the kernel rules
// and udp_without_support. It returns the settings in force, what it changed, and what needs a
// restart. New listeners open before the rules point at them and old ones close after; if the
// rules cannot be replaced, the listeners moved for them are moved back and the previous
// capture stays.
func (rt *running) setCapture(old, next *configs.Config) (in capture, changed, restart []string) {
	in = capture{next.Mark, next.LAN, next.Transparent}
	was := capture{old.Mark, old.LAN, old.Transparent}
	if next.Mark != old.Mark {
		// socksgate's own sockets carry the mark the rules exempt: rules with a new mark and
		// sockets with the old one would capture socksgate's own traffic again. Both change
		// with a restart only.
		restart = append(restart, "mark")
		in.Mark = old.Mark
	}
	on := len(old.LAN.Interfaces) > 0
	if (len(next.LAN.Interfaces) > 0) != on {
		// Capture cannot be turned on or off live: what runs keeps its interfaces and its
		// transparent settings, and the config recorded as running says so, so the next
		// reload compares against what is really installed (rules or none).
		restart = append(restart, "lan.interfaces (turning capture on or off)")
		in.LAN, in.Transparent = old.LAN, old.Transparent
	}
	if !on {
		if rt.setUDPFallback(old.Transparent, in.Transparent) {
			changed = append(changed, "transparent.udp_without_support")
		}
		return in, changed, restart
	}

	tcp, tcpNow, tcpUndo := rt.setTransparentTCP(old.Transparent, in.Transparent)
	in.Transparent.TCPPort, in.Transparent.TCPMode = tcp.TCPPort, tcp.TCPMode
	udpMoved, udpOld, udpUndo := rt.moveTransparentUDP(old, next, &in.Transparent)

	spec := *next
	spec.Mark, spec.LAN, spec.Transparent = in.Mark, in.LAN, in.Transparent
	if err := rt.rules.Replace(rt.ruleSpec(&spec)); err != nil {
		rt.log.WithError(err).Error("reload: replace nftables rules; the previous capture stays")
		tcpUndo()
		udpUndo()
		rt.setUDPFallback(old.Transparent, old.Transparent)
		return was, nil, restart
	}
	changed = append(changed, "kernel rules")
	rt.g.directPrefixes.Store(int64(len(rt.rules.Spec().Direct)))
	rt.logOffload()
	tcpNow()
	if tcp != (portMode{old.Transparent.TCPPort, old.Transparent.TCPMode}) {
		changed = append(changed, "transparent.tcp_port/tcp_mode")
	}
	switch {
	case udpMoved:
		closeAll(udpOld)
		changed = append(changed, "transparent UDP")
	case udpSettingsDiffer(in.Transparent, old.Transparent),
		in.Transparent.UDP && rt.health.isDown(transparentUDPName(in.Transparent.UDPPort)):
		// UDP sessions live in the listener's table: reopening it ends them (clients retry).
		// On the same port the old listener has to go first; turned off, the rules no
		// longer send anything to it. A listener that stopped with an error (on /healthz)
		// is reopened by any reload, as an explicit port is.
		closeAll(rt.udp)
		var err error
		if rt.udp, err = rt.g.startUDP(rt.flowCtx, &spec, rt.log, rt.health); err != nil {
			rt.log.WithError(err).Error("reload: transparent UDP")
			// The old one is closed and the rules send UDP here: down until it opens.
			rt.health.stopped(transparentUDPName(spec.Transparent.UDPPort), fmt.Errorf("reopen: %w", err))
		}
		changed = append(changed, "transparent UDP")
	}
	if rt.setUDPFallback(old.Transparent, in.Transparent) {
		changed = append(changed, "transparent.udp_without_support")
	}
	return in, changed, restart
}

type portMode struct {
	TCPPort uint16
	TCPMode configs.TCPMode
}

// setTransparentTCP opens the transparent TCP listener next asks for when its port or mode
// differs from old's, and returns the port and mode in force, then what to call once the rules
// point at them (closing the old listener) or, if the rules could not be replaced, to put the
// old listener back. A new mode on the same port needs the port itself: the old listener gives
// it up first, and a connection arriving in that instant is refused. If the new listener
// cannot open, the old one stays (reopened if it had to give up the port).
func (rt *running) setTransparentTCP(old, next configs.Transparent) (in portMode, commit, undo func()) {
	was := portMode{old.TCPPort, old.TCPMode}
	nothing := func() {}
	if (portMode{next.TCPPort, next.TCPMode}) == was {
		return was, nothing, nothing
	}
	samePort := next.TCPPort == old.TCPPort
	oldLn := rt.tcp
	if samePort {
		oldLn.Close()
	}
	reopen := func() {
		ln, err := rt.openTransparentTCP(old)
		if err != nil {
			rt.log.WithError(err).Error("reload: reopening the old transparent TCP listener failed: captured TCP is refused until a restart")
			rt.health.stopped(transparentTCPName(old.TCPPort), fmt.Errorf("reopen: %w", err))
		}
		rt.tcp = ln
	}
	ln, err := rt.openTransparentTCP(next)
	if err != nil {
		rt.log.WithError(err).Error("reload: transparent TCP listener; keeping the old one")
		if samePort {
			reopen()
		}
		return was, nothing, nothing
	}
	rt.tcp = ln
	commit = func() {
		if !samePort {
			oldLn.Close()
			rt.health.forget(transparentTCPName(old.TCPPort)) // no longer meant to be open
		}
	}
	undo = func() {
		ln.Close()
		if samePort {
			reopen()
		} else {
			rt.tcp = oldLn
		}
	}
	return portMode{next.TCPPort, next.TCPMode}, commit, undo
}

// moveTransparentUDP opens the transparent UDP listener on its new port when UDP capture moves
// or is turned on, before the rules point at it. It reports whether it did, the old listener
// (to close once the rules are replaced) and how to go back if they are not. If the new
// listener cannot open, UDP stays as it was and t gets the UDP settings in force back.
func (rt *running) moveTransparentUDP(old, next *configs.Config, t *configs.Transparent) (moved bool, oldUDP []io.Closer, undo func()) {
	ot := old.Transparent
	if !t.UDP || (ot.UDP && t.UDPPort == ot.UDPPort) {
		return false, nil, func() {}
	}
	cfg := *next
	cfg.Transparent = *t
	udp, err := rt.g.startUDP(rt.flowCtx, &cfg, rt.log, rt.health)
	if err != nil {
		closeAll(udp)
		rt.log.WithError(err).Error("reload: transparent UDP listener; keeping the old one")
		keepUDPSettings(t, ot)
		return false, nil, func() {}
	}
	oldUDP, rt.udp = rt.udp, udp
	return true, oldUDP, func() { closeAll(udp); rt.udp = oldUDP }
}

// setUDPFallback applies udp_without_support (explicit SOCKS UDP follows it too) and reports
// whether it changed.
func (rt *running) setUDPFallback(old, next configs.Transparent) bool {
	w := next.UDPOverTCPUpstream
	if w == old.UDPOverTCPUpstream {
		return false
	}
	var fb upstream.Upstream
	if w == configs.UDPDirect {
		fb = rt.directUp()
	}
	rt.g.SetUDPFallback(fb)
	return true
}

// setAdmin moves the admin endpoint to next (or turns it on or off), opening the new one
// before closing the old; a new secret or origins on the same address apply to the
// requests from now on, on the open endpoint. It returns the settings in force.
func (rt *running) setAdmin(old, next configs.Admin) configs.Admin {
	if next.Equal(old) {
		return old
	}
	if next.Listen == old.Listen && rt.admin != nil {
		rt.admin.SetAccess(adminAccess(next))
		return next
	}
	srv, err := rt.startAdmin(next)
	if err != nil {
		rt.log.WithError(err).Error("reload: admin endpoint; keeping the old one")
		return old
	}
	if rt.admin != nil {
		rt.admin.Close()
	}
	rt.admin = srv
	return next
}

// setLogLevel applies log.level and returns the level in force.
func (rt *running) setLogLevel(old, next configs.LogLevel) configs.LogLevel {
	if next == old {
		return old
	}
	rt.log.SetLevel(LogrusLevel(next))
	return next
}

// LogrusLevel is log.level as a logrus level.
func LogrusLevel(l configs.LogLevel) logrus.Level {
	switch l {
	case configs.LogDebug:
		return logrus.DebugLevel
	case configs.LogWarn:
		return logrus.WarnLevel
	case configs.LogError:
		return logrus.ErrorLevel
	}
	return logrus.InfoLevel
}

// udpSettingsDiffer reports whether the transparent UDP inbound must be reopened.
func udpSettingsDiffer(a, b configs.Transparent) bool {
	return a.UDP != b.UDP || a.UDP && (a.UDPPort != b.UDPPort || a.UDPIdle != b.UDPIdle ||
		a.UDPMaxSessions != b.UDPMaxSessions || a.UDPOverTCPUpstream != b.UDPOverTCPUpstream ||
		a.DNSOverTCP != b.DNSOverTCP || a.QUIC != b.QUIC)
}

// keepUDPSettings puts back in t the UDP settings in force (from was), when new ones could
// not be applied.
func keepUDPSettings(t *configs.Transparent, was configs.Transparent) {
	t.UDP, t.UDPPort, t.UDPIdle, t.UDPMaxSessions = was.UDP, was.UDPPort, was.UDPIdle, was.UDPMaxSessions
	t.UDPOverTCPUpstream, t.DNSOverTCP, t.QUIC = was.UDPOverTCPUpstream, was.DNSOverTCP, was.QUIC
}

// equalJSON compares two config sections by value (they hold slices, so == does not apply).
func equalJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// SpecFromConfig is the kernel rules' spec for cfg, with extra bypass prefixes (the LAN's own,
// found at start). It is pure, so `socksgate rules` can show the rules without root.
func SpecFromConfig(cfg *configs.Config, extraBypass []netip.Prefix) redirect.Spec {
	t := cfg.Transparent
	s := redirect.Spec{
		LANInterfaces:  cfg.LAN.Interfaces,
		TCPPort:        t.TCPPort,
		TCPMode:        t.TCPMode,
		Mark:           cfg.Mark,
		TProxyMark:     t.TProxyMark,
		RouteTable:     t.RouteTable,
		RulePriority:   t.RulePriority,
		Bypass:         append(cfg.BypassPrefixes(), extraBypass...),
		OnCrash:        cfg.OnCrash,
		RouterCapture:  cfg.Router.Capture,
		ExcludeUIDs:    cfg.Router.ExcludeUIDs,
		ExcludeGIDs:    cfg.Router.ExcludeGIDs,
		ICMP:           t.ICMP,
		Offload:        t.Offload,
		OffloadDevices: t.OffloadDevices,
	}
	if t.UDP {
		s.UDPPort = t.UDPPort
	}
	if cfg.DNS.Hijack {
		s.DNSPort = cfg.DNS.HijackPort
	}
	if f := cfg.DNS.FakeIP; f.Enabled && cfg.DNS.On() {
		// The fake ranges are always captured: nothing there exists to reach directly.
		s.Capture = append(s.Capture, f.Range4)
		if f.Range6.IsValid() {
			s.Capture = append(s.Capture, f.Range6)
		}
	}
	return s
}
