package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/redirect"
)

// Run serves cfg until ctx is cancelled: it opens the listeners, installs the kernel rules, and
// on cancellation closes the listeners, lets live flows finish for the grace period, removes
// the rules and returns. A failure to start (a port in use, rules refused) is returned at once,
// with whatever was already set up undone.
func Run(ctx context.Context, cfg *configs.Config, log *logrus.Logger) (err error) {
	nofile := raiseFileLimit(log)
	mark := redirect.MarkControl(cfg.Mark)
	ups, stopHealth, err := NewUpstreams(cfg, mark, logrus.NewEntry(log))
	if err != nil {
		return err
	}
	defer stopHealth()
	router, err := NewRouter(cfg, ups)
	if err != nil {
		return err
	}
	g := &Gateway{
		Router:      router,
		Log:         logrus.NewEntry(log),
		DialTimeout: time.Duration(cfg.Timeouts.Dial),
		Idle:        time.Duration(cfg.Timeouts.Idle),
		Sniff:       NewSniffing(cfg.Transparent.Sniff),
		Relay:       cfg.Relay,
		upstreams:   ups,
		MaxFlows:    cfg.Limits.MaxFlows,
		MaxPerSrc:   cfg.Limits.MaxFlowsPerSource,
	}
	if g.MaxFlows == 0 && nofile > 0 {
		// Each relayed flow holds two descriptors; keep some for listeners, UDP and the admin
		// endpoint, so the bound is met before accept(2) ever sees EMFILE.
		g.MaxFlows = max(int(nofile)-256, 64) / 2
	}
	log.WithField("max_flows", g.MaxFlows).Info("flow limit")

	flowCtx, cancelFlows := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelFlows()
	var listeners []net.Listener
	var closers []io.Closer
	var serving sync.WaitGroup
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
		for _, c := range closers {
			c.Close()
		}
		serving.Wait()
	}()

	var rules *redirect.Ruleset
	if len(cfg.LAN.Interfaces) > 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(int(cfg.Transparent.TCPPort))))
		if err != nil {
			return fmt.Errorf("transparent TCP listener: %w", err)
		}
		listeners = append(listeners, ln)
		serving.Go(func() {
			if err := g.ServeRedirect(flowCtx, ln); err != nil {
				log.WithError(err).Error("transparent TCP listener stopped")
			}
		})
		spec, err := ruleSpec(cfg)
		if err != nil {
			return err
		}
		rules, err = redirect.Apply(spec)
		if err != nil {
			return fmt.Errorf("install nftables rules: %w", err)
		}
		defer func() {
			if cerr := rules.Close(); cerr != nil {
				log.WithError(cerr).Error("remove nftables rules")
				err = errors.Join(err, cerr)
			} else {
				log.Info("rules removed")
			}
		}()
		log.WithFields(logrus.Fields{
			"interfaces": cfg.LAN.Interfaces, "tcp_port": cfg.Transparent.TCPPort,
			"on_crash": cfg.OnCrash, "bypass": len(spec.Bypass),
		}).Info("transparent capture on")
	} else {
		log.Info("lan.interfaces is empty: no transparent capture, explicit ports only")
	}

	// The other inbounds, each in its own file: explicit HTTP/SOCKS ports and transparent UDP.
	// Each returns what Run must close at shutdown (listeners first, so no new flow starts).
	for _, start := range []func(context.Context, *configs.Config, *logrus.Logger) ([]io.Closer, error){
		g.startExplicit,
		g.startUDP,
		g.startAdmin, // the admin endpoint when cfg.Admin is set (stats_admin.go)
	} {
		cs, err := start(flowCtx, cfg, log)
		for _, c := range cs {
			closers = append(closers, c)
		}
		if err != nil {
			return err
		}
	}

	go g.RunIdleSweeper(flowCtx)
	log.WithField("upstreams", len(cfg.Upstreams)).Info("socksgate ready")
	<-ctx.Done()

	log.Info("shutting down")
	for _, ln := range listeners {
		ln.Close()
	}
	for _, c := range closers {
		c.Close()
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Timeouts.Grace))
	defer cancel()
	if cut := g.Shutdown(graceCtx); cut > 0 {
		log.WithField("flows", cut).Warn("grace period over: closed live flows")
	}
	cancelFlows()
	return nil
}

// ruleSpec turns the config into the kernel rules' spec, adding the LAN interfaces' own
// prefixes to the bypass set so that traffic between LAN hosts is never captured.
func ruleSpec(cfg *configs.Config) (redirect.Spec, error) {
	own, err := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
	if err != nil {
		return redirect.Spec{}, fmt.Errorf("lan.interfaces: %w", err)
	}
	return SpecFromConfig(cfg, own), nil
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
