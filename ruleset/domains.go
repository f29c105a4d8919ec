package ruleset

import (
	"regexp"
	"strings"
	"unsafe"
)

// Domains is a set of domain patterns, built once and read concurrently without locks:
//
//   - exact names ("full:example.com"), matched by that name alone;
//   - suffixes ("example.com", "domain:", "+."), matched by the name and every name under it;
//   - names under ("." and "*." in Clash's lists), matched by the names under it only;
//   - keywords, matched by any name containing them, and RE2 regular expressions.
//
// The names live in one byte blob, each as a length byte and its bytes, found through an
// open-addressing table of 8-byte slots (the name's hash, its offset in the blob and what
// kind of entry it is), at most half full. A lookup hashes the name once, from its last byte
// to its first, so that the hash of every suffix that starts at a label is on the way, and
// probes the table once for the name and once per dot in it: a handful of probes whatever
// the set's size. A million names cost about 16 MiB of table and their own bytes in the
// blob. Keywords and expressions are tried one by one after that: their cost grows with
// their number.
type Domains struct {
	blob     []byte
	slots    []uint64 // hash<<32 | kind<<30 | offset; 0: empty
	mask     uint64
	names    int // distinct names in the table
	keywords []string
	regexps  []*regexp.Regexp
}

// kind bits of a name in the table.
const (
	kindExact = 1 // the name itself
	kindUnder = 2 // every name under it
	kindBoth  = kindExact | kindUnder
)

// maxBlob bounds the blob: offsets have 30 bits.
const maxBlob = 1 << 30

// Len is the number of entries: names, keywords and expressions.
func (d *Domains) Len() int {
	if d == nil {
		return 0
	}
	return d.names + len(d.keywords) + len(d.regexps)
}

// Match reports whether name (a DNS name, any case, a trailing dot allowed) is in the set.
// It allocates nothing.
func (d *Domains) Match(name string) bool {
	if d == nil || name == "" {
		return false
	}
	name = strings.TrimSuffix(name, ".")
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	if d.names > 0 && d.matchNames(name) {
		return true
	}
	if len(d.keywords) == 0 && len(d.regexps) == 0 {
		return false
	}
	return d.matchPatterns(name)
}

// matchPatterns tries the keywords and the expressions.
func (d *Domains) matchPatterns(name string) bool {
	lower := name
	if hasUpper(name) {
		lower = strings.ToLower(name)
	}
	for _, k := range d.keywords {
		if strings.Contains(lower, k) {
			return true
		}
	}
	for _, re := range d.regexps {
		if re.MatchString(lower) {
			return true
		}
	}
	return false
}

// matchNames looks up name and each of its suffixes that starts at a label.
func (d *Domains) matchNames(name string) bool {
	h := uint64(fnvOffset)
	for i := len(name) - 1; i >= 0; i-- {
		h = (h ^ uint64(lowerByte(name[i]))) * fnvPrime
		switch {
		case i == 0:
			return d.probe(h, name)&kindExact != 0
		case name[i-1] == '.':
			if d.probe(h, name[i:])&kindUnder != 0 {
				return true
			}
		}
	}
	return false
}

// probe returns the kind bits of s (hashed to h) in the table, 0 when it is not there.
func (d *Domains) probe(h uint64, s string) uint64 {
	m := mix(h)
	tag := m >> 32
	for i := m & d.mask; ; i = (i + 1) & d.mask {
		e := d.slots[i]
		if e == 0 {
			return 0
		}
		if e>>32 == tag && d.equal(uint32(e)&(maxBlob-1), s) {
			return e >> 30 & 3
		}
	}
}

// equal compares the blob's name at off with s, case-insensitively (the blob is lowercase).
func (d *Domains) equal(off uint32, s string) bool {
	n := int(d.blob[off])
	if n != len(s) {
		return false
	}
	b := d.blob[off+1 : int(off)+1+n]
	for i := 0; i < n; i++ {
		if b[i] != lowerByte(s[i]) {
			return false
		}
	}
	return true
}

// FNV-1a over the name's bytes from last to first, lowercased; mix spreads the bits before
// the low ones choose a slot (FNV's low bits cluster for names that differ at the front).
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func lowerByte(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// domainBuilder collects a set's entries while a file is read.
type domainBuilder struct {
	blob     []byte
	offs     []uint32 // kind<<30 | offset of each name added, duplicates included
	keywords []string
	regexps  []*regexp.Regexp
	seenKw   map[string]bool
}

// addName adds a lowercase, valid name with its kind bits; false when the blob is full.
func (b *domainBuilder) addName(name string, kind uint32) bool {
	if len(b.blob)+1+len(name) > maxBlob {
		return false
	}
	b.offs = append(b.offs, kind<<30|uint32(len(b.blob)))
	b.blob = append(b.blob, byte(len(name)))
	b.blob = append(b.blob, name...)
	return true
}

func (b *domainBuilder) addKeyword(k string) {
	if b.seenKw == nil {
		b.seenKw = map[string]bool{}
	}
	if !b.seenKw[k] {
		b.seenKw[k] = true
		b.keywords = append(b.keywords, k)
	}
}

// build makes the table: a power of two at least twice the names added, each name placed
// once, its kinds merged.
func (b *domainBuilder) build() *Domains {
	d := &Domains{blob: b.blob, keywords: b.keywords, regexps: b.regexps}
	if len(d.blob) > 0 && cap(d.blob) > len(d.blob)+len(d.blob)/4 {
		d.blob = append([]byte(nil), d.blob...) // the capacity guessed from the file's size
	}
	size := 8
	for size < 2*len(b.offs) {
		size <<= 1
	}
	d.slots = make([]uint64, size)
	d.mask = uint64(size - 1)
	for _, o := range b.offs {
		off := o & (maxBlob - 1)
		n := uint32(d.blob[off])
		name := unsafe.String(&d.blob[off+1], n) // only hashed and compared while d.blob is live
		h := uint64(fnvOffset)
		for i := len(name) - 1; i >= 0; i-- {
			h = (h ^ uint64(name[i])) * fnvPrime
		}
		m := mix(h)
		for i := m & d.mask; ; i = (i + 1) & d.mask {
			e := d.slots[i]
			if e == 0 {
				d.slots[i] = m>>32<<32 | uint64(o)
				d.names++
				break
			}
			if e>>32 == m>>32 && d.equal(uint32(e)&(maxBlob-1), name) {
				d.slots[i] = e | uint64(o>>30)<<30
				break
			}
		}
	}
	return d
}
