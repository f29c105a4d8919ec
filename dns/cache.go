package dns

import (
	"bytes"
	"container/list"
	"context"
	"encoding/binary"
	"reflect"
	"sync"
	"time"
	"unsafe"

	mdns "github.com/miekg/dns"
)

// Cache holds answers by question and way out: a name resolved through proxy A and the same
// name resolved directly are two entries, since the two may rightly differ (geo DNS, a split
// view) and mixing them would hand the direct answer to a proxied client. Entries are stored
// packed, expire with the answer's lowest TTL (capped by MaxTTL), negative answers (NXDOMAIN,
// NODATA) with their SOA's minimum (RFC 2308, capped by MaxNegativeTTL) and only when they carry
// a SOA; SERVFAIL, REFUSED and truncated answers are not cached. The cache is bounded in
// entries and bytes, least recently used first out. Identical queries asked at once go out
// once. Safe for concurrent use; a nil *Cache caches nothing.
type Cache struct {
	maxEntries int
	maxBytes   int
	// MaxTTL caps how long an answer is kept; MaxNegativeTTL a negative one. Set before use.
	MaxTTL, MaxNegativeTTL time.Duration

	now func() time.Time

	mu      sync.Mutex
	ll      list.List // of *cacheEntry, front = most recently used
	m       map[CacheKey]*list.Element
	bytes   int
	flights map[CacheKey]*flight
}

// CacheKey identifies a cached answer.
type CacheKey struct {
	Way    any // the Exchanger's identity (see wayKey)
	Name   string
	Type   uint16
	Class  uint16
	DO, CD bool
}

type cacheEntry struct {
	key    CacheKey
	wire   []byte // the answer, packed: its question the key's, compressed, no OPT
	qname  int    // the end of the question's name in wire (it starts at 12)
	rrs    []wireRR
	stored time.Time
	expire time.Time
}

// wireRR locates one record of an entry's wire, for a cache hit to answer without unpacking:
// where its TTL is, and whether it is an A or AAAA record of the answer section (its address
// then ends the record) for the real-IP map.
type wireRR struct {
	ttl  uint16 // offset of the TTL in wire
	end  uint16 // offset of the record's end
	addr uint8  // 4 or 16: an A or AAAA of the answer section; 0: another
}

// entryOverhead approximates what an entry costs beyond its packed answer: the entry, its list
// element, its map slot and its key's name (measured by BenchmarkCacheBytesPerEntry).
const entryOverhead = 296

// Defaults for NewCache's bounds and the TTL caps.
const (
	DefaultCacheEntries = 10000
	DefaultCacheBytes   = 8 << 20
	DefaultMaxTTL       = 24 * time.Hour
	DefaultMaxNegTTL    = time.Hour
)

// NewCache returns a cache bounded by maxEntries and maxBytes (defaults when <= 0).
func NewCache(maxEntries, maxBytes int) *Cache {
	if maxEntries <= 0 {
		maxEntries = DefaultCacheEntries
	}
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	return &Cache{
		maxEntries: maxEntries, maxBytes: maxBytes,
		MaxTTL: DefaultMaxTTL, MaxNegativeTTL: DefaultMaxNegTTL,
		now: time.Now, m: map[CacheKey]*list.Element{}, flights: map[CacheKey]*flight{},
	}
}

// wayKey is x as a map key for its identity: x itself when comparable (every Exchanger of this
// package is a pointer), else its type and name — never a panic.
func wayKey(x Exchanger) any {
	if x == nil || reflect.TypeOf(x).Comparable() {
		return x
	}
	return struct {
		t    reflect.Type
		name string
	}{reflect.TypeOf(x), x.String()}
}

// Len is the number of entries; Bytes their accounted size.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Bytes is the accounted size of the entries (packed answers plus a fixed overhead each).
func (c *Cache) Bytes() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Purge empties the cache.
func (c *Cache) Purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	c.m = map[CacheKey]*list.Element{}
	c.bytes = 0
}

// Get returns the cached answer for k with its TTLs decremented by its age, or nil.
func (c *Cache) Get(k CacheKey) *mdns.Msg {
	if c == nil {
		return nil
	}
	now := c.now()
	c.mu.Lock()
	el, ok := c.m[k]
	if !ok {
		c.mu.Unlock()
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expire) {
		c.remove(el)
		c.mu.Unlock()
		return nil
	}
	c.ll.MoveToFront(el)
	wire, stored := e.wire, e.stored
	c.mu.Unlock()

	r := new(mdns.Msg)
	if r.Unpack(wire) != nil {
		return nil
	}
	age := uint32(now.Sub(stored) / time.Second)
	for _, sec := range [][]mdns.RR{r.Answer, r.Ns, r.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == mdns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return r
}

// ttl is how long r may be cached; 0: not at all.
func (c *Cache) ttl(r *mdns.Msg) time.Duration {
	if r.Truncated {
		return 0
	}
	switch r.Rcode {
	case mdns.RcodeSuccess:
		if len(r.Answer) > 0 {
			return c.capTTL(minTTL(r), c.MaxTTL)
		}
		return c.negTTL(r) // NODATA
	case mdns.RcodeNameError:
		return c.negTTL(r)
	}
	return 0
}

func (c *Cache) capTTL(sec uint32, max time.Duration) time.Duration {
	d := time.Duration(sec) * time.Second
	if d > max {
		return max
	}
	return d
}

// negTTL is RFC 2308 §5: the SOA's TTL or its minimum, whichever is lower; no SOA, no caching.
func (c *Cache) negTTL(r *mdns.Msg) time.Duration {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*mdns.SOA); ok {
			return c.capTTL(min(soa.Hdr.Ttl, soa.Minttl), c.MaxNegativeTTL)
		}
	}
	return 0
}

// minTTL is the lowest TTL in r's sections, OPT aside.
func minTTL(r *mdns.Msg) uint32 {
	m := ^uint32(0)
	for _, sec := range [][]mdns.RR{r.Answer, r.Ns, r.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != mdns.TypeOPT && h.Ttl < m {
				m = h.Ttl
			}
		}
	}
	return m
}

// Put stores r under k if it may be cached. r is not retained.
func (c *Cache) Put(k CacheKey, r *mdns.Msg) {
	if c == nil {
		return
	}
	ttl := c.ttl(r)
	if ttl <= 0 {
		return
	}
	s := r.Copy()
	s.Question = []mdns.Question{{Name: mdns.Fqdn(k.Name), Qtype: k.Type, Qclass: k.Class}}
	s.Extra = withoutOPT(s.Extra)
	s.Compress = true
	wire, err := s.Pack()
	if err != nil || len(wire) > 0xFFFF {
		return
	}
	now := c.now()
	e := &cacheEntry{key: k, wire: wire, stored: now, expire: now.Add(ttl)}
	if e.qname, e.rrs, err = locateRRs(wire, len(s.Answer), len(s.Answer)+len(s.Ns)+len(s.Extra)); err != nil {
		return
	}
	size := e.size()
	if size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		c.remove(el)
	}
	c.m[k] = c.ll.PushFront(e)
	c.bytes += size
	for c.ll.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.ll.Back())
	}
}

func (c *Cache) remove(el *list.Element) {
	e := c.ll.Remove(el).(*cacheEntry)
	delete(c.m, e.key)
	c.bytes -= e.size()
}

// size is what e is accounted for against the byte bound.
func (e *cacheEntry) size() int {
	return len(e.wire) + len(e.key.Name) + int(unsafe.Sizeof(wireRR{}))*cap(e.rrs) + entryOverhead
}

// locateRRs finds, in a packed message of one question, the end of the question's name and
// where each record's TTL is (miekg/dns reads the names and records); the first answers of
// them are the answer section.
func locateRRs(wire []byte, answers, n int) (qname int, rrs []wireRR, err error) {
	const headerLen = 12
	_, qname, err = mdns.UnpackDomainName(wire, headerLen)
	if err != nil {
		return 0, nil, err
	}
	rrs = make([]wireRR, 0, n)
	off := qname + 4 // qtype, qclass
	for i := 0; i < n; i++ {
		_, nameEnd, err := mdns.UnpackDomainName(wire, off)
		if err != nil {
			return 0, nil, err
		}
		rr, end, err := mdns.UnpackRR(wire, off)
		if err != nil {
			return 0, nil, err
		}
		w := wireRR{ttl: uint16(nameEnd + 4), end: uint16(end)} // type, class, then the TTL
		if i < answers {                                        // an address the record has, and that ends it
			var ip []byte
			switch rr := rr.(type) {
			case *mdns.A:
				ip = rr.A.To4()
			case *mdns.AAAA:
				ip = rr.AAAA.To16()
			}
			if len(ip) > 0 && end >= len(ip) && bytes.Equal(wire[end-len(ip):end], ip) {
				w.addr = uint8(len(ip))
			}
		}
		rrs = append(rrs, w)
		off = end
	}
	return qname, rrs, nil
}

func withoutOPT(rrs []mdns.RR) []mdns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != mdns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// flight is one query in progress that identical ones wait for.
type flight struct {
	done chan struct{}
	r    *mdns.Msg
	err  error
}

// Resolution says where an answer came from.
type Resolution uint8

const (
	FromUpstream  Resolution = iota // asked now
	FromCache                       // a cached answer
	FromCoalesced                   // an identical query asked at the same moment
)

// Resolve returns the answer for k: from the cache, or by calling fetch once for all identical
// queries in progress (fetch runs under its own context, detached from any one caller's, so a
// caller that gives up does not fail the others; it must bound itself). The answer is the
// caller's own copy.
func (c *Cache) Resolve(ctx context.Context, k CacheKey, fetch func(context.Context) (*mdns.Msg, error)) (*mdns.Msg, Resolution, error) {
	if c == nil {
		r, err := fetch(ctx)
		return r, FromUpstream, err
	}
	if r := c.Get(k); r != nil {
		return r, FromCache, nil
	}
	c.mu.Lock()
	if f, ok := c.flights[k]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, FromCoalesced, ctx.Err()
		}
		if f.err != nil {
			return nil, FromCoalesced, f.err
		}
		return f.r.Copy(), FromCoalesced, nil
	}
	f := &flight{done: make(chan struct{})}
	c.flights[k] = f
	c.mu.Unlock()

	f.r, f.err = fetch(context.WithoutCancel(ctx))
	if f.err == nil {
		c.Put(k, f.r)
	}
	c.mu.Lock()
	delete(c.flights, k)
	c.mu.Unlock()
	close(f.done)
	if f.err != nil {
		return nil, FromUpstream, f.err
	}
	return f.r.Copy(), FromUpstream, nil
}

// Header flag bits of a DNS message (RFC 1035 §4.1.1, RFC 4035 §3.2).
const (
	flagQR    = 1 << 15
	flagRD    = 1 << 8
	flagRA    = 1 << 7
	flagAD    = 1 << 5
	flagCD    = 1 << 4
	rcodeMask = 0xF
)

// hitWire appends to out k's cached answer as the reply to the UDP query pkt, without
// unpacking it: the query's ID, RD and CD and its question as it was asked (a 0x20 client's
// case included: the names compressed against it then read in the client's case), RA, AD when
// the answer had it and ad, the TTLs decremented by the entry's age, and opt (a packed OPT
// record) last when given; rrs locates the records in the reply (their TTLs, the addresses of
// the answer section's A and AAAA). ok is false, and nothing is appended, when there is no
// fresh entry or pkt's question is not the entry's in bytes but for case (the handler then
// answers the long way).
func (c *Cache) hitWire(k CacheKey, pkt []byte, ad bool, opt, out []byte) (_ []byte, rrs []wireRR, ok bool) {
	if c == nil {
		return out, nil, false
	}
	now := c.now()
	c.mu.Lock()
	el, ok := c.m[k]
	if !ok {
		c.mu.Unlock()
		return out, nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expire) {
		c.remove(el)
		c.mu.Unlock()
		return out, nil, false
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()

	const headerLen = 12
	wire, qend := e.wire, e.qname+4
	if len(pkt) < qend || !equalFold(pkt[headerLen:e.qname], wire[headerLen:e.qname]) {
		return out, nil, false
	}
	start := len(out)
	out = append(out, wire...)
	b := out[start:]
	copy(b[0:2], pkt[0:2]) // ID
	q := binary.BigEndian.Uint16(pkt[2:4])
	a := binary.BigEndian.Uint16(wire[2:4])
	flags := uint16(flagQR|flagRA) | q&(flagRD|flagCD) | a&rcodeMask
	if ad && a&flagAD != 0 {
		flags |= flagAD
	}
	binary.BigEndian.PutUint16(b[2:4], flags)
	copy(b[headerLen:qend], pkt[headerLen:qend]) // the question as asked
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, rr := range e.rrs {
		ttl := binary.BigEndian.Uint32(b[rr.ttl:])
		ttl = max(ttl, age) - age
		binary.BigEndian.PutUint32(b[rr.ttl:], ttl)
	}
	if opt != nil {
		out = append(out, opt...)
		b = out[start:]
		binary.BigEndian.PutUint16(b[10:12], binary.BigEndian.Uint16(b[10:12])+1) // ARCOUNT
	}
	return out, e.rrs, true
}

// equalFold reports whether two wire names are the same bytes but for ASCII case (label
// lengths, below 'A', compare exactly).
func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x != y && lower(x) != lower(y) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
