package geoip

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// File is a database file and the version of it in force. Reload reads the file again and
// swaps the new version in atomically; a file that does not load (missing, half-written,
// not a database) leaves the version in force and is kept as the error Status reports.
// Lookups never wait for a reload. It is safe for concurrent use.
type File struct {
	path string
	db   atomic.Pointer[DB]

	mu       sync.Mutex // guards the fields below, and serialises Reload
	loaded   time.Time
	err      error
	failures uint64
	reloads  uint64
}

// Status is what File says of itself, for /metrics, the log and `socksgate check`.
type Status struct {
	Path     string
	Type     string    // the database's kind, of the version in force
	Loaded   time.Time // when the version in force was read
	Err      error     // why the last load failed; nil when it succeeded
	Failures uint64    // loads that failed, the first included
	Reloads  uint64    // loads that succeeded after the first
}

// OpenFile loads the database at path. Unlike a Reload, a first load that fails is an error
// with nothing in force.
func OpenFile(path string) (*File, error) {
	db, err := Open(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path, loaded: time.Now()}
	f.db.Store(db)
	return f, nil
}

// Path is the file's path as given.
func (f *File) Path() string { return f.path }

// DB is the version in force.
func (f *File) DB() *DB { return f.db.Load() }

// Country looks a up in the version in force.
func (f *File) Country(a netip.Addr) Code { return f.db.Load().Country(a) }

// Reload reads the file again. On success the new version is in force for every lookup that
// starts afterwards; on failure the version in force stays and the error is returned (and
// kept for Status until a load succeeds).
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	db, err := Open(f.path)
	if err != nil {
		f.err = err
		f.failures++
		return err
	}
	f.db.Store(db)
	f.loaded, f.err = time.Now(), nil
	f.reloads++
	return nil
}

// Status reports the file's state.
func (f *File) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Status{Path: f.path, Type: f.db.Load().Type(), Loaded: f.loaded, Err: f.err, Failures: f.failures, Reloads: f.reloads}
}
