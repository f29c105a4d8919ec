package dns

import (
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func testNames(max int, clock *fakeClock) *Names {
	n := NewNames(max, time.Minute)
	n.now = clock.Now
	n.base = clock.Now()
	return n
}

func TestNamesLookupPerClient(t *testing.T) {
	clock := newFakeClock()
	n := testNames(10, clock)
	a, b := netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("192.168.1.11")
	dst := netip.MustParseAddr("203.0.113.5")
	n.Add(a, dst, "one.example", 30*time.Second)
	n.Add(b, dst, "two.example", 30*time.Second) // one CDN address, two names
	if got, _ := n.Lookup(a, dst); got != "one.example" {
		t.Errorf("a → %q", got)
	}
	if got, _ := n.Lookup(b, dst); got != "two.example" {
		t.Errorf("b → %q", got)
	}
	// IPv4-mapped forms are the same address.
	if got, ok := n.Lookup(netip.MustParseAddr("::ffff:192.168.1.10"), netip.MustParseAddr("::ffff:203.0.113.5")); !ok || got != "one.example" {
		t.Errorf("mapped → %q %v", got, ok)
	}
	clock.Advance(30*time.Second + time.Minute - time.Second)
	if _, ok := n.Lookup(a, dst); !ok {
		t.Error("expired before TTL + grace")
	}
	clock.Advance(time.Second)
	if _, ok := n.Lookup(a, dst); ok {
		t.Error("kept past TTL + grace")
	}
	if n.Len() != 2 || n.Sweep() != 2 || n.Len() != 0 {
		t.Errorf("sweep: %d left", n.Len())
	}
	// Slots freed by the sweep are reused.
	n.Add(a, dst, "three.example", time.Second)
	if len(n.slots) != 2 {
		t.Errorf("%d slots after reuse, want 2", len(n.slots))
	}
}

func TestNamesBoundedLRU(t *testing.T) {
	clock := newFakeClock()
	n := testNames(3, clock)
	c := netip.MustParseAddr("10.0.0.1")
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	for i := 1; i <= 3; i++ {
		n.Add(c, ip(i), "n"+strconv.Itoa(i), time.Hour)
	}
	n.Add(c, ip(1), "n1", time.Hour) // recorded again: the most recent
	n.Add(c, ip(4), "n4", time.Hour) // evicts the least recently recorded: 2
	if n.Len() != 3 {
		t.Fatalf("%d entries", n.Len())
	}
	for i, want := range []bool{1: true, 2: false, 3: true, 4: true} {
		if i == 0 {
			continue
		}
		if _, ok := n.Lookup(c, ip(i)); ok != want {
			t.Errorf("ip %d present %v, want %v", i, ok, want)
		}
	}
}

func TestNamesRecordSkipsOtherRecords(t *testing.T) {
	n := NewNames(10, 0)
	c := netip.MustParseAddr("10.0.0.1")
	n.Record(c, "x.example", []mdns.RR{
		rr("x.example. 60 IN CNAME y.example."), rr("y.example. 60 IN A 192.0.2.1"),
		rr("y.example. 60 IN AAAA 2001:db8::2"), rr("y.example. 60 IN A 0.0.0.0"), rr("y.example. 60 IN TXT hi"),
	})
	if n.Len() != 2 {
		t.Errorf("%d mappings, want 2 (A and AAAA, not the unspecified address)", n.Len())
	}
	var nilNames *Names
	nilNames.Record(c, "x", nil)
	if _, ok := nilNames.Lookup(c, c); ok {
		t.Error("nil Names found something")
	}
}

// TestNamesMemory measures what a mapping costs: the goal is 100,000 in 20 MiB.
func TestNamesMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	const count = 100000
	per := namesBytesPerMapping(count)
	t.Logf("%.0f bytes per mapping, %.1f MiB for %d", per, per*count/(1<<20), count)
	if per*count > 20<<20 {
		t.Errorf("%d mappings take %.1f MiB, over 20 MiB", count, per*count/(1<<20))
	}
}

func namesBytesPerMapping(count int) float64 {
	// Names as the handler gives them, one string per answer (counted: the map keeps them).
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	names := make([]string, count)
	for i := range names {
		names[i] = "host" + strconv.Itoa(i) + ".example.com"
	}
	n := NewNames(count, 0)
	for i := 0; i < count; i++ {
		client := netip.AddrFrom4([4]byte{192, 168, 1, byte(i % 200)})
		dst := netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)})
		n.Add(client, dst, names[i], time.Hour)
	}
	names = nil
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(n)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(count)
}

func BenchmarkNamesBytesPerMapping(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.ReportMetric(namesBytesPerMapping(100000), "B/mapping")
	}
}

func BenchmarkNamesLookup(b *testing.B) {
	n := NewNames(100000, 0)
	c := netip.MustParseAddr("192.168.1.10")
	for i := 0; i < 100000; i++ {
		n.Add(c, netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)}), "x.example", time.Hour)
	}
	dst := netip.AddrFrom4([4]byte{100, 0, 1, 2})
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lookup(c, dst)
		}
	})
}
