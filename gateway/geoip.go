package gateway

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/internal/filewatch"
	"github.com/socksgate/socksgate/route"
)

// geoDB is the country database of the dst_geoip and src_geoip rules (geoip.path), for the
// whole run: every router built asks it, so a database that changes needs no new router. The
// file is watched (internal/filewatch: its directory, so a rename into place is seen) and
// reloaded when it changes; one that does not load leaves the version in force, its error in
// the log and in /metrics. A reload of the config re-reads it too, or opens another path.
type geoDB struct {
	cur atomic.Pointer[geoWatch] // nil: no database configured
	// changed gets a value when the watch has loaded a new version, for Run's loop to
	// recompute the kernel's direct sets (dst_geoip rules are hoisted).
	changed chan struct{}

	mu     sync.Mutex
	netsOf *geoip.DB // the version nets was listed from
	nets   map[geoip.Code][]netip.Prefix
}

// geoWatch is one database file and its watch.
type geoWatch struct {
	f    *geoip.File
	stop func() // ends the watch; nil: not watched
}

// Prefixes implements route.RuleRouter.GeoPrefixes: a country's networks in the version in
// force, listed once per version (a walk of the whole database).
func (g *geoDB) Prefixes(cc geoip.Code) []netip.Prefix {
	w := g.cur.Load()
	if w == nil {
		return nil
	}
	db := w.f.DB()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.netsOf != db {
		g.netsOf, g.nets = db, map[geoip.Code][]netip.Prefix{}
	}
	ps, ok := g.nets[cc]
	if !ok {
		ps = db.Prefixes(cc)
		g.nets[cc] = ps
	}
	return ps
}

// Country implements route.RuleRouter.GeoIP.
func (g *geoDB) Country(a netip.Addr) geoip.Code {
	if w := g.cur.Load(); w != nil {
		return w.f.Country(a)
	}
	return 0
}

func (w *geoWatch) close() {
	if w != nil && w.stop != nil {
		w.stop()
	}
}

// openGeoWatch loads the database at path and watches it. A database that does not load is
// an error; a watch that cannot be set up is only a warning (the file is still re-read on
// each reload of the config).
func (rt *running) openGeoWatch(path string) (*geoWatch, error) {
	if !geoip.Built {
		// configs refuses geoip.path in such a build; and so the watcher is left out of it.
		return nil, fmt.Errorf("geoip.path: %w", geoip.ErrNotBuilt)
	}
	f, err := geoip.OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("geoip.path: %w", err)
	}
	w := &geoWatch{f: f}
	log := rt.log.WithField("path", path)
	w.stop, err = filewatch.Watch(path, 0, func() {
		if reloadGeo(log, f, "the file changed") {
			select {
			case rt.geo.changed <- struct{}{}:
			default: // one is pending already
			}
		}
	})
	if err != nil {
		log.WithError(err).Warn("geoip: the database file is not watched; a reload of the config (SIGHUP) re-reads it")
	}
	log.WithField("type", f.Status().Type).Info("geoip: database loaded")
	return w, nil
}

// reloadGeo reads f again and says how it went: true when a new version is in force.
func reloadGeo(log *logrus.Entry, f *geoip.File, why string) bool {
	if err := f.Reload(); err != nil {
		log.WithError(err).Error("geoip: the database did not load; the version in force stays")
		return false
	}
	log.WithField("type", f.Status().Type).WithField("why", why).Info("geoip: database reloaded")
	return true
}

// prepareGeoIP readies c's database for a start or a reload without putting it in force: the
// one in force when its path is the same (re-read now; a file that does not load keeps it), a
// new one opened when the path differs. commit puts it in force and closes the previous one;
// abort drops what was opened. A new path whose database does not load is an error, and
// nothing changes.
func (rt *running) prepareGeoIP(c configs.GeoIP) (commit, abort func(), err error) {
	old := rt.geo.cur.Load()
	if old != nil && old.f.Path() == c.Path {
		reloadGeo(rt.log.WithField("path", c.Path), old.f, "the config was reloaded")
		return func() {}, func() {}, nil
	}
	var next *geoWatch
	if c.Path != "" {
		if next, err = rt.openGeoWatch(c.Path); err != nil {
			return nil, nil, err
		}
	}
	commit = func() {
		rt.geo.cur.Store(next)
		old.close()
	}
	return commit, func() { next.close() }, nil
}

// useGeoIP has the router look countries up in the database of the run.
func (rt *running) useGeoIP(r route.Router) {
	if rr, ok := r.(*route.RuleRouter); ok {
		rr.GeoIP, rr.GeoPrefixes = rt.geo.Country, rt.geo.Prefixes
	}
}

// closeGeoIP ends the watch at the end of the run.
func (rt *running) closeGeoIP() {
	rt.geo.cur.Swap(nil).close()
}

// geoStats is the database's state for /metrics; nil without one.
func (g *geoDB) stats() *admin.GeoIPStats {
	w := g.cur.Load()
	if w == nil {
		return nil
	}
	st := w.f.Status()
	out := &admin.GeoIPStats{Path: st.Path, Type: st.Type, Loaded: st.Loaded, Failures: st.Failures, Reloads: st.Reloads}
	if st.Err != nil {
		out.Err = st.Err.Error()
	}
	return out
}
