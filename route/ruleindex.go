package route

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"sort"
)

// u128 is an address as a 128-bit number (IPv4 in the low 32 bits), so prefixes of either
// family become integer ranges that sort and compare without allocation.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func addrU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// lastOf is the last address of the prefix whose first address is first and whose host part
// is hostBits wide.
func lastOf(first u128, hostBits int) u128 {
	switch {
	case hostBits == 0:
		return first
	case hostBits < 64:
		return u128{first.hi, first.lo | (1<<hostBits - 1)}
	case hostBits == 64:
		return u128{first.hi, ^uint64(0)}
	case hostBits < 128:
		return u128{first.hi | (1<<(hostBits-64) - 1), ^uint64(0)}
	}
	return u128{^uint64(0), ^uint64(0)}
}

// normPrefix returns p masked, with an IPv4-mapped IPv6 prefix (::ffff:a.b.c.d/n, n ≥ 96)
// turned into its IPv4 form, since flows' addresses are unmapped before matching.
func normPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// prefixIndex answers "which rules have a prefix containing this address" in O(log n) for
// any number of prefixes. CIDR prefixes are laminar (two are either nested or disjoint), so
// the prefixes of one family, sorted by first address and then by length, form a forest in
// which each entry's parent is the closest enclosing prefix. A lookup binary-searches the
// last entry starting at or before the address, climbs to the first ancestor that contains
// it (the longest match), and every ancestor from there up contains it too. Each entry
// carries the ascending indices of the rules that listed it.
type prefixIndex struct {
	fam [2][]prefixEntry // [0] IPv4, [1] IPv6
}

type prefixEntry struct {
	first, last u128
	parent      int32   // index of the closest enclosing entry in the same family, -1 for a root
	rules       []int32 // ascending rule indices
}

type prefixRef struct {
	p    netip.Prefix
	rule int32
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func buildPrefixIndex(refs []prefixRef) prefixIndex {
	var ix prefixIndex
	var byFam [2][]prefixRef
	for _, r := range refs {
		r.p = normPrefix(r.p)
		if !r.p.IsValid() {
			continue
		}
		f := familyOf(r.p.Addr())
		byFam[f] = append(byFam[f], r)
	}
	for f, rs := range byFam {
		sort.Slice(rs, func(i, j int) bool {
			a, b := rs[i], rs[j]
			if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
				return c < 0
			}
			if c := cmp.Compare(a.p.Bits(), b.p.Bits()); c != 0 {
				return c < 0
			}
			return a.rule < b.rule
		})
		var es []prefixEntry
		var stack []int32 // chain of open enclosing entries
		for i := 0; i < len(rs); {
			p := rs[i].p
			e := prefixEntry{first: addrU128(p.Addr()), parent: -1}
			e.last = lastOf(e.first, p.Addr().BitLen()-p.Bits())
			for ; i < len(rs) && rs[i].p == p; i++ {
				if n := len(e.rules); n == 0 || e.rules[n-1] != rs[i].rule {
					e.rules = append(e.rules, rs[i].rule)
				}
			}
			for len(stack) > 0 && es[stack[len(stack)-1]].last.cmp(e.first) < 0 {
				stack = stack[:len(stack)-1]
			}
			if len(stack) > 0 {
				e.parent = stack[len(stack)-1]
			}
			es = append(es, e)
			stack = append(stack, int32(len(es)-1))
		}
		ix.fam[f] = es
	}
	return ix
}

// longest returns the family table and the index of the longest prefix containing a (-1 if
// none); the caller walks parents from there.
func (ix *prefixIndex) longest(a netip.Addr) ([]prefixEntry, int32) {
	es := ix.fam[familyOf(a)]
	if len(es) == 0 {
		return nil, -1
	}
	k := addrU128(a)
	// The first entry starting after k; the one before it is the last starting at or before.
	lo, hi := 0, len(es)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if es[m].first.cmp(k) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	i := int32(lo - 1)
	for i >= 0 && es[i].last.cmp(k) < 0 {
		i = es[i].parent
	}
	return es, i
}

// contains reports whether any indexed prefix contains a.
func (ix *prefixIndex) contains(a netip.Addr) bool {
	_, i := ix.longest(a)
	return i >= 0
}

// prefixSet is a membership test for one rule's prefixes: a linear scan for a handful, the
// index beyond that.
type prefixSet struct {
	small []netip.Prefix
	big   *prefixIndex
}

const prefixSetLinearMax = 8

func newPrefixSet(ps []netip.Prefix) prefixSet {
	if len(ps) <= prefixSetLinearMax {
		s := prefixSet{small: make([]netip.Prefix, len(ps))}
		for i, p := range ps {
			s.small[i] = normPrefix(p)
		}
		return s
	}
	refs := make([]prefixRef, len(ps))
	for i, p := range ps {
		refs[i] = prefixRef{p: p}
	}
	ix := buildPrefixIndex(refs)
	return prefixSet{big: &ix}
}

func (s *prefixSet) empty() bool { return s.big == nil && len(s.small) == 0 }

// contains expects an unmapped, valid address.
func (s *prefixSet) contains(a netip.Addr) bool {
	if s.big != nil {
		return s.big.contains(a)
	}
	for _, p := range s.small {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
