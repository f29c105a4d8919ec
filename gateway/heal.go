package gateway

import (
	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/redirect"
)

// watchRules keeps the kernel rules in place while socksgate runs: when a firewall reload (`nft
// flush ruleset`, firewalld) or an admin removes socksgate's table or its policy routing, the
// watcher puts them back (see redirect.Ruleset.Watch), counted in
// socksgate_rules_restored_total. A watcher that cannot start is a warning: capture works, it
// just does not heal. The returned func stops it; call it before the rules are closed.
func (rt *running) watchRules() (stop func()) {
	w, err := rt.rules.Watch(func(ev redirect.WatchEvent) { reportWatch(rt.log, rt.g, ev); rt.logOffload() })
	if err != nil {
		rt.log.WithError(err).Warn("watching the kernel rules: a firewall reload that removes them will not be undone until a restart")
		return func() {}
	}
	return w.Stop
}

func reportWatch(log *logrus.Logger, g *Gateway, ev redirect.WatchEvent) {
	f := logrus.Fields{"changes": ev.What}
	if len(ev.By) > 0 {
		f["by"] = ev.By
	}
	e := log.WithFields(f)
	switch ev.Kind {
	case redirect.Restored:
		g.Stats.RulesRestored.Add(1)
		e.Warn("kernel rules removed or changed by someone else: restored")
	case redirect.RestoreFailed:
		e.WithError(ev.Err).WithField("retry_in", ev.Wait.String()).Error("restoring the kernel rules failed: the LAN may go direct until it succeeds")
	case redirect.BackingOff:
		log.WithFields(logrus.Fields{"restores": ev.Recent, "retry_in": ev.Wait.String()}).
			Error("kernel rules keep being removed: another program is fighting socksgate over them; waiting before restoring them again")
	case redirect.Checked:
		e.Debug("kernel change seen: socksgate's rules are in place")
	}
}
