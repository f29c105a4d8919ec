//go:build !nogeoip

package geoip

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Built says whether this build reads databases (false with the nogeoip tag).
const Built = true

// DB is one database, held in memory (the file is read whole: a database replaced in place
// while a memory map of it is in use would fault the process). It is safe for concurrent use.
type DB struct {
	r     *maxminddb.Reader
	plain bool // sing-geoip: each record is the country code itself, not a map
	// cache maps a record's offset to its country, so that a lookup decodes nothing: the
	// records are few (one per country and kind of network, a few thousand at most), the
	// networks that point at them many. Direct-mapped, each entry (offset+1)<<16 | code
	// written and read whole, so it needs no lock; a collision only costs a decode.
	cache [cacheSize]atomic.Uint64
}

const (
	cacheBits = 12
	cacheSize = 1 << cacheBits
)

// Open reads the database at path.
func Open(path string) (*DB, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return OpenBytes(b)
}

// OpenBytes opens a database held in b, which it keeps: b must not change afterwards.
func OpenBytes(b []byte) (*DB, error) {
	r, err := maxminddb.OpenBytes(b)
	if err != nil {
		return nil, fmt.Errorf("not a MaxMind database: %w", err)
	}
	return &DB{r: r, plain: strings.Contains(r.Metadata.DatabaseType, "sing-geoip")}, nil
}

// Type is the database's own name of its kind ("GeoLite2-Country", "sing-geoip", ...).
func (db *DB) Type() string { return db.r.Metadata.DatabaseType }

// Country is the country a's network is in; 0 when the database has no country for it.
func (db *DB) Country(a netip.Addr) Code {
	res := db.r.Lookup(a.Unmap())
	if !res.Found() {
		return 0
	}
	return db.codeAt(res)
}

// codeAt is the country of a found result's record, from the cache or decoded.
func (db *DB) codeAt(res maxminddb.Result) Code {
	off := uint64(res.Offset())
	slot := &db.cache[(off*0x9E3779B97F4A7C15)>>(64-cacheBits)]
	if e := slot.Load(); e>>16 == off+1 {
		return Code(e)
	}
	c := db.decode(res)
	slot.Store((off+1)<<16 | uint64(c))
	return c
}

// decode reads a record's country: country.iso_code, else registered_country.iso_code (the
// country a network is registered in, all some records have), or a sing-geoip record's code.
func (db *DB) decode(res maxminddb.Result) Code {
	var s string
	if db.plain {
		if res.Decode(&s) == nil {
			return codeOf(s)
		}
		return 0
	}
	if res.DecodePath(&s, "country", "iso_code") == nil && s != "" {
		return codeOf(s)
	}
	if res.DecodePath(&s, "registered_country", "iso_code") == nil {
		return codeOf(s)
	}
	return 0
}

// Prefixes lists the networks of country cc, in the database's order (ascending, IPv4 first
// in a database that has both). A network the database maps into IPv6 space as well (IPv4 in
// ::ffff:0:0/96, 6to4) is listed once, in IPv4 form.
func (db *DB) Prefixes(cc Code) []netip.Prefix {
	var out []netip.Prefix
	if cc == 0 {
		return out
	}
	for res := range db.r.Networks() {
		if res.Err() != nil {
			break
		}
		if db.codeAt(res) == cc {
			p := res.Prefix()
			if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			}
			out = append(out, p)
		}
	}
	return out
}
