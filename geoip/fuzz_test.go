//go:build !nogeoip

package geoip

import (
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/geoip/geoiptest"
)

// FuzzOpenBytes checks that no database file, however damaged (one is downloaded from afar
// and may arrive cut or corrupt), makes opening it, looking addresses up in it or listing a
// country's prefixes panic.
func FuzzOpenBytes(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input it finds, slowly for large ones.
	good, err := geoiptest.IPv4Bytes(
		geoiptest.Network{Prefix: "203.0.113.0/25", Country: "US"},
		geoiptest.Network{Prefix: "192.0.2.0/24", Country: "DE", Registered: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good[len(good)/3:])
	f.Add([]byte{})
	f.Add([]byte("\xab\xcd\xefMaxMind.com"))
	addrs := []netip.Addr{netip.MustParseAddr("203.0.113.200"), netip.MustParseAddr("2001:db8:3::1"), netip.MustParseAddr("10.0.0.1")}
	f.Fuzz(func(t *testing.T, b []byte) {
		db, err := OpenBytes(b)
		if err != nil {
			return
		}
		for _, a := range addrs {
			db.Country(a)
		}
		us, _ := ParseCode("US")
		for _, p := range db.Prefixes(us) {
			if !p.IsValid() {
				t.Fatalf("invalid prefix listed: %v", p)
			}
		}
	})
}
