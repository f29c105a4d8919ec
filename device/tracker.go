package device

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"
)

// flushEvery is how often changed totals are written to the store; a crash loses at most that
// much, a clean stop nothing.
const flushEvery = time.Minute

// leaseCheck is how often the lease files are looked at (their size and time) and read again
// when they changed.
const leaseCheck = 5 * time.Second

// Options configure a Tracker.
type Options struct {
	Interfaces []string // the LAN interfaces whose neighbours are devices
	Leases     []string // DHCP lease files (dnsmasq, odhcpd); missing ones are skipped
	Max        int      // devices kept; the least recently seen is forgotten beyond
	StateDir   string   // the store is StateDir/devices.json; "": totals in memory only
	Sample     time.Duration
	// Walk, called once every Sample, visits every live flow with its counters so far (the
	// sampler pass); nil: bytes are counted when flows end only.
	Walk func(visit func(key any, src netip.Addr, up, down uint64))
	// Resolver is the host:port asked for PTR records; "": no reverse DNS.
	Resolver string
	Dialer   *net.Dialer // for the PTR queries (socksgate's mark); nil: a plain one
	// Warn reports what went wrong in the background (never fatal): a store moved aside, the
	// neighbour table unreadable, a lease file unreadable.
	Warn func(msg string, err error)
	Now  func() time.Time // nil: time.Now
}

// Tracker runs a Table: the neighbour table watcher, the lease files, reverse DNS, the sampler
// and the store, each on one goroutine of its own.
type Tracker struct {
	*Table
	o     Options
	store *Store
	neigh *neighbours
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// Start opens the store (a damaged one is moved aside: Warn says so) and starts following the
// LAN. It never fails: what cannot be had (the store, the neighbour table) is reported to
// Warn and done without.
func Start(o Options) *Tracker {
	if o.Warn == nil {
		o.Warn = func(string, error) {}
	}
	if o.Max <= 0 {
		o.Max = 1024
	}
	t := &Tracker{Table: NewTable(o.Max, o.Now), o: o, done: make(chan struct{})}
	if o.StateDir != "" {
		if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
			o.Warn("devices: state directory unusable: totals will not survive a restart", err)
		} else {
			s, recs, err := OpenStore(o.StateDir)
			if err != nil {
				o.Warn("devices: store", err)
			}
			t.store = s
			t.Load(recs)
		}
	}
	t.neigh = &neighbours{t: t.Table, names: slices.Clone(o.Interfaces)}
	t.Table.mu.Lock()
	t.Table.onMiss = t.neigh.missed
	t.Table.mu.Unlock()
	t.readLeases(map[string]fileStamp{})
	t.wg.Go(func() { t.neigh.watch(t.done, o.Warn) })
	t.wg.Go(t.run)
	if o.Resolver != "" {
		t.wg.Go(t.reverse)
	}
	return t
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// readLeases reads the lease files again when any changed since stamps (updated).
func (t *Tracker) readLeases(stamps map[string]fileStamp) {
	changed := len(stamps) == 0
	now := map[string]fileStamp{}
	for _, f := range t.o.Leases {
		if fi, err := os.Stat(f); err == nil {
			now[f] = fileStamp{fi.Size(), fi.ModTime()}
		}
	}
	if len(now) != len(stamps) {
		changed = true
	}
	for f, s := range now {
		if stamps[f] != s {
			changed = true
		}
	}
	if !changed {
		return
	}
	clear(stamps)
	var all []Lease
	for _, f := range t.o.Leases {
		s, ok := now[f]
		if !ok {
			continue
		}
		stamps[f] = s
		fh, err := os.Open(f)
		if err != nil {
			t.o.Warn("devices: lease file "+f, err)
			continue
		}
		ls, err := ParseLeases(fh)
		fh.Close()
		if err != nil {
			t.o.Warn("devices: lease file "+f, err)
		}
		all = append(all, ls...)
	}
	t.SetLeases(all)
}

// run is the sampler, the lease files' check and the store's flush.
func (t *Tracker) run() {
	sample := t.o.Sample
	if sample <= 0 {
		sample = 15 * time.Second
	}
	st := time.NewTicker(sample)
	lt := time.NewTicker(leaseCheck)
	ft := time.NewTicker(flushEvery)
	defer st.Stop()
	defer lt.Stop()
	defer ft.Stop()
	stamps := map[string]fileStamp{}
	t.readLeases(stamps)
	for {
		select {
		case <-t.done:
			return
		case <-st.C:
			t.SamplePass()
		case <-lt.C:
			t.readLeases(stamps)
		case <-ft.C:
			if err := t.Flush(t.store); err != nil {
				t.o.Warn("devices: saving totals", err)
			}
		}
	}
}

// SamplePass runs one sampler pass over the live flows now.
func (t *Tracker) SamplePass() {
	if t.o.Walk == nil {
		return
	}
	t.BeginPass()
	t.o.Walk(t.Sample)
	t.EndPass()
}

// reverse names devices without a DHCP name by reverse DNS, one at a time.
func (t *Tracker) reverse() {
	tick := time.NewTicker(reverseEvery)
	defer tick.Stop()
	d := t.o.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-t.done
		cancel()
	}()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
		}
		mac, a, ok := t.nextReverse(t.now())
		if !ok {
			continue
		}
		name, err := reverseLookup(ctx, d, t.o.Resolver, a)
		if err != nil {
			continue // asked again after reverseRetry
		}
		t.setReverse(mac, name)
	}
}

// Close stops the tracker and writes the totals to the store.
func (t *Tracker) Close() error {
	var err error
	t.once.Do(func() {
		close(t.done)
		t.wg.Wait()
		if t.store != nil {
			err = t.Flush(t.store)
			if cerr := t.store.Close(); err == nil {
				err = cerr
			}
		}
	})
	return err
}
