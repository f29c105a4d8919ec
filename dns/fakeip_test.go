package dns

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/socksgate/socksgate/internal/state"
)

func TestFakeIPAllocatesAndReverses(t *testing.T) {
	p, err := NewFakeIP(FakeIPConfig{Range6: DefaultFakeRange6})
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := p.Addrs("a.example")
	if v4 != netip.MustParseAddr("198.18.0.1") || v6 != netip.MustParseAddr("fc00::1") {
		t.Errorf("first addresses %s %s", v4, v6)
	}
	w4, _ := p.Addrs("b.example")
	if w4 != netip.MustParseAddr("198.18.0.2") {
		t.Errorf("second %s", w4)
	}
	if again, _ := p.Addrs("a.example"); again != v4 {
		t.Errorf("a.example moved to %s", again)
	}
	for _, a := range []netip.Addr{v4, v6, netip.MustParseAddr("::ffff:198.18.0.1")} {
		if name, ok := p.Lookup(a); !ok || name != "a.example" {
			t.Errorf("Lookup(%s) = %q %v", a, name, ok)
		}
	}
	for _, a := range []string{"198.18.0.0", "198.18.0.3", "198.20.0.1", "10.0.0.1", "fc00::", "fd00::1"} {
		if _, ok := p.Lookup(netip.MustParseAddr(a)); ok {
			t.Errorf("Lookup(%s) found a name", a)
		}
	}
	if !p.Contains(netip.MustParseAddr("198.19.255.254")) || p.Contains(netip.MustParseAddr("198.20.0.0")) {
		t.Error("Contains")
	}
}

func TestFakeIPReusesLeastRecentlyUsed(t *testing.T) {
	p, err := NewFakeIP(FakeIPConfig{Range4: netip.MustParsePrefix("198.18.0.0/29"), MaxEntries: 3})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.Addrs("a")
	b, _ := p.Addrs("b")
	p.Addrs("c")
	p.Lookup(a) // a used by a flow: the least recent is now b
	d, _ := p.Addrs("d")
	if d != b {
		t.Errorf("d got %s, want b's %s", d, b)
	}
	if name, ok := p.Lookup(b); !ok || name != "d" {
		t.Errorf("b's old address names %q %v, want d", name, ok)
	}
	if again, _ := p.Addrs("a"); again != a {
		t.Errorf("a, used recently, lost its address")
	}
	if p.Len() != 3 {
		t.Errorf("%d names", p.Len())
	}
}

func TestFakeIPBadConfig(t *testing.T) {
	for name, cfg := range map[string]FakeIPConfig{
		"v6 as range4":  {Range4: netip.MustParsePrefix("fc00::/64")},
		"v4 as range6":  {Range6: netip.MustParsePrefix("10.0.0.0/8")},
		"too small":     {Range4: netip.MustParsePrefix("198.18.0.0/31")},
		"bad exclusion": {Exclude: []string{"a..b"}},
	} {
		if _, err := NewFakeIP(cfg); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestFakeIPDefaultExclusions(t *testing.T) {
	p, _ := NewFakeIP(FakeIPConfig{Exclude: []string{"+.bank.example"}})
	for _, n := range []string{
		"time.windows.com", "time.apple.com", "time.nist.gov", "0.pool.ntp.org", "pool.ntp.org", "ntp.ubuntu.com",
		"stun.l.google.com", "stun.example.org", "global.stun.twilio.com", "www.msftconnecttest.com",
		"msftconnecttest.com", "dns.msftncsi.com", "nas.lan", "bank.example", "www.bank.example",
	} {
		if !p.Excluded(n) {
			t.Errorf("%s not excluded", n)
		}
	}
	for _, n := range []string{"www.example.com", "timeless.example.com", "example.org", "notstun.example.com", "bank.example.com"} {
		if p.Excluded(n) {
			t.Errorf("%s excluded", n)
		}
	}
}

func TestFakeIPSaveLoad(t *testing.T) {
	d, _ := state.Open(t.TempDir())
	p, _ := NewFakeIP(FakeIPConfig{Range6: DefaultFakeRange6})
	for i := 0; i < 10; i++ {
		p.Addrs("n" + strconv.Itoa(i) + ".example")
	}
	p.Addrs("n0.example") // most recent
	if err := p.Save(d); err != nil {
		t.Fatal(err)
	}
	q, _ := NewFakeIP(FakeIPConfig{Range6: DefaultFakeRange6})
	if err := q.Load(d); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		name := "n" + strconv.Itoa(i) + ".example"
		a4, a6 := p.Addrs(name)
		b4, b6 := q.Addrs(name)
		if a4 != b4 || a6 != b6 {
			t.Errorf("%s: %s %s before, %s %s after the restart", name, a4, a6, b4, b6)
		}
	}
	if q.Len() != 10 {
		t.Errorf("%d names after load", q.Len())
	}
	// Other ranges: not loaded, the pool stays empty.
	r, _ := NewFakeIP(FakeIPConfig{Range4: netip.MustParsePrefix("198.18.0.0/16")})
	if err := r.Load(d); err == nil || r.Len() != 0 {
		t.Errorf("loaded a pool saved for other ranges: %v, %d names", err, r.Len())
	}
}

func TestFakeIPCorruptStateStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	d, _ := state.Open(dir)
	p, _ := NewFakeIP(FakeIPConfig{})
	if err := p.Load(d); !state.IsMissing(err) {
		t.Errorf("first start: %v, want a missing file", err)
	}
	p.Addrs("a.example")
	p.Save(d)
	b, _ := os.ReadFile(filepath.Join(dir, StateFile))
	os.WriteFile(filepath.Join(dir, StateFile), b[:len(b)-5], 0o600) // cut short
	q, _ := NewFakeIP(FakeIPConfig{})
	if err := q.Load(d); err == nil {
		t.Fatal("a corrupt file loaded")
	}
	if q.Len() != 0 {
		t.Errorf("%d names from a corrupt file", q.Len())
	}
	// And the pool works: it starts empty.
	if v4, _ := q.Addrs("b.example"); v4 != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("after a corrupt load: %s", v4)
	}
	// Valid JSON with bad contents is refused whole.
	for _, bad := range []string{
		`{"version":2,"range4":"198.18.0.0/15","entries":[]}`,
		`{"version":1,"range4":"198.18.0.0/15","entries":[{"slot":5,"name":"x"}]}`,
		`{"version":1,"range4":"198.18.0.0/15","entries":[{"slot":0,"name":"x"},{"slot":1,"name":"x"}]}`,
		`{"version":1,"range4":"198.18.0.0/15","entries":[{"slot":0,"name":"x"},{"slot":0,"name":"y"}]}`,
	} {
		r, _ := NewFakeIP(FakeIPConfig{})
		if err := r.UnmarshalBinary([]byte(bad)); err == nil || r.Len() != 0 {
			t.Errorf("%s: %v, %d names", bad, err, r.Len())
		}
	}
}
