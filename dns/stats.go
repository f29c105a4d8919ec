package dns

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Stats counts what the DNS server does, for the gateway to export. Safe for concurrent use;
// a nil *Stats counts nothing.
type Stats struct {
	cacheHits, cacheMisses, coalesced atomic.Uint64
	rateLimited, refusedSource        atomic.Uint64
	malformed, garbage, overloaded    atomic.Uint64

	mu       sync.Mutex
	queries  map[QueryCountKey]uint64
	upErrors map[string]uint64
	latency  map[string]*latency
}

// QueryCountKey labels a query counter.
type QueryCountKey struct {
	Rule   string
	Action string // "resolve", "block", "local", "fake" (answered from the fake-ip pool), "invalid"
}

// LatencyBuckets are the upper bounds (seconds) of the upstream latency histogram, as the
// gateway's dial histogram.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

type latency struct {
	counts []uint64 // per bucket, the last one +Inf
	sum    float64
	n      uint64
}

// Histogram is a cumulative histogram as Prometheus exposes it (admin.Histogram's shape).
type Histogram struct {
	Upstream string
	Count    uint64
	Sum      float64            // seconds
	Buckets  map[float64]uint64 // upper bound (seconds) → cumulative count
}

// StatsSnapshot is every counter at one moment.
type StatsSnapshot struct {
	Queries        map[QueryCountKey]uint64
	CacheHits      uint64            // answered from the cache
	CacheMisses    uint64            // asked upstream
	Coalesced      uint64            // answered by an identical query in progress
	UpstreamErrors map[string]uint64 // by exchanger: failed exchanges (timeouts, garbage, refused dials)
	Garbage        uint64            // of which answers that did not answer the query
	RateLimited    uint64            // queries dropped: their source was over its rate
	RefusedSource  uint64            // queries dropped: their source is not allowed
	Malformed      uint64            // queries that could not be parsed or were invalid (FORMERR, NOTIMP)
	Overloaded     uint64            // UDP queries dropped: maxPending were already waiting for upstream
	Latency        []Histogram       // successful upstream exchanges, by exchanger
}

func (s *Stats) query(rule, action string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.queries == nil {
		s.queries = map[QueryCountKey]uint64{}
	}
	s.queries[QueryCountKey{rule, action}]++
	s.mu.Unlock()
}

func (s *Stats) upstream(name string, d time.Duration, err error, garbage bool) {
	if s == nil {
		return
	}
	if garbage {
		s.garbage.Add(1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.upErrors == nil {
			s.upErrors = map[string]uint64{}
		}
		s.upErrors[name]++
		return
	}
	if s.latency == nil {
		s.latency = map[string]*latency{}
	}
	l := s.latency[name]
	if l == nil {
		l = &latency{counts: make([]uint64, len(LatencyBuckets)+1)}
		s.latency[name] = l
	}
	sec := d.Seconds()
	l.counts[sort.SearchFloat64s(LatencyBuckets, sec)]++
	l.sum += sec
	l.n++
}

// counter names one of the plain counters.
type counter uint8

const (
	cntCacheHit counter = iota
	cntCacheMiss
	cntCoalesced
	cntRateLimited
	cntRefusedSource
	cntMalformed
	cntOverloaded
)

func (s *Stats) add(c counter) {
	if s == nil {
		return
	}
	switch c {
	case cntCacheHit:
		s.cacheHits.Add(1)
	case cntCacheMiss:
		s.cacheMisses.Add(1)
	case cntCoalesced:
		s.coalesced.Add(1)
	case cntRateLimited:
		s.rateLimited.Add(1)
	case cntRefusedSource:
		s.refusedSource.Add(1)
	case cntMalformed:
		s.malformed.Add(1)
	case cntOverloaded:
		s.overloaded.Add(1)
	}
}

// Snapshot copies every counter.
func (s *Stats) Snapshot() StatsSnapshot {
	if s == nil {
		return StatsSnapshot{}
	}
	snap := StatsSnapshot{
		CacheHits: s.cacheHits.Load(), CacheMisses: s.cacheMisses.Load(), Coalesced: s.coalesced.Load(),
		RateLimited: s.rateLimited.Load(), RefusedSource: s.refusedSource.Load(),
		Malformed: s.malformed.Load(), Garbage: s.garbage.Load(), Overloaded: s.overloaded.Load(),
		Queries: map[QueryCountKey]uint64{}, UpstreamErrors: map[string]uint64{},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.queries {
		snap.Queries[k] = v
	}
	for k, v := range s.upErrors {
		snap.UpstreamErrors[k] = v
	}
	for name, l := range s.latency {
		h := Histogram{Upstream: name, Sum: l.sum, Count: l.n, Buckets: make(map[float64]uint64, len(LatencyBuckets))}
		var cum uint64
		for i, b := range LatencyBuckets {
			cum += l.counts[i]
			h.Buckets[b] = cum
		}
		snap.Latency = append(snap.Latency, h)
	}
	sort.Slice(snap.Latency, func(i, j int) bool { return snap.Latency[i].Upstream < snap.Latency[j].Upstream })
	return snap
}
