package ruleset

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
	"sort"
)

// CIDRs is a set of addresses, built once and read concurrently without locks: the
// prefixes of each family merged into sorted, disjoint ranges (8 bytes a range for IPv4, 32
// for IPv6), so that a lookup is one binary search and overlapping or adjacent prefixes cost
// nothing. IPv4-mapped IPv6 prefixes and addresses count as IPv4.
type CIDRs struct {
	v4      []range4
	v6      []range6
	entries int // prefixes added, before merging
}

type range4 struct{ first, last uint32 }

type u128 struct{ hi, lo uint64 }

type range6 struct{ first, last u128 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) next() (u128, bool) {
	lo, carry := bits.Add64(a.lo, 1, 0)
	hi, over := bits.Add64(a.hi, 0, carry)
	return u128{hi, lo}, over == 0
}

func (a u128) prev() u128 {
	lo, borrow := bits.Sub64(a.lo, 1, 0)
	return u128{a.hi - borrow, lo}
}

func addr6(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func addr4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// Len is the number of prefixes the set was built from (duplicates and overlaps included).
func (c *CIDRs) Len() int {
	if c == nil {
		return 0
	}
	return c.entries
}

// Ranges is the number of disjoint ranges the set holds.
func (c *CIDRs) Ranges() int {
	if c == nil {
		return 0
	}
	return len(c.v4) + len(c.v6)
}

// Contains reports whether a is in the set. It allocates nothing.
func (c *CIDRs) Contains(a netip.Addr) bool {
	if c == nil || !a.IsValid() {
		return false
	}
	a = a.Unmap()
	if a.Is4() {
		k := addr4(a)
		rs := c.v4
		// The first range starting after k; the one before it is the last starting at or before.
		lo, hi := 0, len(rs)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if rs[m].first <= k {
				lo = m + 1
			} else {
				hi = m
			}
		}
		return lo > 0 && rs[lo-1].last >= k
	}
	k := addr6(a)
	rs := c.v6
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs[m].first.cmp(k) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && rs[lo-1].last.cmp(k) >= 0
}

// cidrBuilder collects prefixes.
type cidrBuilder struct {
	v4      []range4
	v6      []range6
	entries int
}

// add adds a valid prefix.
func (b *cidrBuilder) add(p netip.Prefix) {
	b.entries++
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	if p.Addr().Is4() {
		f := addr4(p.Addr())
		b.v4 = append(b.v4, range4{f, f | uint32(uint64(1)<<(32-p.Bits())-1)})
		return
	}
	f := addr6(p.Addr())
	host := 128 - p.Bits()
	l := f
	switch {
	case host >= 64:
		l.lo = ^uint64(0)
		if host == 128 {
			l.hi = ^uint64(0)
		} else {
			l.hi |= uint64(1)<<(host-64) - 1
		}
	case host > 0:
		l.lo |= uint64(1)<<host - 1
	}
	b.v6 = append(b.v6, range6{f, l})
}

func (b *cidrBuilder) build() *CIDRs {
	return &CIDRs{v4: merge4(b.v4), v6: merge6(b.v6), entries: b.entries}
}

func merge4(rs []range4) []range4 {
	if len(rs) == 0 {
		return nil
	}
	// sort.Slice, not slices.SortFunc: one sort for every type in the binary (a router's flash).
	sort.Slice(rs, func(i, j int) bool {
		return rs[i].first < rs[j].first || rs[i].first == rs[j].first && rs[i].last < rs[j].last
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		if cur.last == ^uint32(0) || r.first <= cur.last+1 {
			cur.last = max(cur.last, r.last)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

func merge6(rs []range6) []range6 {
	if len(rs) == 0 {
		return nil
	}
	sort.Slice(rs, func(i, j int) bool { return cmp.Or(rs[i].first.cmp(rs[j].first), rs[i].last.cmp(rs[j].last)) < 0 })
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		next, ok := cur.last.next()
		if !ok || r.first.cmp(next) <= 0 {
			if r.last.cmp(cur.last) > 0 {
				cur.last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// Union returns the addresses in any of the sets (nil ones count as empty).
func Union(sets ...*CIDRs) *CIDRs {
	var b cidrBuilder
	for _, c := range sets {
		if c == nil {
			continue
		}
		b.v4 = append(b.v4, c.v4...)
		b.v6 = append(b.v6, c.v6...)
		b.entries += c.entries
	}
	return b.build()
}

// Minus returns the addresses of c that are not in cut.
func (c *CIDRs) Minus(cut *CIDRs) *CIDRs {
	if c == nil {
		return &CIDRs{}
	}
	if cut == nil {
		return c
	}
	out := &CIDRs{entries: c.entries}
	j := 0
	for _, r := range c.v4 {
		for j < len(cut.v4) && cut.v4[j].last < r.first {
			j++
		}
		for k := j; k < len(cut.v4) && cut.v4[k].first <= r.last; k++ {
			x := cut.v4[k]
			if x.first > r.first {
				out.v4 = append(out.v4, range4{r.first, x.first - 1})
			}
			if x.last >= r.last {
				r.first, r.last = 1, 0 // nothing left
				break
			}
			r.first = x.last + 1
		}
		if r.first <= r.last {
			out.v4 = append(out.v4, r)
		}
	}
	j = 0
	for _, r := range c.v6 {
		for j < len(cut.v6) && cut.v6[j].last.cmp(r.first) < 0 {
			j++
		}
		left := true
		for k := j; k < len(cut.v6) && cut.v6[k].first.cmp(r.last) <= 0; k++ {
			x := cut.v6[k]
			if x.first.cmp(r.first) > 0 {
				out.v6 = append(out.v6, range6{r.first, x.first.prev()})
			}
			if x.last.cmp(r.last) >= 0 {
				left = false
				break
			}
			r.first, _ = x.last.next()
		}
		if left {
			out.v6 = append(out.v6, r)
		}
	}
	return out
}

// Prefixes returns the set as the fewest prefixes that cover exactly its addresses, IPv4
// first, each family in order.
func (c *CIDRs) Prefixes() []netip.Prefix {
	if c == nil {
		return nil
	}
	var out []netip.Prefix
	for _, r := range c.v4 {
		for f := uint64(r.first); f <= uint64(r.last); {
			// The largest block starting at f that fits before r.last.
			n := min(bits.TrailingZeros64(f), 32)
			for n > 0 && f+uint64(1)<<n-1 > uint64(r.last) {
				n--
			}
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], uint32(f))
			out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 32-n))
			f += uint64(1) << n
		}
	}
	for _, r := range c.v6 {
		f := r.first
		for {
			n := 128
			if f.lo != 0 {
				n = bits.TrailingZeros64(f.lo)
			} else if f.hi != 0 {
				n = 64 + bits.TrailingZeros64(f.hi)
			}
			for n > 0 && lastOf(f, n).cmp(r.last) > 0 {
				n--
			}
			var b [16]byte
			binary.BigEndian.PutUint64(b[:8], f.hi)
			binary.BigEndian.PutUint64(b[8:], f.lo)
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 128-n))
			l := lastOf(f, n)
			if l.cmp(r.last) >= 0 {
				break
			}
			f, _ = l.next()
		}
	}
	return out
}

// lastOf is the last address of the block of 2^n addresses starting at f.
func lastOf(f u128, n int) u128 {
	switch {
	case n == 0:
		return f
	case n < 64:
		return u128{f.hi, f.lo | (uint64(1)<<n - 1)}
	case n == 64:
		return u128{f.hi, ^uint64(0)}
	case n < 128:
		return u128{f.hi | (uint64(1)<<(n-64) - 1), ^uint64(0)}
	}
	return u128{^uint64(0), ^uint64(0)}
}

// PrefixSet is the set of the valid prefixes of ps.
func PrefixSet(ps []netip.Prefix) *CIDRs {
	var b cidrBuilder
	for _, p := range ps {
		if p.IsValid() {
			b.add(p)
		}
	}
	return b.build()
}
