package dns

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func answerWith(q *mdns.Msg, rcode int, rrs ...string) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(q, rcode)
	for _, s := range rrs {
		r := rr(s)
		if r.Header().Rrtype == mdns.TypeSOA {
			m.Ns = append(m.Ns, r)
		} else {
			m.Answer = append(m.Answer, r)
		}
	}
	return m
}

func testCache(clock *fakeClock) *Cache {
	c := NewCache(100, 1<<20)
	c.now = clock.Now
	return c
}

func TestCacheHonoursTTL(t *testing.T) {
	clock := newFakeClock()
	c := testCache(clock)
	k := CacheKey{Name: "a.example", Type: mdns.TypeA, Class: mdns.ClassINET}
	q := query("a.example", mdns.TypeA)
	c.Put(k, answerWith(q, 0, "a.example. 300 IN CNAME b.example.", "b.example. 100 IN A 192.0.2.1"))
	clock.Advance(30 * time.Second)
	r := c.Get(k)
	if r == nil {
		t.Fatal("no hit")
	}
	if ttl := r.Answer[0].Header().Ttl; ttl != 270 {
		t.Errorf("CNAME TTL %d after 30s, want 270", ttl)
	}
	if ttl := r.Answer[1].Header().Ttl; ttl != 70 {
		t.Errorf("A TTL %d after 30s, want 70", ttl)
	}
	clock.Advance(70 * time.Second) // the lowest TTL (100) is over
	if c.Get(k) != nil {
		t.Error("hit after the answer's lowest TTL")
	}
	if c.Len() != 0 {
		t.Errorf("%d entries left", c.Len())
	}
}

func TestCacheNegative(t *testing.T) {
	clock := newFakeClock()
	c := testCache(clock)
	q := query("nx.example", mdns.TypeA)
	k := CacheKey{Name: "nx.example", Type: mdns.TypeA}
	// RFC 2308 §5: min(SOA TTL, SOA MINIMUM) = 60.
	c.Put(k, answerWith(q, mdns.RcodeNameError, "example. 3600 IN SOA ns.example. h.example. 1 2 3 4 60"))
	clock.Advance(59 * time.Second)
	if r := c.Get(k); r == nil || r.Rcode != mdns.RcodeNameError {
		t.Fatalf("NXDOMAIN not cached: %v", r)
	}
	clock.Advance(time.Second)
	if c.Get(k) != nil {
		t.Error("NXDOMAIN cached past the SOA minimum")
	}
	// NODATA with a SOA whose TTL is lower than its minimum.
	c.Put(k, answerWith(q, mdns.RcodeSuccess, "example. 10 IN SOA ns.example. h.example. 1 2 3 4 600"))
	clock.Advance(9 * time.Second)
	if c.Get(k) == nil {
		t.Error("NODATA not cached")
	}
	clock.Advance(time.Second)
	if c.Get(k) != nil {
		t.Error("NODATA cached past the SOA's TTL")
	}
	// Capped.
	c.MaxNegativeTTL = 5 * time.Second
	c.Put(k, answerWith(q, mdns.RcodeNameError, "example. 3600 IN SOA ns.example. h.example. 1 2 3 4 3600"))
	clock.Advance(5 * time.Second)
	if c.Get(k) != nil {
		t.Error("negative TTL not capped")
	}
}

func TestCacheDoesNotKeep(t *testing.T) {
	c := testCache(newFakeClock())
	q := query("x.example", mdns.TypeA)
	k := CacheKey{Name: "x.example", Type: mdns.TypeA}
	tc := answerWith(q, 0, "x.example. 300 IN A 192.0.2.1")
	tc.Truncated = true
	for name, m := range map[string]*mdns.Msg{
		"SERVFAIL":         answerWith(q, mdns.RcodeServerFailure),
		"REFUSED":          answerWith(q, mdns.RcodeRefused),
		"NXDOMAIN, no SOA": answerWith(q, mdns.RcodeNameError),
		"NODATA, no SOA":   answerWith(q, mdns.RcodeSuccess),
		"TTL 0":            answerWith(q, 0, "x.example. 0 IN A 192.0.2.1"),
		"truncated":        tc,
	} {
		c.Put(k, m)
		if c.Get(k) != nil {
			t.Errorf("%s was cached", name)
		}
	}
}

func TestCacheMaxTTL(t *testing.T) {
	clock := newFakeClock()
	c := testCache(clock)
	c.MaxTTL = time.Minute
	k := CacheKey{Name: "x.example", Type: mdns.TypeA}
	c.Put(k, answerWith(query("x.example", mdns.TypeA), 0, "x.example. 86400 IN A 192.0.2.1"))
	clock.Advance(time.Minute)
	if c.Get(k) != nil {
		t.Error("kept past MaxTTL")
	}
}

func TestCacheBoundedByEntriesLRU(t *testing.T) {
	c := NewCache(3, 1<<20)
	put := func(name string) CacheKey {
		k := CacheKey{Name: name, Type: mdns.TypeA}
		c.Put(k, answerWith(query(name, mdns.TypeA), 0, name+". 300 IN A 192.0.2.1"))
		return k
	}
	a, b, _ := put("a.example"), put("b.example"), put("c.example")
	c.Get(a) // a is now the most recently used; b the least
	put("d.example")
	if c.Len() != 3 {
		t.Fatalf("%d entries, want 3", c.Len())
	}
	if c.Get(b) != nil || c.Get(a) == nil {
		t.Error("evicted the wrong entry: want the least recently used (b) gone, a kept")
	}
}

func TestCacheBoundedByBytes(t *testing.T) {
	c := NewCache(1000, 2000)
	for i := 0; i < 50; i++ {
		name := "n" + itoa(i) + ".example"
		c.Put(CacheKey{Name: name, Type: mdns.TypeA}, answerWith(query(name, mdns.TypeA), 0, name+". 300 IN A 192.0.2.1"))
		if c.Bytes() > 2000 {
			t.Fatalf("%d bytes accounted, over the 2000 bound", c.Bytes())
		}
	}
	if c.Len() == 0 || c.Len() >= 50 {
		t.Errorf("%d entries", c.Len())
	}
	c.Purge()
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Errorf("after Purge: %d entries, %d bytes", c.Len(), c.Bytes())
	}
}

func TestCacheKeyedByWayOut(t *testing.T) {
	c := NewCache(0, 0)
	var na, nb atomic.Int64
	a, b := staticExchanger("a", &na), staticExchanger("b", &nb)
	fetch := func(x Exchanger) func(context.Context) (*mdns.Msg, error) {
		return func(ctx context.Context) (*mdns.Msg, error) { return x.Exchange(ctx, query("x.example", mdns.TypeA)) }
	}
	for _, x := range []Exchanger{a, b, a, b} {
		k := CacheKey{Way: wayKey(x), Name: "x.example", Type: mdns.TypeA}
		if _, _, err := c.Resolve(context.Background(), k, fetch(x)); err != nil {
			t.Fatal(err)
		}
	}
	if na.Load() != 1 || nb.Load() != 1 {
		t.Errorf("asked a %d and b %d times, want once each: a way out's answers are its own", na.Load(), nb.Load())
	}
}

func TestCacheCoalescesIdenticalQueries(t *testing.T) {
	c := NewCache(0, 0)
	var fetches atomic.Int64
	release := make(chan struct{})
	entered := make(chan struct{})
	fetch := func(ctx context.Context) (*mdns.Msg, error) {
		if fetches.Add(1) == 1 {
			close(entered)
		}
		<-release
		return answerWith(query("x.example", mdns.TypeA), 0, "x.example. 300 IN A 192.0.2.1"), nil
	}
	k := CacheKey{Name: "x.example", Type: mdns.TypeA}
	const n = 20
	var wg sync.WaitGroup
	results := make(chan Resolution, n)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, res, _ := c.Resolve(context.Background(), k, fetch)
		results <- res
	}()
	<-entered
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, res, err := c.Resolve(context.Background(), k, fetch)
			if err != nil || len(r.Answer) != 1 {
				t.Errorf("coalesced: %v %v", r, err)
			}
			results <- res
		}()
	}
	// Followers that come after the flight ends hit the cache: either way, one fetch.
	c.mu.Lock()
	if len(c.flights) != 1 {
		t.Errorf("%d flights, want 1", len(c.flights))
	}
	c.mu.Unlock()
	close(release)
	wg.Wait()
	close(results)
	if fetches.Load() != 1 {
		t.Errorf("%d fetches for %d identical queries, want 1", fetches.Load(), n)
	}
}

func TestCacheResolveErrorNotCached(t *testing.T) {
	c := NewCache(0, 0)
	k := CacheKey{Name: "x.example", Type: mdns.TypeA}
	calls := 0
	fetch := func(ctx context.Context) (*mdns.Msg, error) { calls++; return nil, errors.New("down") }
	for i := 0; i < 2; i++ {
		if _, _, err := c.Resolve(context.Background(), k, fetch); err == nil {
			t.Fatal("no error")
		}
	}
	if calls != 2 {
		t.Errorf("%d calls, want 2: failures are not cached", calls)
	}
}

func TestNilCache(t *testing.T) {
	var c *Cache
	r, res, err := c.Resolve(context.Background(), CacheKey{}, func(context.Context) (*mdns.Msg, error) { return new(mdns.Msg), nil })
	if r == nil || res != FromUpstream || err != nil || c.Len() != 0 {
		t.Error("nil cache")
	}
}
