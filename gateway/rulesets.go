package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/ruleset"
)

// The rule sets: the registry loads each configured set's file at start and on every
// reload that adds or changes one, watches the files, and swaps a set whole when its file
// changes; the router reads the sets through their handles, so a new version is in force
// for the next flow. A file that cannot be read or is refused keeps the version in force
// (empty when there was none), with the error in the log and in /metrics. After every
// change the kernel's direct sets are recomputed (route.RuleRouter.Hoisted) and, when they
// differ, the table is replaced in one batch.

// startSets makes the registry and loads cfg's sets.
func (rt *running) startSets(cfg *configs.Config) {
	rt.sets = ruleset.NewRegistry()
	rt.logSetLoads(cfg, rt.sets.Apply(cfg.RuleSets))
	rt.sets.Start()
}

// logSetLoads logs the loads of a start or a reload.
func (rt *running) logSetLoads(cfg *configs.Config, evs []ruleset.Event) {
	for _, ev := range evs {
		e := rt.log.WithField("set", ev.Name)
		if rs := cfg.RuleSet(ev.Name); rs != nil {
			e = e.WithField("path", rs.Path)
		}
		if ev.Err != nil {
			e.WithError(ev.Err).Error("rule set not loaded: it is empty until its file can be read")
			continue
		}
		rt.logSet(e, ev.Set, "rule set loaded")
	}
}

func (rt *running) logSet(e *logrus.Entry, s *ruleset.Set, msg string) {
	e = e.WithFields(logrus.Fields{"entries": s.Stats.Entries, "format": s.Stats.Format})
	if b := s.Stats.BadSummary(); b != "" {
		e.WithField("bad", b).Warn(msg + " with bad lines")
		return
	}
	e.Info(msg)
}

// setChanged handles a reload of one set's file, in Run's loop (so never while a config
// reload runs).
func (rt *running) setChanged(ev ruleset.Event) {
	e := rt.log.WithField("set", ev.Name)
	if rs := rt.cfg.RuleSet(ev.Name); rs != nil {
		e = e.WithField("path", rs.Path)
	}
	if ev.Err != nil {
		e.WithError(ev.Err).Error("rule set file refused: the version in force stays")
		return
	}
	rt.logSet(e, ev.Set, "rule set reloaded")
	rt.updateDirect()
}

// hoisted is what the router in force puts in the kernel's direct sets.
func (rt *running) hoisted() ([]netip.Prefix, []string) {
	r, ok := rt.g.router().(*route.RuleRouter)
	if !ok {
		return nil, nil
	}
	return r.HoistedPrefixes()
}

// updateDirect replaces the kernel rules when the direct sets they hold are not what the
// router in force hoists.
func (rt *running) updateDirect() {
	if rt.rules == nil {
		return
	}
	spec := rt.rules.Spec()
	direct, from := rt.hoisted()
	if slices.Equal(spec.Direct, direct) {
		return
	}
	spec.Direct = direct
	if err := rt.rules.Replace(spec); err != nil {
		rt.log.WithError(err).Error("kernel direct sets not updated: the previous ones stay")
		return
	}
	rt.g.directPrefixes.Store(int64(len(direct)))
	rt.logDirect(direct, from)
	rt.logOffload()
}

// logOffload logs the flowtable's state (transparent.offload) when it differs from what was
// logged last: its devices, or why the kernel refused it (a warning).
func (rt *running) logOffload() {
	s := rt.rules.Spec()
	if !s.Offload {
		return
	}
	devs, err := rt.rules.Offload()
	state := fmt.Sprint(devs, err)
	if old, _ := rt.offloaded.Swap(state).(string); old == state {
		return
	}
	switch {
	case err != nil:
		rt.log.WithError(err).Warn("transparent.offload: the kernel refused the flowtable; direct flows are routed without it")
	case len(s.Direct) == 0:
		rt.log.Info("transparent.offload: no rule sends flows direct by destination alone, nothing to offload")
	default:
		rt.log.WithField("devices", devs).Info("transparent.offload: direct flows are offloaded (flowtable ft)")
	}
}

func (rt *running) logDirect(direct []netip.Prefix, from []string) {
	rt.log.WithFields(logrus.Fields{"prefixes": len(direct), "rules": from}).Info("kernel direct sets: flows to these destinations are routed by the kernel")
}

// ruleSetStats are the sets' state for /metrics, by name.
func (g *Gateway) ruleSetStats() []admin.RuleSetStats {
	if g.sets == nil {
		return nil
	}
	st := g.sets.Stats()
	out := make([]admin.RuleSetStats, len(st))
	for i, s := range st {
		out[i] = admin.RuleSetStats{Name: s.Name, Entries: s.Entries, LoadErrors: s.LoadErrors, LastLoad: s.LastLoad, OK: s.Err == nil}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
