// Package geoip answers which country an address is in, from a MaxMind-format database file
// (GeoLite2 and GeoIP2 Country or City, DB-IP's, the Country.mmdb files Clash users keep, and
// sing-box's geoip format, whose records are the country code itself), and lists a country's
// networks. File keeps one database in force and swaps in a new one atomically when it is
// reloaded; a file that does not load leaves the one in force and says why.
//
// Built with the nogeoip tag, socksgate has no database reader: Open fails with ErrNotBuilt
// and configs refuses geoip settings, which keeps maxminddb out of the smallest builds.
package geoip

import (
	"errors"
	"fmt"
)

// Code is a country as two upper-case ASCII letters (ISO 3166-1 alpha-2, as the databases
// write them: "US", "CN"; also the databases' "EU" and "AP"), packed in 16 bits. The zero
// Code is no country: an address the database does not know.
type Code uint16

// ErrNotBuilt is what Open returns in a build without GeoIP (the nogeoip tag).
var ErrNotBuilt = errors.New("socksgate was built without GeoIP (the nogeoip build tag, as the mips and mipsle builds are); a country's prefixes as a cidr rule set (dst_set) do the same")

// ParseCode reads a country code: two ASCII letters, either case.
func ParseCode(s string) (Code, error) {
	if len(s) != 2 {
		return 0, fmt.Errorf("country code %q: want two letters (ISO 3166-1 alpha-2, such as US or cn)", clip(s))
	}
	a, b := upper(s[0]), upper(s[1])
	if a == 0 || b == 0 {
		return 0, fmt.Errorf("country code %q: want two letters (ISO 3166-1 alpha-2, such as US or cn)", clip(s))
	}
	return Code(a)<<8 | Code(b), nil
}

// codeOf is the Code of a database's record string, 0 unless it is two letters.
func codeOf(s string) Code {
	c, err := ParseCode(s)
	if err != nil {
		return 0
	}
	return c
}

func upper(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c
	case 'a' <= c && c <= 'z':
		return c - 'a' + 'A'
	}
	return 0
}

// String is the two letters, or "" for the zero Code.
func (c Code) String() string {
	if c == 0 {
		return ""
	}
	return string([]byte{byte(c >> 8), byte(c)})
}

// MarshalText writes the two letters.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText is ParseCode.
func (c *Code) UnmarshalText(b []byte) error {
	v, err := ParseCode(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
