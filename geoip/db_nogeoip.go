//go:build nogeoip

package geoip

import "net/netip"

// Built says whether this build reads databases (false with the nogeoip tag).
const Built = false

// DB is no database: this build has no reader.
type DB struct{}

// Open fails: the build has no reader.
func Open(string) (*DB, error) { return nil, ErrNotBuilt }

// OpenBytes fails: the build has no reader.
func OpenBytes([]byte) (*DB, error) { return nil, ErrNotBuilt }

func (*DB) Type() string                 { return "" }
func (*DB) Country(netip.Addr) Code      { return 0 }
func (*DB) Prefixes(Code) []netip.Prefix { return nil }
