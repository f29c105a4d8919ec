package admin

import (
	"encoding/json"
	"net/http"
	"testing"
)

// GET /dns with DNS on: the latency histograms' buckets (float bounds, which encoding/json
// cannot key a map with) come out keyed by their bound as a string, and the body is the
// DNSStats, not empty.
func TestDNSStatsAsJSON(t *testing.T) {
	c := newFakeController()
	c.snap.DNS = &DNSStats{
		CacheHits: 3, CacheMisses: 1,
		Latency: []Histogram{{Upstream: "udp://10.0.1.1:53", Count: 2, Sum: 0.012,
			Buckets: map[float64]uint64{0.005: 1, 0.025: 2, 1e-05: 0}}},
	}
	code, body := do(t, Handler(c, "test"), "GET", "/dns", "")
	if code != http.StatusOK {
		t.Fatalf("GET /dns: %d %s", code, body)
	}
	var got struct {
		CacheHits uint64
		Latency   []struct {
			Upstream string
			Count    uint64
			Sum      float64
			Buckets  map[string]uint64
		}
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET /dns is not JSON: %v: %q", err, body)
	}
	if got.CacheHits != 3 || len(got.Latency) != 1 {
		t.Fatalf("GET /dns: %s", body)
	}
	l := got.Latency[0]
	want := map[string]uint64{"0.005": 1, "0.025": 2, "1e-05": 0}
	if l.Upstream != "udp://10.0.1.1:53" || l.Count != 2 || l.Sum != 0.012 || len(l.Buckets) != len(want) {
		t.Fatalf("latency %+v", l)
	}
	for k, v := range want {
		if l.Buckets[k] != v {
			t.Errorf("bucket %s: %d, want %d (%v)", k, l.Buckets[k], v, l.Buckets)
		}
	}
}
