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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/redirect"
	"github.com/socksgate/socksgate/relay"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// Run serves cfg until ctx is cancelled: it opens the listeners, installs the kernel rules, and
// on cancellation closes the listeners, lets live flows finish for the grace period, removes
// the rules and returns. A failure to start (a port in use, rules refused) is returned at once,
// with whatever was already set up undone. Every config received from reload is applied
// without dropping live flows (see runtime.reload); reload may be nil.
func Run(ctx context.Context, cfg *configs.Config, log *logrus.Logger, reload <-chan *configs.Config) (err error) {
	nofile := raiseFileLimit(log)
	rt := &running{log: log, cfg: cfg, mark: redirect.MarkControl(cfg.Mark)}
	defer rt.stopHealth()
	router, err := rt.buildRouting(cfg)
	if err != nil {
		return err
	}
	g := &Gateway{
		Router:      router,
		Log:         logrus.NewEntry(log),
		DialTimeout: time.Duration(cfg.Timeouts.Dial),
		Idle:        time.Duration(cfg.Timeouts.Idle),
		Sniff:       NewSniffing(cfg.Transparent.Sniff),
		Relay:       relayMode(cfg.Relay, log),
		MaxFlows:    cfg.Limits.MaxFlows,
		MaxPerSrc:   cfg.Limits.MaxFlowsPerSource,
	}
	g.fds = newFDBudget(nofile)
	relay.SetDescriptorBudget(g.fds.pipes())
	rt.g = g
	if cfg.Transparent.UDPOverTCPUpstream == configs.UDPDirect {
		g.UDPFallback = &upstream.Direct{Control: rt.mark}
	}
	g.health.Store(&groupHealth{cfg: cfg, ups: rt.ups})
	if g.MaxFlows == 0 && nofile > 0 {
		// Each relayed flow holds two descriptors; keep some for listeners, UDP and the admin
		// endpoint, so the bound is met before accept(2) ever sees EMFILE.
		g.MaxFlows = max(int(nofile)-256, 64) / 2
	}
	log.WithField("max_flows", g.MaxFlows).Info("flow limit")

	flowCtx, cancelFlows := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelFlows()
	rt.flowCtx = flowCtx
	defer rt.closeInbounds()

	// Every listener opens before the kernel is touched: a start that fails (a port taken)
	// leaves the kernel as it found it, including a table a crash left with on_crash closed,
	// which keeps the LAN from leaking direct until a start succeeds.
	capture := len(cfg.LAN.Interfaces) > 0
	if capture {
		if err := rt.startTransparentTCP(cfg); err != nil {
			return err
		}
	}
	// The other inbounds, each in its own file: explicit HTTP/SOCKS ports, transparent UDP and
	// the admin endpoint. Each returns what must be closed at shutdown (or when a reload
	// replaces it).
	for _, kind := range []string{inboundExplicit, inboundUDP, inboundAdmin} {
		if err := rt.startInbound(kind, cfg); err != nil {
			return err
		}
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
		log.WithFields(logrus.Fields{
			"interfaces": cfg.LAN.Interfaces, "tcp_port": cfg.Transparent.TCPPort,
			"tcp_mode": spec.TCPMode, "on_crash": cfg.OnCrash, "bypass": len(spec.Bypass),
		}).Info("transparent capture on")
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
		}
	}

	log.Info("shutting down")
	rt.closeInbounds()
	graceCtx, cancel := context.WithTimeout(context.Background(), time.Duration(rt.cfg.Timeouts.Grace))
	defer cancel()
	if cut := g.Shutdown(graceCtx); cut > 0 {
		log.WithField("flows", cut).Warn("grace period over: closed live flows")
	}
	cancelFlows()
	return nil
}

// The inbounds a reload can replace one by one.
const (
	inboundTCP      = "transparent tcp"
	inboundExplicit = "explicit"
	inboundUDP      = "transparent udp"
	inboundAdmin    = "admin"
)

// running is what Run holds while serving: the config in force, the upstreams and their health
// checks, the kernel rules and the open inbounds.
type running struct {
	log      *logrus.Logger
	g        *Gateway
	cfg      *configs.Config
	mark     upstream.Control
	ups      map[string]upstream.Upstream
	stopUps  func()
	rules    *redirect.Ruleset
	flowCtx  context.Context
	inbounds map[string][]io.Closer
	serving  sync.WaitGroup
}

// buildRouting builds the upstreams (starting their health checks) and the router of cfg. On
// success the previous upstreams' health checks are stopped: flows already dialed keep their
// connections, new flows use the new upstreams.
func (rt *running) buildRouting(cfg *configs.Config) (route.Router, error) {
	ups, stop, err := upstream.NewUpstreams(cfg, rt.mark, logrus.NewEntry(rt.log))
	if err != nil {
		return nil, err
	}
	router, err := route.NewRouter(cfg, ups)
	if err != nil {
		stop()
		return nil, err
	}
	rt.stopHealth()
	rt.ups, rt.stopUps = ups, stop
	return router, nil
}

func (rt *running) stopHealth() {
	if rt.stopUps != nil {
		rt.stopUps()
		rt.stopUps = nil
	}
}

// startTransparentTCP opens the listener captured TCP is delivered to: a plain one for
// REDIRECT (the original destination comes from conntrack), a transparent one for TPROXY (the
// original destination is the accepted socket's own local address).
func (rt *running) startTransparentTCP(cfg *configs.Config) error {
	addr := net.JoinHostPort("::", strconv.Itoa(int(cfg.Transparent.TCPPort)))
	lc := net.ListenConfig{KeepAliveConfig: upstream.KeepAlive}
	serve := rt.g.ServeRedirect
	if cfg.Transparent.TCPMode == configs.TCPModeTProxy {
		lc.Control = transparentControl
		serve = rt.g.ServeTProxy
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return fmt.Errorf("transparent TCP listener: %w", err)
	}
	rt.addInbound(inboundTCP, ln)
	rt.serving.Go(func() {
		if err := serve(rt.flowCtx, ln); err != nil {
			rt.log.WithError(err).Error("transparent TCP listener stopped")
		}
	})
	return nil
}

func (rt *running) startInbound(kind string, cfg *configs.Config) error {
	start := map[string]func(context.Context, *configs.Config, *logrus.Logger) ([]io.Closer, error){
		inboundExplicit: rt.g.startExplicit,
		inboundUDP:      rt.g.startUDP,
		inboundAdmin:    rt.g.startAdmin, // stats_admin.go
	}[kind]
	cs, err := start(rt.flowCtx, cfg, rt.log)
	rt.addInbound(kind, cs...)
	return err
}

func (rt *running) addInbound(kind string, cs ...io.Closer) {
	if rt.inbounds == nil {
		rt.inbounds = map[string][]io.Closer{}
	}
	rt.inbounds[kind] = append(rt.inbounds[kind], cs...)
}

// closeInbound closes one inbound's listeners; flows it already handed on keep running.
func (rt *running) closeInbound(kind string) {
	for _, c := range rt.inbounds[kind] {
		c.Close()
	}
	delete(rt.inbounds, kind)
}

func (rt *running) closeInbounds() {
	for _, kind := range []string{inboundTCP, inboundExplicit, inboundUDP, inboundAdmin} {
		rt.closeInbound(kind)
	}
	rt.serving.Wait()
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
	return SpecFromConfig(cfg, own)
}

// reload applies next, a config that has already been validated. Live flows are never
// dropped: the router and upstreams switch for new flows; the kernel table is replaced in one
// batch; an inbound is reopened only when its own settings changed. Settings that only a
// restart applies are named in a warning. If anything fails, what was running keeps running
// where possible and the error is logged.
func (rt *running) reload(next *configs.Config) {
	log, old, g := rt.log, rt.cfg, rt.g
	var changed, restart []string
	note := func(what string, differs bool, list *[]string) {
		if differs {
			*list = append(*list, what)
		}
	}

	router, err := rt.buildRouting(next)
	if err != nil {
		log.WithError(err).Error("reload refused: the running config stays in force")
		return
	}
	g.SetRouter(router)
	g.health.Store(&groupHealth{cfg: next, ups: rt.ups})
	changed = append(changed, "upstreams, groups and rules")

	if lvl, err := logrus.ParseLevel(next.Log.Level); err == nil && next.Log.Level != old.Log.Level {
		log.SetLevel(lvl)
		changed = append(changed, "log.level")
	}

	if next.Mark != old.Mark {
		// socksgate's own sockets carry the mark the rules exempt: rules with a new mark and
		// sockets with the old one would capture socksgate's own traffic again. Both change
		// with a restart only.
		restart = append(restart, "mark")
		next.Mark = old.Mark
	}
	capture := len(old.LAN.Interfaces) > 0
	if (len(next.LAN.Interfaces) > 0) != capture {
		// Capture cannot be turned on or off live: what runs keeps its interfaces and its
		// transparent settings, and the config recorded as running says so, so the next
		// reload compares against what is really installed (rules or none).
		restart = append(restart, "lan.interfaces (turning capture on or off)")
		next.LAN, next.Transparent = old.LAN, old.Transparent
	}
	// UDP capture on a new port (or turned on): the new listener opens before the rules point
	// at it, and the old one closes after; if it cannot open, UDP stays as it was.
	var oldUDP []io.Closer
	udpMoved := false
	if nt, ot := next.Transparent, old.Transparent; capture && nt.UDP && (!ot.UDP || nt.UDPPort != ot.UDPPort) {
		oldUDP = rt.inbounds[inboundUDP]
		delete(rt.inbounds, inboundUDP)
		if err := rt.startInbound(inboundUDP, next); err != nil {
			log.WithError(err).Error("reload: transparent UDP listener; keeping the old one")
			rt.closeInbound(inboundUDP)
			rt.inbounds[inboundUDP] = oldUDP
			keepUDPSettings(&next.Transparent, old.Transparent)
		} else {
			udpMoved = true
			changed = append(changed, "transparent UDP")
		}
	}
	if capture {
		if next.Transparent.TCPPort != old.Transparent.TCPPort || next.Transparent.TCPMode != old.Transparent.TCPMode {
			// Open the new listener before the rules point at it; close the old one after. A
			// new mode on the same port needs the port itself: the old listener gives it up
			// first, and a connection arriving in that instant is refused.
			samePort := next.Transparent.TCPPort == old.Transparent.TCPPort
			oldTCP := rt.inbounds[inboundTCP]
			delete(rt.inbounds, inboundTCP)
			closeOld := func() {
				for _, c := range oldTCP {
					c.Close()
				}
			}
			if samePort {
				closeOld()
			}
			if err := rt.startTransparentTCP(next); err != nil {
				log.WithError(err).Error("reload: transparent TCP listener; keeping the old one")
				next.Transparent.TCPPort, next.Transparent.TCPMode = old.Transparent.TCPPort, old.Transparent.TCPMode
				if !samePort {
					rt.inbounds[inboundTCP] = oldTCP
				} else if err := rt.startTransparentTCP(old); err != nil {
					log.WithError(err).Error("reload: reopening the old transparent TCP listener failed: captured TCP is refused until a restart")
				}
			} else {
				if !samePort {
					defer closeOld()
				}
				changed = append(changed, "transparent.tcp_port/tcp_mode")
			}
		}
		if err := rt.rules.Replace(rt.ruleSpec(next)); err != nil {
			log.WithError(err).Error("reload: replace nftables rules; the previous rules stay")
		} else {
			changed = append(changed, "kernel rules")
		}
	}

	if !equalJSON(next.Listen, old.Listen) {
		rt.closeInbound(inboundExplicit)
		if err := rt.startInbound(inboundExplicit, next); err != nil {
			log.WithError(err).Error("reload: explicit listeners")
		}
		changed = append(changed, "listen")
	}
	switch {
	case udpMoved:
		for _, c := range oldUDP {
			c.Close()
		}
	case udpSettingsDiffer(next.Transparent, old.Transparent):
		// UDP sessions live in the listener's table: reopening it ends them (clients retry).
		// On the same port the old listener has to go first; turned off, the rules no
		// longer send anything to it.
		rt.closeInbound(inboundUDP)
		if err := rt.startInbound(inboundUDP, next); err != nil {
			log.WithError(err).Error("reload: transparent UDP")
		}
		changed = append(changed, "transparent UDP")
	}
	if w := next.Transparent.UDPOverTCPUpstream; w != old.Transparent.UDPOverTCPUpstream {
		// Explicit SOCKS UDP follows it too (the transparent inbound has just been reopened).
		var fb upstream.Upstream
		if w == configs.UDPDirect {
			fb = &upstream.Direct{Control: rt.mark}
		}
		g.SetUDPFallback(fb)
	}
	if next.Admin != old.Admin {
		rt.closeInbound(inboundAdmin)
		if err := rt.startInbound(inboundAdmin, next); err != nil {
			log.WithError(err).Error("reload: admin endpoint")
		}
		changed = append(changed, "admin")
	}
	note("relay", next.Relay != old.Relay, &restart)
	note("timeouts", next.Timeouts != old.Timeouts, &restart)
	note("limits", next.Limits != old.Limits, &restart)
	note("log.format", next.Log.Format != old.Log.Format, &restart)
	note("transparent.sniff", !equalJSON(next.Transparent.Sniff, old.Transparent.Sniff), &restart)

	rt.cfg = next
	e := log.WithField("applied", changed)
	if len(restart) > 0 {
		e = e.WithField("needs_restart", restart)
	}
	e.Info("config reloaded")
}

// udpSettingsDiffer reports whether the transparent UDP inbound must be reopened.
func udpSettingsDiffer(a, b configs.Transparent) bool {
	return a.UDP != b.UDP || a.UDP && (a.UDPPort != b.UDPPort || a.UDPIdle != b.UDPIdle ||
		a.UDPMaxSessions != b.UDPMaxSessions || a.UDPOverTCPUpstream != b.UDPOverTCPUpstream ||
		a.DNSOverTCP != b.DNSOverTCP)
}

// keepUDPSettings puts back in t the UDP settings in force (from was), when new ones could
// not be applied.
func keepUDPSettings(t *configs.Transparent, was configs.Transparent) {
	t.UDP, t.UDPPort, t.UDPIdle, t.UDPMaxSessions = was.UDP, was.UDPPort, was.UDPIdle, was.UDPMaxSessions
	t.UDPOverTCPUpstream, t.DNSOverTCP = was.UDPOverTCPUpstream, was.DNSOverTCP
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
		LANInterfaces: cfg.LAN.Interfaces,
		TCPPort:       t.TCPPort,
		TCPMode:       t.TCPMode,
		Mark:          cfg.Mark,
		TProxyMark:    t.TProxyMark,
		RouteTable:    t.RouteTable,
		RulePriority:  t.RulePriority,
		Bypass:        append(cfg.BypassPrefixes(), extraBypass...),
		OnCrash:       cfg.OnCrash,
	}
	if t.UDP {
		s.UDPPort = t.UDPPort
	}
	return s
}

// relayMode is the config's relay mode. "kernel" (the sockmap relay, taken out: it loses or
// duplicates bytes on current kernels, docs/performance.md) runs the default, with a warning.
func relayMode(s string, log *logrus.Logger) relay.Mode {
	m, err := relay.ParseMode(s)
	if err != nil {
		log.Warnf("relay: %q is not available (the kernel relay was taken out: see docs/performance.md); using auto", s)
	}
	return m
}
