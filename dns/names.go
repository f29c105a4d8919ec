package dns

import (
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Names is the real-IP map: for every A/AAAA answer handed to a LAN client it records (client,
// address) → the name the client asked for (not the end of a CNAME chain), until the record's
// TTL plus a grace has passed. A flow from that client to that address then carries the name.
// Bounded: past its capacity the least recently recorded mapping goes first. Lookups take a
// read lock only. Safe for concurrent use; a nil *Names records nothing.
type Names struct {
	grace time.Duration
	cap   int32
	base  time.Time
	now   func() time.Time

	mu         sync.RWMutex
	index      map[nameKey]int32
	slots      []nameSlot // a slab; prev/next link them most recently recorded first
	head, tail int32      // -1 when empty
	free       int32      // a free list through next, -1 when empty
}

// nameKey is (client, address), both as 16 bytes (IPv4 mapped), so that the map holds no
// pointers for the collector to scan.
type nameKey struct{ client, dst [16]byte }

type nameSlot struct {
	key        nameKey
	name       string
	expire     uint32 // seconds since base
	prev, next int32
}

// Defaults for NewNames.
const (
	DefaultNamesEntries = 100000
	DefaultNamesGrace   = 5 * time.Minute
)

// NewNames returns a map holding at most maxEntries mappings (DefaultNamesEntries when <= 0),
// each kept for its TTL plus grace (DefaultNamesGrace when < 0).
func NewNames(maxEntries int, grace time.Duration) *Names {
	if maxEntries <= 0 {
		maxEntries = DefaultNamesEntries
	}
	if maxEntries > 1<<30 {
		maxEntries = 1 << 30
	}
	if grace < 0 {
		grace = DefaultNamesGrace
	}
	n := &Names{grace: grace, cap: int32(maxEntries), now: time.Now, head: -1, tail: -1, free: -1,
		index: map[nameKey]int32{}}
	n.base = n.now()
	return n
}

func keyOf(client, dst netip.Addr) nameKey {
	return nameKey{client.Unmap().As16(), dst.Unmap().As16()}
}

func (n *Names) sec(t time.Time) uint32 {
	d := t.Sub(n.base)
	if d < 0 {
		return 0
	}
	return uint32(d / time.Second)
}

// Record records every A and AAAA record of answer as answering name for client.
func (n *Names) Record(client netip.Addr, name string, answer []mdns.RR) {
	if n == nil {
		return
	}
	for _, rr := range answer {
		var ip netip.Addr
		switch a := rr.(type) {
		case *mdns.A:
			ip, _ = netip.AddrFromSlice(a.A.To4())
		case *mdns.AAAA:
			ip, _ = netip.AddrFromSlice(a.AAAA.To16())
		default:
			continue
		}
		if ip.IsValid() && !ip.IsUnspecified() {
			n.Add(client, ip, name, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
}

// Add records that dst answers name for client for ttl (plus the grace).
func (n *Names) Add(client, dst netip.Addr, name string, ttl time.Duration) {
	if n == nil {
		return
	}
	k := keyOf(client, dst)
	exp := n.sec(n.now().Add(ttl + n.grace + time.Second - 1)) // rounded up
	n.mu.Lock()
	defer n.mu.Unlock()
	if i, ok := n.index[k]; ok {
		s := &n.slots[i]
		s.name, s.expire = name, exp
		n.unlink(i)
		n.pushFront(i)
		return
	}
	var i int32
	switch {
	case n.free >= 0:
		i = n.free
		n.free = n.slots[i].next
	case int32(len(n.slots)) < n.cap:
		n.slots = append(n.slots, nameSlot{})
		i = int32(len(n.slots) - 1)
	default: // full: the least recently recorded goes
		i = n.tail
		n.unlink(i)
		delete(n.index, n.slots[i].key)
	}
	n.slots[i] = nameSlot{key: k, name: name, expire: exp}
	n.index[k] = i
	n.pushFront(i)
}

func (n *Names) unlink(i int32) {
	s := &n.slots[i]
	if s.prev >= 0 {
		n.slots[s.prev].next = s.next
	} else {
		n.head = s.next
	}
	if s.next >= 0 {
		n.slots[s.next].prev = s.prev
	} else {
		n.tail = s.prev
	}
}

func (n *Names) pushFront(i int32) {
	s := &n.slots[i]
	s.prev, s.next = -1, n.head
	if n.head >= 0 {
		n.slots[n.head].prev = i
	}
	n.head = i
	if n.tail < 0 {
		n.tail = i
	}
}

// Lookup returns the name client asked for when it was answered dst, if that has not expired.
func (n *Names) Lookup(client, dst netip.Addr) (string, bool) {
	if n == nil {
		return "", false
	}
	k := keyOf(client, dst)
	now := n.sec(n.now())
	n.mu.RLock()
	defer n.mu.RUnlock()
	i, ok := n.index[k]
	if !ok || n.slots[i].expire <= now {
		return "", false
	}
	return n.slots[i].name, true
}

// Len is the number of mappings held, expired ones not yet swept included.
func (n *Names) Len() int {
	if n == nil {
		return 0
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.index)
}

// Sweep removes the expired mappings; the gateway calls it now and then (every minute).
// It returns how many it removed.
func (n *Names) Sweep() int {
	if n == nil {
		return 0
	}
	now := n.sec(n.now())
	n.mu.Lock()
	defer n.mu.Unlock()
	removed := 0
	for i := n.head; i >= 0; {
		next := n.slots[i].next
		if n.slots[i].expire <= now {
			n.unlink(i)
			delete(n.index, n.slots[i].key)
			n.slots[i] = nameSlot{next: n.free}
			n.free = i
			removed++
		}
		i = next
	}
	return removed
}
