package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StoreFile is the device store's name in the state directory.
const StoreFile = "devices.db"

var bucket = []byte("devices")

// storeVersion is written with every record; a record of another version is skipped.
const storeVersion = 1

// stored is one device as the store keeps it (JSON; the key is the MAC's six bytes).
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

// Store is the bbolt file device totals survive restarts in.
type Store struct {
	db   *bolt.DB
	path string
}

// ErrStoreBusy is returned by OpenStore when another process holds the store (a second
// socksgate with the same state directory): the totals are then kept in memory only.
var ErrStoreBusy = errors.New("device store is in use by another process")

// OpenStore opens (or creates) the store at path and reads what it holds. A file that cannot
// be read as a store (damaged, cut short, not bbolt) is moved aside to path.corrupt-UNIXTIME and
// a new one started: the error says so, and the caller logs it and goes on, since losing the
// totals must never stop a start. Only a file it cannot create, or one another process holds,
// leaves it without a store (nil).
func OpenStore(path string) (s *Store, recs map[MAC]stored, warn error) {
	s, recs, err := openAndLoad(path)
	if err == nil {
		return s, recs, nil
	}
	if errors.Is(err, ErrStoreBusy) || errors.Is(err, os.ErrPermission) {
		return nil, nil, err
	}
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	if rerr := os.Rename(path, aside); rerr != nil && !os.IsNotExist(rerr) {
		return nil, nil, fmt.Errorf("%w; moving it aside: %w", err, rerr)
	}
	s, recs, err2 := openAndLoad(path)
	if err2 != nil {
		return nil, nil, fmt.Errorf("%w; a new store: %w", err, err2)
	}
	return s, recs, fmt.Errorf("%w: moved aside to %s, starting empty", err, aside)
}

// openAndLoad opens path and reads every record. bbolt panics on some damaged pages: that is
// an error here like any other. (NoFreelistSync would write less, but its freelist is rebuilt by
// walking the pages on a goroutine of bbolt's own, where a damaged page's panic cannot be
// recovered: a damaged file would then stop the start.)
func openAndLoad(path string) (s *Store, recs map[MAC]stored, err error) {
	var db *bolt.DB
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("device store %s is damaged: %v", path, p)
		}
		if err != nil && db != nil {
			db.Close()
			s = nil
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, nil, fmt.Errorf("%w (%s)", ErrStoreBusy, path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("device store %s: %w", path, err)
	}
	recs = map[MAC]stored{}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var st stored
			if len(k) != 6 || json.Unmarshal(v, &st) != nil || st.V != storeVersion {
				return nil // one bad record is skipped, not the store
			}
			recs[MAC(k)] = st
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("device store %s: %w", path, err)
	}
	return &Store{db: db, path: path}, recs, nil
}

// save writes put and deletes del in one transaction.
func (s *Store) save(put map[MAC]stored, del []MAC) error {
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			var err error
			if b, err = tx.CreateBucket(bucket); err != nil {
				return err
			}
		}
		for _, m := range del {
			if err := b.Delete(m[:]); err != nil {
				return err
			}
		}
		for m, st := range put {
			v, err := json.Marshal(st)
			if err != nil {
				return err
			}
			if err := b.Put(m[:], v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("device store %s: %w", s.path, err)
	}
	return nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

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

// Flush writes the devices changed since the last flush to s, and deletes the forgotten ones.
func (t *Table) Flush(s *Store) error {
	if s == nil {
		return nil
	}
	t.mu.Lock()
	put := map[MAC]stored{}
	var dirty []*record
	for mac, r := range t.devs {
		if !r.dirty {
			continue
		}
		put[mac] = stored{
			V: storeVersion, Addrs: append([]netip.Addr(nil), r.addrs...), LastSeen: r.lastSeen,
			Day: r.day, Month: r.month, Today: r.today, MonthT: r.monthT, Total: r.total,
			RDNS: r.rdns, RDNSAt: r.rdnsAt,
		}
		dirty = append(dirty, r)
		r.dirty, r.savedSeen = false, r.lastSeen
	}
	var del []MAC
	for mac := range t.gone {
		del = append(del, mac)
	}
	clear(t.gone)
	t.mu.Unlock()
	if err := s.save(put, del); err != nil {
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
