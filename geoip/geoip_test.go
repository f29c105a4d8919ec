//go:build !nogeoip

package geoip

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/socksgate/socksgate/geoip/geoiptest"
)

var testNets = []geoiptest.Network{
	{Prefix: "203.0.113.0/25", Country: "US"},
	{Prefix: "203.0.113.128/25", Country: "CN"},
	{Prefix: "198.51.100.0/24", Country: "US"},
	{Prefix: "192.0.2.0/24", Country: "DE", Registered: true},
	{Prefix: "2001:db8:3::/48", Country: "CN"},
	{Prefix: "2001:db8:4::/48", Country: "us"},
}

func testDB(t testing.TB) *DB {
	t.Helper()
	b, err := geoiptest.Bytes(testNets...)
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestParseCode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"US", "US", true}, {"cn", "CN", true}, {"dE", "DE", true},
		{"", "", false}, {"U", "", false}, {"USA", "", false}, {"U1", "", false}, {"é", "", false}, {"  ", "", false},
	} {
		c, err := ParseCode(tc.in)
		if (err == nil) != tc.ok || c.String() != tc.want {
			t.Errorf("ParseCode(%q) = %q, %v; want %q ok=%v", tc.in, c, err, tc.want, tc.ok)
		}
	}
}

func TestCountry(t *testing.T) {
	db := testDB(t)
	for _, tc := range []struct{ addr, want string }{
		{"203.0.113.10", "US"},
		{"203.0.113.200", "CN"},
		{"198.51.100.1", "US"},
		{"192.0.2.1", "DE"}, // registered_country only
		{"::ffff:203.0.113.200", "CN"},
		{"2001:db8:3::10", "CN"},
		{"2001:db8:4::1", "US"}, // written lower case
		{"10.0.0.1", ""},
		{"2001:db8:5::1", ""},
	} {
		// Twice: the second answer comes from the cache.
		for range 2 {
			if got := db.Country(netip.MustParseAddr(tc.addr)).String(); got != tc.want {
				t.Errorf("Country(%s) = %q, want %q", tc.addr, got, tc.want)
			}
		}
	}
}

func TestCountrySingGeoIP(t *testing.T) {
	b, err := geoiptest.SingBytes(geoiptest.Network{Prefix: "203.0.113.0/24", Country: "cn"})
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := db.Country(netip.MustParseAddr("203.0.113.9")).String(); got != "CN" {
		t.Errorf("sing-geoip: %q, want CN", got)
	}
}

func TestPrefixes(t *testing.T) {
	db := testDB(t)
	str := func(ps []netip.Prefix) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = p.String()
		}
		slices.Sort(out)
		return out
	}
	us, _ := ParseCode("us")
	if got, want := str(db.Prefixes(us)), []string{"198.51.100.0/24", "2001:db8:4::/48", "203.0.113.0/25"}; !slices.Equal(got, want) {
		t.Errorf("Prefixes(US) = %v, want %v", got, want)
	}
	cn, _ := ParseCode("CN")
	if got, want := str(db.Prefixes(cn)), []string{"2001:db8:3::/48", "203.0.113.128/25"}; !slices.Equal(got, want) {
		t.Errorf("Prefixes(CN) = %v, want %v", got, want)
	}
	fr, _ := ParseCode("FR")
	if got := db.Prefixes(fr); len(got) != 0 {
		t.Errorf("Prefixes(FR) = %v, want none", got)
	}
	// Every listed prefix is the country's, by lookup too.
	for _, p := range db.Prefixes(us) {
		if db.Country(p.Addr()) != us {
			t.Errorf("%s listed for US, looks up as %s", p, db.Country(p.Addr()))
		}
	}
}

func TestFileReloadKeepsTheVersionInForceOnFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.WriteFile(path, geoiptest.Network{Prefix: "203.0.113.0/24", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("203.0.113.1")
	if f.Country(a).String() != "US" {
		t.Fatalf("first load: %s", f.Country(a))
	}
	// A half-written file: the version in force stays, the error is kept.
	if err := os.WriteFile(path, []byte("not a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil {
		t.Fatal("reload of a broken file: no error")
	}
	if st := f.Status(); st.Err == nil || st.Failures != 1 || st.Reloads != 0 || f.Country(a).String() != "US" {
		t.Fatalf("after a failed reload: %+v, country %s", st, f.Country(a))
	}
	os.Remove(path)
	if err := f.Reload(); err == nil || f.Country(a).String() != "US" {
		t.Fatalf("reload of a missing file: %v, country %s", err, f.Country(a))
	}
	// A good file again: swapped in, the error cleared.
	if err := geoiptest.WriteFile(path, geoiptest.Network{Prefix: "203.0.113.0/24", Country: "JP"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if st := f.Status(); st.Err != nil || st.Failures != 2 || st.Reloads != 1 || st.Type != "GeoLite2-Country" || f.Country(a).String() != "JP" {
		t.Fatalf("after a good reload: %+v, country %s", st, f.Country(a))
	}
}

func TestOpenFileFailsOnABrokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broken.mmdb")
	os.WriteFile(path, []byte("garbage"), 0o644)
	if _, err := OpenFile(path); err == nil {
		t.Fatal("no error")
	}
	if _, err := OpenFile(path + ".missing"); err == nil {
		t.Fatal("no error for a missing file")
	}
}

// BenchmarkCountry is the per-flow cost of a dst_geoip matcher: one lookup in a database of
// about ten thousand networks, against a plain map lookup of the /24 as a baseline.
func BenchmarkCountry(b *testing.B) {
	var nets []geoiptest.Network
	m := map[netip.Prefix]Code{}
	ccs := []string{"US", "CN", "DE", "JP", "FR", "GB", "BR", "IN"}
	for i := range 10000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(1 + i/250%200), byte(i % 250), byte(i * 7 % 256), 0}), 24)
		cc := ccs[i%len(ccs)]
		nets = append(nets, geoiptest.Network{Prefix: p.String(), Country: cc})
		c, _ := ParseCode(cc)
		m[p] = c
	}
	buf, err := geoiptest.Bytes(nets...)
	if err != nil {
		b.Fatal(err)
	}
	db, err := OpenBytes(buf)
	if err != nil {
		b.Fatal(err)
	}
	hit := netip.MustParsePrefix(nets[5000].Prefix).Addr().Next()
	miss := netip.MustParseAddr("203.0.113.10")
	v6 := netip.MustParseAddr("2001:db8::1")
	if db.Country(hit) != m[netip.PrefixFrom(hit, 24).Masked()] {
		b.Fatal("lookup disagrees with the map")
	}
	for _, tc := range []struct {
		name string
		a    netip.Addr
	}{{"hit", hit}, {"miss", miss}, {"ipv6", v6}} {
		b.Run("db/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = db.Country(tc.a)
			}
		})
	}
	b.Run("map/hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, _ := hit.Prefix(24)
			_ = m[p]
		}
	})
}
