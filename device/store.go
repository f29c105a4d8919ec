package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/state"
)

// StoreFile is the device store's name in the state directory; LockFile is held (flock) while a
// store is open, so that a second socksgate with the same directory keeps its totals in memory.
const (
	StoreFile = "devices.json"
	LockFile  = "devices.lock"
	// oldStoreFile is the store of earlier versions (bbolt), which this one cannot read.
	oldStoreFile = "devices.db"
)

// storeVersion is written with the file and every record; a record of another version is
// skipped, a file of another version is moved aside.
const storeVersion = 1

// storeFile is the store's contents: every device, written whole.
type storeFile struct {
	V       int            `json:"v"`
	Devices map[MAC]stored `json:"devices"`
}

// stored is one device as the store keeps it.
type stored struct {
	V        int          `json:"v"`
	Addrs    []netip.Addr `json:"addrs,omitempty"`
	LastSeen time.Time    `json:"last_seen"`
	Day      string       `json:"day"`
	Month    string       `json:"month"`
	Today    Traffic      `json:"today"`
	MonthT   Traffic      `json:"month_t"`
	Total    Traffic      `json:"total"`
	RDNS     string       `json:"rdns,omitempty"`
	RDNSAt   time.Time    `json:"rdns_at,omitzero"`
}

// Store is the state file device totals survive restarts in.
type Store struct {
	dir  *state.Dir
	lock *os.File
}

// ErrStoreBusy is returned by OpenStore when another process holds the store (a second
// socksgate with the same state directory): the totals are then kept in memory only.
var ErrStoreBusy = errors.New("device store is in use by another process")

// OpenStore opens the store in the state directory dir and reads what it holds. A file that
// cannot be read as a store (damaged, cut short, not socksgate's) is moved aside to
// StoreFile.corrupt-UNIXTIME and the store starts empty: the error says so, and the caller logs
// it and goes on, since losing the totals must never stop a start. An earlier version's bbolt
// store is renamed to devices.db.old, with a warning, and ignored. Only a directory it cannot
// write, or a store another process holds, leaves it without a store (nil).
func OpenStore(dir string) (s *Store, recs map[MAC]stored, warn error) {
	d, err := state.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("device store lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("%w (%s)", ErrStoreBusy, filepath.Join(dir, LockFile))
		}
		return nil, nil, fmt.Errorf("device store lock: %w", err)
	}
	s = &Store{dir: d, lock: lock}
	var warns []error
	if old := filepath.Join(dir, oldStoreFile); fileExists(old) {
		if err := os.Rename(old, old+".old"); err != nil {
			warns = append(warns, fmt.Errorf("%s of an earlier version is ignored; renaming it: %w", old, err))
		} else {
			warns = append(warns, fmt.Errorf("%s of an earlier version cannot be read and is ignored (renamed to %s.old)", old, old))
		}
	}
	recs, err = s.load()
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			s.Close()
			return nil, nil, err
		}
		path := filepath.Join(dir, StoreFile)
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			s.Close()
			return nil, nil, errors.Join(append(warns, fmt.Errorf("%w; moving it aside: %w", err, rerr))...)
		}
		warns = append(warns, fmt.Errorf("%w: moved aside to %s, starting empty", err, aside))
	}
	return s, recs, errors.Join(warns...)
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// load reads every record; a missing file is an empty store.
func (s *Store) load() (map[MAC]stored, error) {
	recs := map[MAC]stored{}
	b, err := s.dir.ReadFile(StoreFile)
	if state.IsMissing(err) {
		return recs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device store: %w", err)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("device store %s: %w", StoreFile, err)
	}
	if f.V != storeVersion {
		return nil, fmt.Errorf("device store %s: version %d, want %d", StoreFile, f.V, storeVersion)
	}
	for mac, st := range f.Devices {
		if st.V == storeVersion {
			recs[mac] = st // one bad record is skipped, not the store
		}
	}
	return recs, nil
}

// save replaces the file with all.
func (s *Store) save(all map[MAC]stored) error {
	b, err := json.Marshal(storeFile{V: storeVersion, Devices: all})
	if err != nil {
		return err
	}
	if err := s.dir.WriteFile(StoreFile, b); err != nil {
		return fmt.Errorf("device store: %w", err)
	}
	return nil
}

// Close releases the lock.
func (s *Store) Close() error { return s.lock.Close() }

// Load puts the stored devices in the table (before it sees any neighbour), keeping the most
// recently seen ones when there are more than it holds.
func (t *Table) Load(recs map[MAC]stored) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for mac, st := range recs {
		r := t.recordLocked(mac, st.LastSeen)
		r.lastSeen, r.day, r.month = st.LastSeen, st.Day, st.Month
		r.today, r.monthT, r.total = st.Today, st.MonthT, st.Total
		r.rdns, r.rdnsAt, r.savedSeen = cleanName(st.RDNS), st.RDNSAt, st.LastSeen
		for _, a := range st.Addrs {
			a = a.Unmap()
			if trackable(a) && len(r.addrs) < maxAddrs {
				if _, taken := t.byAddr[a]; !taken {
					r.addrs = append(r.addrs, a)
					t.byAddr[a] = mac
				}
			}
		}
		r.dirty = false
	}
	clear(t.gone)
}

// Flush writes every device to s when one has changed or been forgotten since the last flush.
// A flush that fails leaves the changed ones dirty, to be written by the next.
func (t *Table) Flush(s *Store) error {
	if s == nil {
		return nil
	}
	t.mu.Lock()
	changed := len(t.gone) > 0
	for _, r := range t.devs {
		changed = changed || r.dirty
	}
	if !changed {
		t.mu.Unlock()
		return nil
	}
	all := make(map[MAC]stored, len(t.devs))
	var dirty []*record
	for mac, r := range t.devs {
		all[mac] = stored{
			V: storeVersion, Addrs: append([]netip.Addr(nil), r.addrs...), LastSeen: r.lastSeen,
			Day: r.day, Month: r.month, Today: r.today, MonthT: r.monthT, Total: r.total,
			RDNS: r.rdns, RDNSAt: r.rdnsAt,
		}
		if r.dirty {
			dirty = append(dirty, r)
			r.dirty, r.savedSeen = false, r.lastSeen
		}
	}
	var del []MAC
	for mac := range t.gone {
		del = append(del, mac)
	}
	clear(t.gone)
	t.mu.Unlock()
	if err := s.save(all); err != nil {
		t.mu.Lock()
		for _, r := range dirty {
			r.dirty = true
		}
		for _, m := range del {
			if t.devs[m] == nil {
				t.gone[m] = true
			}
		}
		t.mu.Unlock()
		return err
	}
	return nil
}
