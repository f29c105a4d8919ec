package dns

import (
	"net/netip"
	"sync"
	"time"
)

// Default per-source rate limit: a LAN host loading a heavy page asks a few hundred names in a
// second or two; a flood asks thousands.
const (
	DefaultRate  = 200 // queries per second
	DefaultBurst = 400
)

// maxSources bounds the rate limiter's table; past it, idle sources are forgotten.
const maxSources = 16384

// rateLimiter is a token bucket per source address.
type rateLimiter struct {
	rate  float64 // tokens per second; <= 0: unlimited
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	if burst <= 0 {
		burst = max(int(rate), 1)
	}
	return &rateLimiter{rate: rate, burst: float64(burst), now: now, buckets: map[netip.Addr]*bucket{}}
}

// allow takes a token from src's bucket, reporting whether there was one.
func (l *rateLimiter) allow(src netip.Addr) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= maxSources {
			l.forgetIdle(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[src] = b
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forgetIdle drops the buckets that have refilled (their sources are idle); if none has, an
// arbitrary half, so that the table stays bounded under a spoofed flood.
func (l *rateLimiter) forgetIdle(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < maxSources/2 {
			break
		}
		delete(l.buckets, k)
	}
}
