package device

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/socksgate/socksgate/configs"
)

// MAC is a device's identity.
type MAC = configs.MAC

// Traffic is bytes each way: up is from the device, down to it.
type Traffic struct{ Up, Down uint64 }

func (t *Traffic) add(up, down uint64) { t.Up += up; t.Down += down }

// Where a device's name came from.
const (
	NameDHCP = "dhcp"
	NameDNS  = "dns"
)

// Device is one device as the table reports it.
type Device struct {
	MAC       MAC
	Name      string
	NameFrom  string       // NameDHCP, NameDNS, or "" with no name
	Addresses []netip.Addr // IPv4 first, then IPv6, each family most recent first
	LastSeen  time.Time
	Today     Traffic // since local midnight
	Month     Traffic // since the first of the month, local time
	Total     Traffic // since the device was first seen (or the store was lost)
}

// maxAddrs bounds the addresses kept per device: IPv6 privacy addresses change daily; the
// oldest is dropped.
const maxAddrs = 8

// record is one device in the table.
type record struct {
	mac      MAC
	addrs    []netip.Addr // oldest first
	lastSeen time.Time
	day      string // the local day today counts ("2006-01-02")
	month    string // the local month month counts ("2006-01")
	today    Traffic
	monthT   Traffic
	total    Traffic
	rdns     string    // the reverse DNS name, "" when none
	rdnsAt   time.Time // when reverse DNS was last asked (answered or not)
	dirty    bool      // changed since the last flush
	// savedSeen is the lastSeen last written: a device merely seen again is written once
	// every seenSaveEvery, not at every flush.
	savedSeen time.Time
}

const seenSaveEvery = 10 * time.Minute

// Table is the devices and their totals. Every method is safe for concurrent use.
type Table struct {
	max int
	now func() time.Time

	mu        sync.Mutex
	devs      map[MAC]*record
	byAddr    map[netip.Addr]MAC
	leaseMAC  map[MAC]string
	leaseAddr map[netip.Addr]string
	gone      map[MAC]bool // forgotten since the last flush: to delete from the store
	meter     meter
	members   map[MAC]bool // devices with a metrics series of their own
	onMiss    func()       // asked to refresh the neighbour table when Resolve misses
}

// NewTable returns an empty table of at most max devices; now is the clock (nil: time.Now).
func NewTable(max int, now func() time.Time) *Table {
	if now == nil {
		now = time.Now
	}
	return &Table{
		max: max, now: now,
		devs: map[MAC]*record{}, byAddr: map[netip.Addr]MAC{}, gone: map[MAC]bool{},
		members: map[MAC]bool{},
	}
}

// trackable reports whether an address can be a device's: not loopback, link-local,
// multicast or unspecified.
func trackable(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() &&
		!a.IsUnspecified() && !a.IsLinkLocalMulticast()
}

// Observe records that the neighbour table maps a to mac: a is the device's (it moves from any
// other device that had it), and the device was seen now.
func (t *Table) Observe(a netip.Addr, mac MAC) { t.observe(a, mac, true) }

// observe is Observe; seen says the kernel has just confirmed the device (a reachable entry),
// as opposed to an entry it keeps from before (stale), which maps the address but is no sign
// of the device being there.
func (t *Table) observe(a netip.Addr, mac MAC, seen bool) {
	a = a.Unmap()
	if !trackable(a) || mac.IsZero() {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.recordLocked(mac, now)
	if seen {
		r.lastSeen = now
		if now.Sub(r.savedSeen) > seenSaveEvery {
			r.dirty = true
		}
	}
	if old, ok := t.byAddr[a]; ok && old == mac {
		// Known: make it the most recent.
		if i := slices.Index(r.addrs, a); i >= 0 && i != len(r.addrs)-1 {
			r.addrs = append(slices.Delete(r.addrs, i, i+1), a)
		}
		return
	} else if ok {
		if o := t.devs[old]; o != nil {
			o.addrs = slices.DeleteFunc(o.addrs, func(x netip.Addr) bool { return x == a })
		}
	}
	t.byAddr[a] = mac
	r.addrs = append(r.addrs, a)
	if len(r.addrs) > maxAddrs {
		delete(t.byAddr, r.addrs[0])
		r.addrs = slices.Delete(r.addrs, 0, 1)
	}
	r.dirty = true
}

// Forget drops a from the neighbour table's view (the kernel deleted or failed the entry); the
// device keeps its totals.
func (t *Table) Forget(a netip.Addr) {
	a = a.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	mac, ok := t.byAddr[a]
	if !ok {
		return
	}
	delete(t.byAddr, a)
	if r := t.devs[mac]; r != nil {
		r.addrs = slices.DeleteFunc(r.addrs, func(x netip.Addr) bool { return x == a })
	}
}

// recordLocked returns mac's record, creating it (and forgetting the least recently seen
// device beyond the bound); t.mu is held.
func (t *Table) recordLocked(mac MAC, now time.Time) *record {
	if r := t.devs[mac]; r != nil {
		return r
	}
	for len(t.devs) >= t.max && t.max > 0 {
		var oldest *record
		for _, r := range t.devs {
			if oldest == nil || r.lastSeen.Before(oldest.lastSeen) {
				oldest = r
			}
		}
		t.dropLocked(oldest)
	}
	r := &record{mac: mac, lastSeen: now, day: dayKey(now), month: monthKey(now), dirty: true}
	t.devs[mac] = r
	delete(t.gone, mac)
	return r
}

func (t *Table) dropLocked(r *record) {
	for _, a := range r.addrs {
		if t.byAddr[a] == r.mac {
			delete(t.byAddr, a)
		}
	}
	delete(t.devs, r.mac)
	delete(t.members, r.mac)
	t.gone[r.mac] = true
}

func dayKey(t time.Time) string   { return t.Format("2006-01-02") }
func monthKey(t time.Time) string { return t.Format("2006-01") }

// rollLocked starts a new day or month in r when now is in another one than r counts.
func (r *record) rollLocked(now time.Time) {
	if d := dayKey(now); d != r.day {
		r.day, r.today, r.dirty = d, Traffic{}, true
	}
	if m := monthKey(now); m != r.month {
		r.month, r.monthT, r.dirty = m, Traffic{}, true
	}
}

// SetLeases replaces the names the DHCP leases give.
func (t *Table) SetLeases(ls []Lease) {
	byMAC, byAddr := map[MAC]string{}, map[netip.Addr]string{}
	for _, l := range ls {
		if !l.MAC.IsZero() {
			byMAC[l.MAC] = l.Name
		}
		if l.Addr.IsValid() {
			byAddr[l.Addr] = l.Name
		}
	}
	t.mu.Lock()
	t.leaseMAC, t.leaseAddr = byMAC, byAddr
	t.mu.Unlock()
}

// nameLocked is r's name and where it came from: a lease for its MAC, then a lease for one of
// its addresses (the most recent first), then reverse DNS.
func (t *Table) nameLocked(r *record) (string, string) {
	if n := t.leaseMAC[r.mac]; n != "" {
		return n, NameDHCP
	}
	for i := len(r.addrs) - 1; i >= 0; i-- {
		if n := t.leaseAddr[r.addrs[i]]; n != "" {
			return n, NameDHCP
		}
	}
	if r.rdns != "" {
		return r.rdns, NameDNS
	}
	return "", ""
}

// Resolve is the device behind a source address: its MAC and name. A miss asks the neighbour
// table to be read again (at most once a second, see Tracker) and looks once more, so that a
// flow from a device that appeared a moment ago is matched by its src_mac rule.
func (t *Table) Resolve(a netip.Addr) (MAC, string, bool) {
	mac, name, ok := t.Lookup(a)
	if ok {
		return mac, name, ok
	}
	t.mu.Lock()
	miss := t.onMiss
	t.mu.Unlock()
	if miss == nil || !trackable(a.Unmap()) {
		return mac, name, ok
	}
	miss()
	return t.Lookup(a)
}

// Lookup is Resolve without asking the kernel again.
func (t *Table) Lookup(a netip.Addr) (MAC, string, bool) {
	a = a.Unmap().WithZone("")
	t.mu.Lock()
	defer t.mu.Unlock()
	mac, ok := t.byAddr[a]
	if !ok {
		return MAC{}, "", false
	}
	name := ""
	if r := t.devs[mac]; r != nil {
		name, _ = t.nameLocked(r)
	}
	return mac, name, true
}

// Devices lists the devices, most recently seen first.
func (t *Table) Devices() []Device {
	now := t.now()
	t.mu.Lock()
	out := make([]Device, 0, len(t.devs))
	for _, r := range t.devs {
		r.rollLocked(now)
		d := Device{
			MAC: r.mac, LastSeen: r.lastSeen, Today: r.today, Month: r.monthT, Total: r.total,
			Addresses: make([]netip.Addr, 0, len(r.addrs)),
		}
		d.Name, d.NameFrom = t.nameLocked(r)
		for _, v4 := range []bool{true, false} { // IPv4 first, each family most recent first
			for i := len(r.addrs) - 1; i >= 0; i-- {
				if r.addrs[i].Is4() == v4 {
					d.Addresses = append(d.Addresses, r.addrs[i])
				}
			}
		}
		out = append(out, d)
	}
	t.mu.Unlock()
	// sort.Slice, not slices.SortFunc: a generic sort per element type costs ~10 KB of binary.
	sort.Slice(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		return cmp.Or(b.LastSeen.Compare(a.LastSeen), bytes.Compare(a.MAC[:], b.MAC[:])) < 0
	})
	return out
}

// DeviceBytes is one series of socksgate_device_bytes_total.
type DeviceBytes struct {
	Device string // the name (else the MAC), or "other"
	Total  Traffic
}

// Other is the device label of the devices without a series of their own.
const Other = "other"

// MetricBytes is the all-time totals as at most top series and one "other". A device keeps its
// own series for as long as it is in the table, so "other" only grows; free places go to the
// devices with the most bytes.
func (t *Table) MetricBytes(top int) []DeviceBytes {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.members) < top {
		var cand []*record
		for mac, r := range t.devs {
			if !t.members[mac] && r.total.Up+r.total.Down > 0 {
				cand = append(cand, r)
			}
		}
		slices.SortFunc(cand, func(a, b *record) int {
			return cmp.Compare(b.total.Up+b.total.Down, a.total.Up+a.total.Down)
		})
		for _, r := range cand[:min(len(cand), top-len(t.members))] {
			t.members[r.mac] = true
		}
	}
	var out []DeviceBytes
	var other Traffic
	seen := map[string]int{}
	for mac, r := range t.devs {
		if !t.members[mac] {
			other.add(r.total.Up, r.total.Down)
			continue
		}
		label, _ := t.nameLocked(r)
		if label == "" || label == Other {
			label = mac.String()
		}
		if i, dup := seen[label]; dup { // two devices of one name: one series
			out[i].Total.add(r.total.Up, r.total.Down)
			continue
		}
		seen[label] = len(out)
		out = append(out, DeviceBytes{Device: label, Total: r.total})
	}
	if other != (Traffic{}) || len(t.devs) > len(t.members) {
		out = append(out, DeviceBytes{Device: Other, Total: other})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// creditLocked adds bytes to the device behind src; bytes from an address that is no LAN
// device's (the router itself, a host beyond a router) are not a device's.
func (t *Table) creditLocked(src netip.Addr, up, down uint64, now time.Time) {
	if up == 0 && down == 0 {
		return
	}
	mac, ok := t.byAddr[src.Unmap().WithZone("")]
	if !ok {
		return
	}
	r := t.devs[mac]
	if r == nil {
		return
	}
	r.rollLocked(now)
	r.today.add(up, down)
	r.monthT.add(up, down)
	r.total.add(up, down)
	r.lastSeen = now
	r.dirty = true
}
