package ruleset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/socksgate/socksgate/configs"
)

// Load reads the set rs describes from its file.
func Load(rs configs.RuleSet) (*Set, error) {
	s, _, err := load(rs)
	return s, err
}

// stamp tells a file's versions apart without reading it.
type stamp struct {
	mtime      int64
	size, ino  uint64
	missing    bool
	unreadable bool
}

func statFile(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{missing: errors.Is(err, os.ErrNotExist), unreadable: true}
	}
	st := stamp{mtime: fi.ModTime().UnixNano(), size: uint64(fi.Size())}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = uint64(sys.Ino)
	}
	return st
}

func load(rs configs.RuleSet) (*Set, stamp, error) {
	f, err := os.Open(rs.Path)
	if err != nil {
		return nil, statFile(rs.Path), err
	}
	defer f.Close()
	st := statFile(rs.Path)
	s, err := Parse(f, rs.Kind, rs.Format, int64(st.size))
	if err != nil {
		return nil, st, fmt.Errorf("read %s: %w", rs.Path, err)
	}
	return s, st, nil
}

// Handle is one configured rule set and the version of it in force, which a reload of its
// file swaps whole: a reader sees the old set or the new one, never a mix.
type Handle struct {
	conf       configs.RuleSet
	cur        atomic.Pointer[Set]
	loadErrors atomic.Uint64
	loaded     atomic.Int64          // unix nanoseconds of the last good load; 0: none yet
	lastErr    atomic.Pointer[error] // the last load's error; nil after a good one

	seen  stamp       // the file's stamp at the last load, good or bad (Registry.mu)
	timer *time.Timer // a reload scheduled after an event (Registry.mu)
}

// Name is the set's name.
func (h *Handle) Name() string { return h.conf.Name }

// Set is the version in force: never nil (an empty set until a file is read).
func (h *Handle) Set() *Set { return h.cur.Load() }

// Domains is the domain set in force (empty for a cidr set).
func (h *Handle) Domains() *Domains { return h.cur.Load().Domains }

// CIDRs is the cidr set in force (empty for a domain set).
func (h *Handle) CIDRs() *CIDRs { return h.cur.Load().CIDRs }

// Err is the error of the last load of the file, nil if it went well.
func (h *Handle) Err() error {
	if e := h.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// NewHandle makes a handle holding s (tests, and `socksgate explain` without a registry).
func NewHandle(rs configs.RuleSet, s *Set) *Handle {
	h := &Handle{conf: rs}
	if s == nil {
		s = empty(rs.Kind)
	}
	h.cur.Store(s)
	return h
}

// Event is the outcome of loading a set's file: Set is the new version in force, or Err why
// the file was refused (the version in force stays).
type Event struct {
	Name string
	Set  *Set
	Err  error
}

// Registry holds the configured rule sets (a nil *Registry holds none), reloads each one when its file changes and says
// so on Events. Files are watched through their directories (inotify), so that a file an
// editor or a download renames into place is seen as well as one written in place; a poll
// every Poll catches what the watch cannot see (a directory that did not exist yet, a
// symbolic link's target). Several events within Settle make one reload.
type Registry struct {
	Poll   time.Duration // default 30s
	Settle time.Duration // default 200ms

	mu      sync.Mutex
	sets    map[string]*Handle
	w       *fsnotify.Watcher
	dirs    map[string]bool // directories watched
	events  chan Event
	stop    chan struct{}
	done    chan struct{}
	started bool
}

// NewRegistry returns an empty registry; Start begins watching.
func NewRegistry() *Registry {
	return &Registry{sets: map[string]*Handle{}, dirs: map[string]bool{}, events: make(chan Event, 64),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Apply makes every set of sets known: one already known as configured is kept as it is,
// the others are loaded now (a file that cannot be read gives an empty set and an error
// event). Sets no longer configured stay until Prune. It returns the loads it made.
func (r *Registry) Apply(sets []configs.RuleSet) []Event {
	if r == nil {
		return nil
	}
	var out []Event
	for _, rs := range sets {
		r.mu.Lock()
		old := r.sets[rs.Name]
		r.mu.Unlock()
		if old != nil && old.conf == rs {
			continue
		}
		h := &Handle{conf: rs}
		s, st, err := load(rs)
		h.seen = st
		if err != nil {
			h.cur.Store(empty(rs.Kind))
			h.loadErrors.Add(1)
			h.lastErr.Store(&err)
		} else {
			h.cur.Store(s)
			h.loaded.Store(time.Now().UnixNano())
		}
		r.mu.Lock()
		if old != nil && old.timer != nil {
			old.timer.Stop()
		}
		r.sets[rs.Name] = h
		r.watchDir(filepath.Dir(rs.Path))
		r.mu.Unlock()
		out = append(out, Event{Name: rs.Name, Set: s, Err: err})
	}
	return out
}

// Prune forgets the sets not in sets.
func (r *Registry) Prune(sets []configs.RuleSet) {
	if r == nil {
		return
	}
	keep := map[string]bool{}
	for _, rs := range sets {
		keep[rs.Name] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, h := range r.sets {
		if !keep[name] {
			if h.timer != nil {
				h.timer.Stop()
			}
			delete(r.sets, name)
		}
	}
	// Directories stay watched: events there for no set are ignored.
}

// Restore puts back the sets of hs (what Handles returned before an Apply) and forgets the
// others: after a reload of the config that is refused once its sets were applied, the
// handles the running router holds are again the ones reloaded when their files change.
func (r *Registry) Restore(hs map[string]*Handle) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, h := range r.sets {
		if hs[name] != h && h.timer != nil {
			h.timer.Stop()
		}
	}
	r.sets = make(map[string]*Handle, len(hs))
	for name, h := range hs {
		r.sets[name] = h
		if r.started && statFile(h.conf.Path) != h.seen {
			r.schedule(h) // Apply stopped its pending reload
		}
	}
}

// Handles returns the sets by name.
func (r *Registry) Handles() map[string]*Handle {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]*Handle, len(r.sets))
	for k, v := range r.sets {
		out[k] = v
	}
	return out
}

// Events delivers the outcome of every reload after Start.
func (r *Registry) Events() <-chan Event {
	if r == nil {
		return nil
	}
	return r.events
}

// Start begins watching the files. A failure to set up inotify leaves the poll.
func (r *Registry) Start() {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return
	}
	r.started = true
	if r.Poll <= 0 {
		r.Poll = 30 * time.Second
	}
	if r.Settle <= 0 {
		r.Settle = 200 * time.Millisecond
	}
	if w, err := fsnotify.NewWatcher(); err == nil {
		r.w = w
		for d := range r.dirs {
			r.dirs[d] = r.w.Add(d) == nil
		}
	}
	r.mu.Unlock()
	go r.run()
}

// Close stops watching; the sets stay as they are.
func (r *Registry) Close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	started := r.started
	r.started = false
	r.mu.Unlock()
	if !started {
		return
	}
	close(r.stop)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		r.w.Close()
	}
	for _, h := range r.sets {
		if h.timer != nil {
			h.timer.Stop()
		}
	}
}

// watchDir adds a watch on dir (r.mu held); one that fails is retried at each poll.
func (r *Registry) watchDir(dir string) {
	if r.dirs[dir] {
		return
	}
	r.dirs[dir] = r.w != nil && r.w.Add(dir) == nil
}

func (r *Registry) run() {
	defer close(r.done)
	var evs <-chan fsnotify.Event
	var errs <-chan error
	if r.w != nil {
		evs, errs = r.w.Events, r.w.Errors
	}
	tick := time.NewTicker(r.Poll)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case ev, ok := <-evs:
			if !ok {
				evs = nil
				continue
			}
			r.mu.Lock()
			for _, h := range r.sets {
				if filepath.Clean(h.conf.Path) == filepath.Clean(ev.Name) {
					r.schedule(h)
				}
			}
			r.mu.Unlock()
		case _, ok := <-errs:
			if !ok {
				errs = nil
			}
			// An overflowed queue loses events: the poll finds what changed.
		case <-tick.C:
			r.mu.Lock()
			for d, ok := range r.dirs {
				if !ok {
					r.dirs[d] = r.w != nil && r.w.Add(d) == nil
				}
			}
			for _, h := range r.sets {
				if statFile(h.conf.Path) != h.seen {
					r.schedule(h)
				}
			}
			r.mu.Unlock()
		}
	}
}

// schedule reloads h once its file has been quiet for Settle (r.mu held).
func (r *Registry) schedule(h *Handle) {
	if h.timer != nil {
		h.timer.Reset(r.Settle)
		return
	}
	h.timer = time.AfterFunc(r.Settle, func() { r.reload(h) })
}

// reload reads h's file again and swaps the new version in, or keeps the old one.
func (r *Registry) reload(h *Handle) {
	s, st, err := load(h.conf)
	r.mu.Lock()
	if r.sets[h.conf.Name] != h {
		r.mu.Unlock()
		return // pruned or replaced meanwhile
	}
	h.seen = st
	if err != nil {
		h.loadErrors.Add(1)
		h.lastErr.Store(&err)
	} else {
		h.cur.Store(s)
		h.loaded.Store(time.Now().UnixNano())
		h.lastErr.Store(nil)
	}
	r.mu.Unlock()
	select {
	case r.events <- Event{Name: h.conf.Name, Set: s, Err: err}:
	case <-r.stop:
	}
}

// SetStats is a set's state for /metrics and `socksgate check`.
type SetStats struct {
	Name, Kind string
	Entries    int
	LoadErrors uint64
	LastLoad   time.Time // the last good load; zero: none
	Err        error     // the last load's error
}

// Stats returns every set's state, in no particular order.
func (r *Registry) Stats() []SetStats {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]SetStats, 0, len(r.sets))
	for _, h := range r.sets {
		st := SetStats{Name: h.conf.Name, Kind: h.conf.Kind.String(), Entries: h.Set().Len(), LoadErrors: h.loadErrors.Load(), Err: h.Err()}
		if t := h.loaded.Load(); t != 0 {
			st.LastLoad = time.Unix(0, t)
		}
		out = append(out, st)
	}
	return out
}
