package device

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/state"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

var (
	macA = mustMAC("aa:bb:cc:dd:ee:01")
	macB = mustMAC("aa:bb:cc:dd:ee:02")
	v4   = netip.MustParseAddr("192.168.1.20")
)

func newTestTable(max int) (*Table, *clock) {
	c := &clock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.Local)}
	return NewTable(max, c.now), c
}

// IPv6 privacy addresses (a new one every day) fold into their MAC's device, which keeps the
// most recent few; bytes from any of them are the device's.
func TestPrivacyAddressesFoldIntoTheDevice(t *testing.T) {
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	tb.Observe(netip.MustParseAddr("fe80::1"), macA) // link-local: not tracked
	for i := range maxAddrs + 2 {
		tb.Observe(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)), macA)
	}
	ds := tb.Devices()
	if len(ds) != 1 {
		t.Fatalf("devices = %+v, want one", ds)
	}
	d := ds[0]
	if len(d.Addresses) != maxAddrs {
		t.Errorf("addresses = %v, want the %d most recent", d.Addresses, maxAddrs)
	}
	if d.Addresses[0].Is4() {
		// v4 was the oldest: dropped with the oldest privacy addresses.
		t.Errorf("addresses = %v: the oldest should have been dropped", d.Addresses)
	}
	if d.Addresses[0] != netip.MustParseAddr("2001:db8::a") {
		t.Errorf("first address = %v, want the most recent", d.Addresses[0])
	}
	tb.End("f1", netip.MustParseAddr("2001:db8::a"), 100, 1000)
	tb.End("f2", netip.MustParseAddr("2001:db8::5"), 1, 2)
	tb.End("f3", netip.MustParseAddr("2001:db8::1"), 5, 5) // dropped address: nobody's
	if got := tb.Devices()[0].Total; got != (Traffic{101, 1002}) {
		t.Errorf("total = %+v, want {101 1002}", got)
	}
	if mac, _, ok := tb.Lookup(netip.MustParseAddr("2001:db8::4")); !ok || mac != macA {
		t.Errorf("Lookup(privacy address) = %v %v", mac, ok)
	}
}

func TestAddressMovesToAnotherDevice(t *testing.T) {
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	tb.Observe(v4, macB)
	if mac, _, _ := tb.Lookup(v4); mac != macB {
		t.Errorf("Lookup = %v, want %v", mac, macB)
	}
	for _, d := range tb.Devices() {
		if d.MAC == macA && len(d.Addresses) != 0 {
			t.Errorf("old device keeps %v", d.Addresses)
		}
	}
}

func TestDayAndMonthRollOverInLocalTime(t *testing.T) {
	tb, c := newTestTable(10)
	tb.Observe(v4, macA)
	tb.End(1, v4, 10, 20)
	c.set(time.Date(2026, 12, 2, 23, 59, 0, 0, time.Local))
	tb.End(2, v4, 1, 1)
	if d := tb.Devices()[0]; d.Today != (Traffic{11, 21}) || d.Month != (Traffic{11, 21}) {
		t.Fatalf("before midnight: %+v", d)
	}
	c.set(time.Date(2026, 12, 3, 0, 1, 0, 0, time.Local))
	if d := tb.Devices()[0]; d.Today != (Traffic{}) || d.Month != (Traffic{11, 21}) || d.Total != (Traffic{11, 21}) {
		t.Fatalf("after midnight: %+v, want today empty, month and total kept", d)
	}
	tb.End(3, v4, 5, 5)
	c.set(time.Date(2027, 1, 1, 0, 0, 1, 0, time.Local))
	tb.End(4, v4, 1, 2)
	if d := tb.Devices()[0]; d.Today != (Traffic{1, 2}) || d.Month != (Traffic{1, 2}) || d.Total != (Traffic{17, 28}) {
		t.Fatalf("new month: %+v", d)
	}
}

// The sampler credits what a live flow moved since its last look; its end credits the rest;
// the bytes are counted once whatever the order.
func TestMeterCountsEveryByteOnce(t *testing.T) {
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	total := func() Traffic { return tb.Devices()[0].Today }
	tb.BeginPass()
	tb.Sample("f", v4, 100, 1000)
	tb.EndPass()
	if got := total(); got != (Traffic{100, 1000}) {
		t.Fatalf("after one pass: %+v", got)
	}
	tb.BeginPass()
	tb.Sample("f", v4, 150, 5000)
	tb.EndPass()
	if got := total(); got != (Traffic{150, 5000}) {
		t.Fatalf("after two passes: %+v", got)
	}
	tb.End("f", v4, 160, 5100)
	if got := total(); got != (Traffic{160, 5100}) {
		t.Fatalf("after the end: %+v", got)
	}
	if n := tb.Metered(); n != 0 {
		t.Errorf("%d readings kept after the flow ended", n)
	}

	// A flow ending during a pass that read its counters just before.
	tb.BeginPass()
	tb.End("g", v4, 40, 40)    // ends...
	tb.Sample("g", v4, 30, 30) // ...and the pass credits its older reading after
	tb.EndPass()
	if got := total(); got != (Traffic{200, 5140}) {
		t.Fatalf("end during a pass: %+v, want {200 5140}", got)
	}
	tb.BeginPass()
	tb.EndPass()
	if n := tb.Metered(); n != 0 {
		t.Errorf("%d readings (tombstones) kept two passes on", n)
	}
}

func TestLeastRecentlySeenDeviceIsForgotten(t *testing.T) {
	tb, c := newTestTable(2)
	for i, a := range []string{"192.168.1.1", "192.168.1.2", "192.168.1.3"} {
		c.set(c.now().Add(time.Minute))
		m := macA
		m[5] = byte(i + 10)
		tb.Observe(netip.MustParseAddr(a), m)
		if i == 1 {
			c.set(c.now().Add(time.Minute))
			tb.Observe(netip.MustParseAddr("192.168.1.1"), MAC{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 10}) // seen again
		}
	}
	ds := tb.Devices()
	if len(ds) != 2 {
		t.Fatalf("devices = %d, want 2", len(ds))
	}
	for _, d := range ds {
		if d.MAC[5] == 11 {
			t.Errorf("the least recently seen device is kept: %+v", ds)
		}
	}
	if _, _, ok := tb.Lookup(netip.MustParseAddr("192.168.1.2")); ok {
		t.Error("a forgotten device's address still resolves")
	}
}

func TestNamesFromLeasesThenReverseDNS(t *testing.T) {
	tb, _ := newTestTable(10)
	v6 := netip.MustParseAddr("fd00::20")
	tb.Observe(v4, macA)
	tb.Observe(v6, macB)
	tb.setReverse(macA, "a.rdns.lan")
	if d := find(tb, macA); d.Name != "a.rdns.lan" || d.NameFrom != NameDNS {
		t.Errorf("rdns only: %q %q", d.Name, d.NameFrom)
	}
	tb.SetLeases([]Lease{{MAC: macA, Name: "laptop"}, {Addr: v6, Name: "phone"}})
	if d := find(tb, macA); d.Name != "laptop" || d.NameFrom != NameDHCP {
		t.Errorf("lease by MAC: %q %q", d.Name, d.NameFrom)
	}
	if d := find(tb, macB); d.Name != "phone" || d.NameFrom != NameDHCP {
		t.Errorf("lease by address: %q %q", d.Name, d.NameFrom)
	}
	if _, name, _ := tb.Lookup(v6); name != "phone" {
		t.Errorf("Lookup name = %q", name)
	}
}

func find(tb *Table, m MAC) Device {
	for _, d := range tb.Devices() {
		if d.MAC == m {
			return d
		}
	}
	return Device{}
}

func TestMetricBytesBounded(t *testing.T) {
	tb, _ := newTestTable(100)
	for i := range 10 {
		m := macA
		m[5] = byte(i)
		a := netip.AddrFrom4([4]byte{192, 168, 1, byte(10 + i)})
		tb.Observe(a, m)
		tb.End(i, a, uint64(i+1)*100, 0)
	}
	tb.SetLeases([]Lease{{MAC: MAC{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 9}, Name: "big"}})
	got := tb.MetricBytes(3)
	if len(got) != 4 {
		t.Fatalf("series = %+v, want 3 and other", got)
	}
	var sum uint64
	names := ""
	for _, s := range got {
		sum += s.Total.Up
		names += s.Device + " "
	}
	if sum != 5500 || !strings.Contains(names, "big ") || !strings.Contains(names, "other ") {
		t.Errorf("series = %+v", got)
	}
	// Membership is kept: a device that now carries more does not push one out.
	tb.End("x", netip.AddrFrom4([4]byte{192, 168, 1, 10}), 100000, 0)
	for _, s := range tb.MetricBytes(3) {
		if s.Device == Other && s.Total.Up != 100000+100+200+300+400+500+600+700 {
			t.Errorf("other = %d", s.Total.Up)
		}
	}
}

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, recs, err := OpenStore(dir)
	if err != nil || len(recs) != 0 {
		t.Fatalf("new store: %v %v", recs, err)
	}
	tb, c := newTestTable(10)
	if err := tb.Flush(s); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, StoreFile)); !os.IsNotExist(err) {
		t.Errorf("a flush with nothing changed wrote the file: %v", err)
	}
	tb.Observe(v4, macA)
	tb.End(1, v4, 7, 70)
	tb.setReverse(macA, "host.lan")
	if err := tb.Flush(s); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, recs, err = OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tb2 := NewTable(10, c.now)
	tb2.Load(recs)
	d := find(tb2, macA)
	if d.Total != (Traffic{7, 70}) || d.Today != (Traffic{7, 70}) || d.Name != "host.lan" || len(d.Addresses) != 1 {
		t.Fatalf("reloaded: %+v", d)
	}
	if !d.LastSeen.Equal(c.now()) {
		t.Errorf("last seen %v, want %v", d.LastSeen, c.now())
	}
	// A forgotten device is deleted from the store.
	tb2.mu.Lock()
	tb2.dropLocked(tb2.devs[macA])
	tb2.mu.Unlock()
	if err := tb2.Flush(s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, recs, err = OpenStore(dir)
	if err != nil || len(recs) != 0 {
		t.Fatalf("after delete: %v %v", recs, err)
	}
	s.Close()
}

// A flush that cannot write leaves the changes dirty for the next one.
func TestFailedFlushStaysDirty(t *testing.T) {
	dir := t.TempDir()
	s, _, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	tb.End(1, v4, 7, 70)
	// A directory in the file's place makes the rename fail.
	if err := os.Mkdir(filepath.Join(dir, StoreFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tb.Flush(s); err == nil {
		t.Fatal("flush over a directory succeeded")
	}
	os.Remove(filepath.Join(dir, StoreFile))
	if err := tb.Flush(s); err != nil {
		t.Fatal(err)
	}
	if recs, err := s.load(); err != nil || len(recs) != 1 {
		t.Fatalf("after a failed flush and a good one: %v %v", recs, err)
	}
}

// A damaged store never stops a start: it is moved aside and the store starts empty.
func TestCorruptStoreIsMovedAside(t *testing.T) {
	valid := func(t *testing.T, dir string) []byte {
		s, _, _ := OpenStore(dir)
		tb, _ := newTestTable(10)
		tb.Observe(v4, macA)
		tb.End(1, v4, 1, 1)
		tb.Flush(s)
		s.Close()
		b, err := os.ReadFile(filepath.Join(dir, StoreFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	withHeader := func(t *testing.T, dir, data string) []byte {
		d, _ := state.Open(dir)
		if err := d.WriteFile(StoreFile, []byte(data)); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, StoreFile))
		return b
	}
	for name, damage := range map[string]func(t *testing.T, dir string) []byte{
		"garbage": func(*testing.T, string) []byte { return []byte(strings.Repeat("not a store ", 1000)) },
		"cut short": func(t *testing.T, dir string) []byte {
			b := valid(t, dir)
			return b[:len(b)-10]
		},
		"flipped byte": func(t *testing.T, dir string) []byte {
			b := valid(t, dir)
			b[len(b)-5] ^= 0x5a
			return b
		},
		"not json":      func(t *testing.T, dir string) []byte { return withHeader(t, dir, "{\"v\":1,") },
		"other version": func(t *testing.T, dir string) []byte { return withHeader(t, dir, `{"v":2,"devices":{}}`) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			data := damage(t, dir)
			path := filepath.Join(dir, StoreFile)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, recs, err := OpenStore(dir)
			if s == nil {
				t.Fatalf("no store after a damaged one: %v", err)
			}
			defer s.Close()
			if err == nil || !strings.Contains(err.Error(), "moved aside") {
				t.Errorf("warning = %v, want it to say the file was moved aside", err)
			}
			if len(recs) != 0 {
				t.Errorf("records from a damaged store: %v", recs)
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Errorf("moved aside: %v", aside)
			}
		})
	}
}

// A store another process holds is not moved aside: this run keeps totals in memory. (flock
// locks of two open file descriptions conflict within one process too.)
func TestBusyStoreIsLeftAlone(t *testing.T) {
	dir := t.TempDir()
	s, _, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	tb.End(1, v4, 1, 1)
	tb.Flush(s)
	s2, _, err := OpenStore(dir)
	if s2 != nil || !errors.Is(err, ErrStoreBusy) {
		t.Fatalf("second open = %v, %v; want busy", s2, err)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, StoreFile+".corrupt-*")); len(aside) != 0 {
		t.Errorf("a busy store was moved aside: %v", aside)
	}
	s.Close()
	s2, recs, err := OpenStore(dir)
	if err != nil || len(recs) != 1 {
		t.Fatalf("open after the first closed: %v, %v", recs, err)
	}
	s2.Close()
}

// An earlier version's bbolt store is renamed aside once, with a warning, and ignored.
func TestOldStoreIsRenamed(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "devices.db")
	if err := os.WriteFile(old, []byte("bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, recs, err := OpenStore(dir)
	if s == nil || len(recs) != 0 || err == nil || !strings.Contains(err.Error(), "devices.db") {
		t.Fatalf("open with an old store = %v, %v, %v", s, recs, err)
	}
	s.Close()
	if _, err := os.Stat(old + ".old"); err != nil {
		t.Errorf("old store not renamed: %v", err)
	}
	s, _, err = OpenStore(dir)
	if err != nil {
		t.Errorf("second start warns again: %v", err)
	}
	s.Close()
}

// TestStoreSize logs the store's size with a full table (the limit, 1024 devices, each with
// a few addresses), written once and then updated.
func TestStoreSize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StoreFile)
	s, _, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tb, _ := newTestTable(1024)
	for i := range 1024 {
		m := MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}
		a4 := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		tb.Observe(a4, m)
		for j := range 3 {
			tb.Observe(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(j), 14: byte(i), 13: byte(i >> 8)}), m)
		}
		tb.End(i, a4, 1e6, 1e9)
	}
	if err := tb.Flush(s); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	first := fi.Size()
	for i := range 1024 {
		tb.End(i+5000, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1, 1)
	}
	start := time.Now()
	if err := tb.Flush(s); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	fi, _ = os.Stat(path)
	t.Logf("store with 1024 devices: %d bytes; after a second flush of all: %d bytes (flush took %v)", first, fi.Size(), took)
	if fi.Size() > 4<<20 {
		t.Errorf("store of 1024 devices is %d bytes", fi.Size())
	}
}

// Flows ending while sampler passes run are counted exactly once: each flow's counters grow,
// the sampler reads them at random moments (a reading may be older than the flow's end, as a
// pass reads the kernel before it credits), and the sum is the flows' final totals.
func TestMeterExactlyOnceUnderConcurrentEnds(t *testing.T) {
	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	const flows = 200
	type flow struct {
		mu   sync.Mutex
		n    uint64
		done bool
	}
	fs := make([]*flow, flows)
	for i := range fs {
		fs[i] = &flow{}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the sampler
		for {
			select {
			case <-stop:
				return
			default:
			}
			tb.BeginPass()
			for _, f := range fs {
				f.mu.Lock()
				n, done := f.n, f.done
				f.mu.Unlock()
				if !done { // as the gateway's table copy: flows not yet out of it
					tb.Sample(f, v4, n, 2*n)
				}
			}
			tb.EndPass()
		}
	})
	var want uint64
	for i, f := range fs {
		for range 50 {
			f.mu.Lock()
			f.n += uint64(i + 1)
			f.mu.Unlock()
		}
		f.mu.Lock()
		f.done = true // out of the live table, then its end
		n := f.n
		f.mu.Unlock()
		tb.End(f, v4, n, 2*n)
		want += n
	}
	close(stop)
	wg.Wait()
	tb.BeginPass()
	tb.EndPass()
	tb.BeginPass()
	tb.EndPass()
	if got := tb.Devices()[0].Total; got.Up != want || got.Down != 2*want {
		t.Errorf("total %+v, want {%d %d}", got, want, 2*want)
	}
	if n := tb.Metered(); n != 0 {
		t.Errorf("%d readings left", n)
	}
}
