package admin

import (
	"encoding/json"
	"strconv"
)

// MarshalJSON writes a histogram with its bucket bounds as strings ("0.005", as Prometheus
// writes le): encoding/json cannot key a map with a float, and GET /dns, which encodes the
// DNS latency histograms, would otherwise fail and answer an empty body.
func (h Histogram) MarshalJSON() ([]byte, error) {
	buckets := make(map[string]uint64, len(h.Buckets))
	for le, n := range h.Buckets {
		buckets[strconv.FormatFloat(le, 'g', -1, 64)] = n
	}
	return json.Marshal(struct {
		Upstream string
		Count    uint64
		Sum      float64
		Buckets  map[string]uint64
	}{h.Upstream, h.Count, h.Sum, buckets})
}
