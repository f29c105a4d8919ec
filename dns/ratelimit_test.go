package dns

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateLimiterBurstAndRefill(t *testing.T) {
	clock := newFakeClock()
	l := newRateLimiter(10, 5, clock.Now)
	a := netip.MustParseAddr("10.0.0.1")
	n := 0
	for i := 0; i < 20; i++ {
		if l.allow(a) {
			n++
		}
	}
	if n != 5 {
		t.Errorf("%d allowed at once, want the burst of 5", n)
	}
	clock.Advance(300 * time.Millisecond) // 3 tokens at 10/s
	n = 0
	for i := 0; i < 20; i++ {
		if l.allow(a) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d allowed after 300 ms at 10/s, want 3", n)
	}
	clock.Advance(time.Hour)
	n = 0
	for i := 0; i < 20; i++ {
		if l.allow(a) {
			n++
		}
	}
	if n != 5 {
		t.Errorf("%d allowed after an hour, want the burst (5), not more", n)
	}
}

func TestRateLimiterTableBounded(t *testing.T) {
	clock := newFakeClock()
	l := newRateLimiter(10, 5, clock.Now)
	for i := 0; i < 3*maxSources; i++ {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if len(l.buckets) > maxSources {
		t.Errorf("%d buckets, over %d", len(l.buckets), maxSources)
	}
	var unlimited *rateLimiter
	if !unlimited.allow(netip.MustParseAddr("10.0.0.1")) || !newRateLimiter(-1, 0, clock.Now).allow(netip.MustParseAddr("10.0.0.1")) {
		t.Error("no limit limited")
	}
}
