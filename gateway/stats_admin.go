package gateway

import (
	"net/netip"
	"slices"
	"time"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// BuildVersion labels socksgate_build_info; the command sets it before Run.
var BuildVersion = "dev"

// UpstreamState is one upstream's health as whatever checks upstreams knows it.
type UpstreamState struct {
	Name   string    // the upstream's name in the config
	Group  string    // the group whose view this is; "" for an upstream outside any group
	URL    string    // redacted
	Up     bool      // usable for new flows
	Reason string    // why it is down (the last check's error), or how the state is known
	Since  time.Time // when the state last changed; zero when unknown
}

// HealthReporter is implemented by routers (or the group code behind them) that check their
// upstreams. The admin endpoint asks it at every scrape; without one, every configured upstream
// is reported up with the reason "not health-checked".
type HealthReporter interface {
	UpstreamStates() []UpstreamState
}

// ConfiguredHealth reports every upstream in cfg as up, for configs without health checks.
func ConfiguredHealth(cfg *configs.Config) HealthReporter {
	states := make([]UpstreamState, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		states = append(states, UpstreamState{
			Name: u.Name, URL: configs.Redacted(u.URL), Up: true, Reason: "not health-checked",
		})
	}
	return staticHealth(states)
}

// groupHealth reports the members of every group with their checked state, and every upstream
// outside a group as up ("not health-checked": only groups run health checks).
type groupHealth struct {
	cfg    *configs.Config
	ups    map[string]upstream.Upstream
	router route.Router // built from cfg over ups (the rules' hit counts)
}

func (h groupHealth) UpstreamStates() []UpstreamState {
	var out []UpstreamState
	grouped := map[string]bool{}
	for _, gc := range h.cfg.Groups {
		grp, ok := h.ups[gc.Name].(*upstream.Group)
		if !ok {
			continue
		}
		for _, m := range grp.Status() {
			grouped[m.Name] = true
			st := UpstreamState{Name: m.Name, Group: gc.Name, Up: m.Up, Reason: m.Reason, Since: m.Since}
			if u := h.cfg.Upstream(m.Name); u != nil {
				st.URL = configs.Redacted(u.URL)
			}
			out = append(out, st)
		}
	}
	for _, st := range ConfiguredHealth(h.cfg).UpstreamStates() {
		if !grouped[st.Name] {
			out = append(out, st)
		}
	}
	return out
}

// liveHealth reports the upstreams in force, following reloads.
type liveHealth struct{ g *Gateway }

func (h liveHealth) UpstreamStates() []UpstreamState {
	if gh := h.g.health.Load(); gh != nil {
		return gh.UpstreamStates()
	}
	return nil
}

type staticHealth []UpstreamState

func (s staticHealth) UpstreamStates() []UpstreamState { return s }

// AdminSource is what the admin endpoint reads from a running gateway.
type AdminSource struct {
	G         *Gateway
	Health    HealthReporter                    // nil: no upstreams reported
	Listeners interface{ Unhealthy() []string } // listeners down, for /healthz; nil: none known
	rt        *running                          // the run behind G (the control API's reload, select); nil: read-only
}

var (
	_ admin.Source          = AdminSource{}
	_ admin.HealthChecker   = AdminSource{}
	_ admin.ServingReporter = AdminSource{}
)

// Unhealthy implements admin.HealthChecker: the listeners that should be open and are not.
func (a AdminSource) Unhealthy() []string {
	if a.Listeners == nil {
		return nil
	}
	return a.Listeners.Unhealthy()
}

// Serving implements admin.ServingReporter: ha.vip of the config in force, and those of them on
// one of this router's interfaces, read from the kernel at each request (VRRP moves them at any
// time; a cached list would report the old master serving for a while).
func (a AdminSource) Serving() (vip, held []netip.Addr) {
	cfg := a.config()
	if cfg == nil || len(cfg.HA.VIP) == 0 {
		return nil, nil
	}
	own := readHostAddrs(nil)
	for _, v := range cfg.HA.VIP {
		if slices.Contains(own, v) {
			held = append(held, v)
		}
	}
	return cfg.HA.VIP, held
}

// Snapshot implements admin.Source: the counters (refusals among them) and the live flows
// grouped.
func (a AdminSource) Snapshot() admin.Snapshot {
	s := a.G.Stats.snapshot()
	s.Active = a.G.activeCounts()
	if n := a.G.namer.Load(); n != nil {
		s.DNS = n.svc.snapshot()
	}
	s.RuleSets = a.G.ruleSetStats()
	s.DirectPrefixes = int(a.G.directPrefixes.Load())
	if a.rt != nil {
		s.GeoIP = a.rt.geo.stats()
	}
	return s
}

// Flows implements admin.Source.
func (a AdminSource) Flows() []admin.Flow { return a.G.LiveFlows() }

// Upstreams implements admin.Source.
func (a AdminSource) Upstreams() []admin.Upstream {
	if a.Health == nil {
		return nil
	}
	states := a.Health.UpstreamStates()
	out := make([]admin.Upstream, 0, len(states))
	for _, s := range states {
		out = append(out, admin.Upstream(s))
	}
	return out
}

// startAdmin opens the admin endpoint on a.Listen ("" : none). The router reports upstream
// health when it implements HealthReporter (groups with health checks); otherwise the
// configured upstreams are reported up. /healthz reports the listeners that stopped with an
// error.
func (rt *running) startAdmin(a configs.Admin) (*admin.Server, error) {
	if a.Listen == "" {
		return nil, nil
	}
	g := rt.g
	health, ok := g.Router.(HealthReporter)
	if !ok {
		health = liveHealth{g}
	}
	srv, err := admin.Listen(a.Listen, AdminSource{G: g, Health: health, Listeners: rt.health, rt: rt}, BuildVersion, adminAccess(a))
	if err != nil {
		return nil, err
	}
	e := rt.log.WithField("addr", srv.Addr().String())
	if a.Secret != "" {
		e = e.WithField("secret", "required")
	}
	e.Info("admin endpoint on (/metrics, /flows, /upstreams, /healthz, the Clash-style API)")
	return srv, nil
}

func adminAccess(a configs.Admin) admin.Access {
	return admin.Access{Secret: string(a.Secret), CORSOrigins: a.CORSOrigins}
}
