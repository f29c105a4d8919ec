package admin

import (
	"bytes"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parseExposition parses body with the Prometheus text parser (strict, legacy names), failing
// the test on any error.
func parseExposition(t testing.TB, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the Prometheus text parser refuses /metrics: %v\n%s", err, body)
	}
	return fams
}

func scrape(t *testing.T, src Source) string {
	t.Helper()
	rec := httptestGet(t, Handler(src, "v1.2.3"), "/metrics")
	if rec.code != 200 {
		t.Fatalf("status %d: %s", rec.code, rec.body)
	}
	if rec.contentType != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", rec.contentType)
	}
	return rec.body
}

// The whole of /metrics parses with the official parser, and every series socksgate, the Go
// runtime and the process promise is there with its type.
func TestMetricsParseWithEveryFamilyTyped(t *testing.T) {
	fams := parseExposition(t, scrape(t, testSource))
	want := map[string]dto.MetricType{
		"socksgate_flows_active":                  dto.MetricType_GAUGE,
		"socksgate_flows_total":                   dto.MetricType_COUNTER,
		"socksgate_flow_bytes_total":              dto.MetricType_COUNTER,
		"socksgate_flows_refused_total":           dto.MetricType_COUNTER,
		"socksgate_dial_duration_seconds":         dto.MetricType_HISTOGRAM,
		"socksgate_upstream_up":                   dto.MetricType_GAUGE,
		"socksgate_udp_sessions":                  dto.MetricType_GAUGE,
		"socksgate_udp_sessions_total":            dto.MetricType_COUNTER,
		"socksgate_udp_reply_bind_failures_total": dto.MetricType_COUNTER,
		"socksgate_rules_restored_total":          dto.MetricType_COUNTER,
		"socksgate_socks_udp_dropped_total":       dto.MetricType_COUNTER,
		"socksgate_build_info":                    dto.MetricType_GAUGE,
		"go_goroutines":                           dto.MetricType_GAUGE,
		"go_threads":                              dto.MetricType_GAUGE,
		"go_info":                                 dto.MetricType_GAUGE,
		"go_gc_duration_seconds":                  dto.MetricType_SUMMARY,
		"go_gc_gogc_percent":                      dto.MetricType_GAUGE,
		"go_gc_gomemlimit_bytes":                  dto.MetricType_GAUGE,
		"go_sched_gomaxprocs_threads":             dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes":                 dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":           dto.MetricType_COUNTER,
		"go_memstats_heap_inuse_bytes":            dto.MetricType_GAUGE,
		"go_memstats_heap_sys_bytes":              dto.MetricType_GAUGE,
		"go_memstats_mallocs_total":               dto.MetricType_COUNTER,
		"go_memstats_frees_total":                 dto.MetricType_COUNTER,
		"go_memstats_sys_bytes":                   dto.MetricType_GAUGE,
		"go_memstats_next_gc_bytes":               dto.MetricType_GAUGE,
		"go_memstats_last_gc_time_seconds":        dto.MetricType_GAUGE,
	}
	if runtime.GOOS == "linux" {
		for name, typ := range map[string]dto.MetricType{
			"process_cpu_seconds_total":        dto.MetricType_COUNTER,
			"process_open_fds":                 dto.MetricType_GAUGE,
			"process_max_fds":                  dto.MetricType_GAUGE,
			"process_resident_memory_bytes":    dto.MetricType_GAUGE,
			"process_virtual_memory_bytes":     dto.MetricType_GAUGE,
			"process_virtual_memory_max_bytes": dto.MetricType_GAUGE,
			"process_start_time_seconds":       dto.MetricType_GAUGE,
		} {
			want[name] = typ
		}
	}
	for name, typ := range want {
		f := fams[name]
		switch {
		case f == nil:
			t.Errorf("no %s", name)
		case f.GetType() != typ:
			t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
		case f.GetHelp() == "" || len(f.GetMetric()) == 0:
			t.Errorf("%s: help %q, %d series", name, f.GetHelp(), len(f.GetMetric()))
		}
	}
	// Nothing but socksgate, Go and process series.
	for name := range fams {
		if !strings.HasPrefix(name, "socksgate_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("unexpected family %s", name)
		}
	}
	if n := len(fams["socksgate_flow_bytes_total"].GetMetric()); n != 4 {
		t.Errorf("socksgate_flow_bytes_total has %d series, want 4 (2 inbound/upstream pairs × up, down)", n)
	}
	if n := len(fams["socksgate_flows_total"].GetMetric()); n != 3 {
		t.Errorf("socksgate_flows_total has %d series, want 3", n)
	}
}

// The Go and process values are the live process's: plausible, not placeholders.
func TestMetricsRuntimeAndProcessValuesAreLive(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("process series are Linux-only")
	}
	fams := parseExposition(t, scrape(t, testSource))
	v := func(name string) float64 {
		m := fams[name].GetMetric()
		if len(m) != 1 {
			t.Fatalf("%s: %d series", name, len(m))
		}
		switch fams[name].GetType() {
		case dto.MetricType_COUNTER:
			return m[0].GetCounter().GetValue()
		default:
			return m[0].GetGauge().GetValue()
		}
	}
	now := float64(time.Now().UnixNano()) / 1e9
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name   string
		lo, hi float64
	}{
		{"go_goroutines", 1, 1e6},
		{"go_threads", 1, 1e5},
		{"go_memstats_heap_inuse_bytes", 1, 1 << 40},
		{"go_memstats_sys_bytes", v("go_memstats_heap_inuse_bytes"), 1 << 40},
		{"go_sched_gomaxprocs_threads", float64(runtime.GOMAXPROCS(0)), float64(runtime.GOMAXPROCS(0))},
		{"process_resident_memory_bytes", 1 << 20, 1 << 40},
		{"process_virtual_memory_bytes", v("process_resident_memory_bytes"), math.Inf(1)},
		{"process_open_fds", 3, float64(len(entries) + 16)},
		{"process_max_fds", v("process_open_fds"), math.Inf(1)},
		{"process_cpu_seconds_total", 0, 1e6},
		{"process_start_time_seconds", now - 24*3600, now},
	}
	for _, c := range checks {
		if got := v(c.name); !(got >= c.lo && got <= c.hi) {
			t.Errorf("%s = %v, want in [%v, %v]", c.name, got, c.lo, c.hi)
		}
	}
}

// Label values an operator controls (upstream and group names) cannot break the exposition:
// a quote, a backslash, a newline, a brace or invalid UTF-8 come back from the parser as
// written (invalid UTF-8 as U+FFFD).
func TestMetricsEscapeHostileLabelValues(t *testing.T) {
	hostile := []string{
		`a"b`,
		`back\slash`,
		"new\nline",
		`"} 1` + "\n" + `injected_total 666 #`,
		`\n literally`,
		`trailing\`,
		"bad\xffutf8",
		"",
		"ünïcödé ✓",
	}
	var ups []Upstream
	var ended []FlowCount
	for i, h := range hostile {
		ups = append(ups, Upstream{Name: h, Group: hostile[len(hostile)-1-i], Up: i%2 == 0})
		ended = append(ended, FlowCount{Inbound: "redirect", Upstream: h, Outcome: "ok", Flows: uint64(i + 1)})
	}
	src := fakeSource{snap: Snapshot{Ended: ended, Refused: map[string]uint64{"quote\"reason": 1}}, ups: ups}
	body := scrape(t, src)
	fams := parseExposition(t, body)
	if fams["injected_total"] != nil {
		t.Fatalf("a label value injected a series:\n%s", body)
	}
	up := map[[2]string]float64{}
	for _, m := range fams["socksgate_upstream_up"].GetMetric() {
		up[[2]string{label(m, "upstream"), label(m, "group")}] = m.GetGauge().GetValue()
	}
	flows := map[string]float64{}
	for _, m := range fams["socksgate_flows_total"].GetMetric() {
		flows[label(m, "upstream")] = m.GetCounter().GetValue()
	}
	for i, h := range hostile {
		want := strings.ToValidUTF8(h, "\uFFFD")
		g := strings.ToValidUTF8(hostile[len(hostile)-1-i], "\uFFFD")
		if v, ok := up[[2]string{want, g}]; !ok || v != float64((i+1)%2) {
			t.Errorf("upstream_up{upstream=%q,group=%q} = %v, %v", want, g, v, ok)
		}
		if v := flows[want]; v != float64(i+1) {
			t.Errorf("flows_total{upstream=%q} = %v, want %d", want, v, i+1)
		}
	}
	if n := len(fams["socksgate_upstream_up"].GetMetric()); n != len(hostile) {
		t.Errorf("%d upstream_up series, want %d", n, len(hostile))
	}
	if m := fams["socksgate_flows_refused_total"].GetMetric(); len(m) != 1 || label(m[0], "reason") != `quote"reason` {
		t.Errorf("refused: %v", m)
	}
	if !utf8.ValidString(body) {
		t.Error("the exposition is not valid UTF-8")
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return "<none>"
}

// Histograms come out as Prometheus requires whatever order the snapshot's map iterates in:
// buckets by ascending bound, counts cumulative, a +Inf bucket equal to _count, the _sum.
func TestMetricsHistogramInvariants(t *testing.T) {
	bounds := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	buckets := map[float64]uint64{}
	var c uint64
	for i, b := range bounds {
		c += uint64(i % 3)
		buckets[b] = c
	}
	src := fakeSource{snap: Snapshot{DialLatency: []Histogram{
		{Upstream: "socks5://b", Count: c + 4, Sum: 42.5, Buckets: buckets},
		{Upstream: "direct", Count: 0, Sum: 0, Buckets: map[float64]uint64{.1: 0, 1: 0}},
		{Upstream: "none", Count: 1, Sum: 0.2},
	}}}
	body := scrape(t, src)
	fams := parseExposition(t, body)
	hs := fams["socksgate_dial_duration_seconds"].GetMetric()
	if len(hs) != 3 {
		t.Fatalf("%d histograms, want 3:\n%s", len(hs), body)
	}
	byUp := map[string]*dto.Histogram{}
	for _, m := range hs {
		byUp[label(m, "upstream")] = m.GetHistogram()
	}
	for _, h := range src.snap.DialLatency {
		got := byUp[h.Upstream]
		if got == nil {
			t.Errorf("no histogram for %s", h.Upstream)
			continue
		}
		bs := got.GetBucket()
		if len(bs) != len(h.Buckets)+1 {
			t.Errorf("%s: %d buckets, want %d and +Inf", h.Upstream, len(bs), len(h.Buckets))
			continue
		}
		for i, b := range bs {
			if i > 0 && (b.GetUpperBound() <= bs[i-1].GetUpperBound() || b.GetCumulativeCount() < bs[i-1].GetCumulativeCount()) {
				t.Errorf("%s: bucket %d (le=%v, %d) out of order after le=%v, %d", h.Upstream, i,
					b.GetUpperBound(), b.GetCumulativeCount(), bs[i-1].GetUpperBound(), bs[i-1].GetCumulativeCount())
			}
			if !math.IsInf(b.GetUpperBound(), 1) && b.GetCumulativeCount() != h.Buckets[b.GetUpperBound()] {
				t.Errorf("%s: le=%v count %d, want %d", h.Upstream, b.GetUpperBound(), b.GetCumulativeCount(), h.Buckets[b.GetUpperBound()])
			}
		}
		last := bs[len(bs)-1]
		if !math.IsInf(last.GetUpperBound(), 1) || last.GetCumulativeCount() != h.Count || got.GetSampleCount() != h.Count || got.GetSampleSum() != h.Sum {
			t.Errorf("%s: last bucket le=%v %d, count %d, sum %v; want +Inf %d, %d, %v", h.Upstream,
				last.GetUpperBound(), last.GetCumulativeCount(), got.GetSampleCount(), got.GetSampleSum(), h.Count, h.Count, h.Sum)
		}
	}
	// The le label comes last, after the series' own labels, as the Prometheus client writes it.
	if !strings.Contains(body, `socksgate_dial_duration_seconds_bucket{upstream="direct",le="0.1"} 0`+"\n") {
		t.Errorf("le not last or misformatted:\n%s", body)
	}
}

// Two scrapes of the same snapshot write the socksgate series identically, sorted by family
// name and then label values, whatever order the snapshot's maps and slices are in.
func TestMetricsAreDeterministicAndSorted(t *testing.T) {
	src := testSource
	src.snap.Refused = map[string]uint64{"loop": 4, "limit-total": 1, "limit-source": 2, "bad-dst": 3}
	src.snap.Ended = slices.Clone(src.snap.Ended)
	slices.Reverse(src.snap.Ended)
	socksgate := func(body string) []string {
		var ls []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "socksgate_") {
				ls = append(ls, l)
			}
		}
		return ls
	}
	first := socksgate(scrape(t, testSource))
	for range 5 {
		if again := socksgate(scrape(t, testSource)); !slices.Equal(first, again) {
			t.Fatalf("scrapes differ:\n%s\n---\n%s", strings.Join(first, "\n"), strings.Join(again, "\n"))
		}
	}
	reordered := socksgate(scrape(t, src))
	want := []string{
		`socksgate_flows_refused_total{reason="bad-dst"} 3`,
		`socksgate_flows_refused_total{reason="limit-source"} 2`,
		`socksgate_flows_refused_total{reason="limit-total"} 1`,
		`socksgate_flows_refused_total{reason="loop"} 4`,
	}
	var refused []string
	for _, l := range reordered {
		if strings.HasPrefix(l, "socksgate_flows_refused_total") {
			refused = append(refused, l)
		}
	}
	if !slices.Equal(refused, want) {
		t.Errorf("refused series %q, want %q", refused, want)
	}
	var names []string
	for _, l := range strings.Split(scrape(t, src), "\n") {
		if name, ok := strings.CutPrefix(l, "# TYPE "); ok {
			names = append(names, strings.Fields(name)[0])
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("families not sorted by name: %q", names)
	}
}

// The writer's number formatting and escaping, line by line, against what the Prometheus
// client wrote.
func TestExpoWritesTheTextFormat(t *testing.T) {
	var e expo
	e.gauge("g", "help with \\ and\nnewline", 1.5e6, "b", "2", "a", `x"y`)
	e.gauge("g", "", 0.25, "b", "1", "a", `x"y`)
	e.gauge("g", "", 7, "b", "1", "a", `x"y`) // repeated: the first is kept
	e.counter("c_total", "counts", 100000)
	e.gauge("special", "nan and infinities", math.NaN(), "k", "nan")
	e.gauge("special", "", math.Inf(1), "k", "pinf")
	e.gauge("special", "", math.Inf(-1), "k", "ninf")
	e.gauge("special", "", 1e-5, "k", "small")
	e.histogram("h", "a histogram", map[float64]uint64{2.5: 3, 1e6: 4, math.Inf(1): 99}, 5, 10.5, "u", "z")
	e.summary("s", "a summary", map[float64]float64{1: 3, 0: 0.5, 0.5: 1}, 9, 12)
	var buf bytes.Buffer
	n, err := e.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo = %d, %v; wrote %d", n, err, buf.Len())
	}
	want := `# HELP c_total counts
# TYPE c_total counter
c_total 100000
# HELP g help with \\ and\nnewline
# TYPE g gauge
g{a="x\"y",b="1"} 0.25
g{a="x\"y",b="2"} 1.5e+06
# HELP h a histogram
# TYPE h histogram
h_bucket{u="z",le="2.5"} 3
h_bucket{u="z",le="1e+06"} 4
h_bucket{u="z",le="+Inf"} 5
h_sum{u="z"} 10.5
h_count{u="z"} 5
# HELP s a summary
# TYPE s summary
s{quantile="0"} 0.5
s{quantile="0.5"} 1
s{quantile="1"} 3
s_sum 12
s_count 9
# HELP special nan and infinities
# TYPE special gauge
special{k="nan"} NaN
special{k="ninf"} -Inf
special{k="pinf"} +Inf
special{k="small"} 1e-05
`
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
	fams := parseExposition(t, buf.String())
	if got := fams["g"].GetHelp(); got != "help with \\ and\nnewline" {
		t.Errorf("help parsed back as %q", got)
	}
	if len(fams) != 5 {
		t.Errorf("%d families", len(fams))
	}
}

// An empty expo writes nothing, and a family gets HELP/TYPE only once it has a series.
func TestExpoEmptyWritesNothing(t *testing.T) {
	var e expo
	var buf bytes.Buffer
	if n, err := e.WriteTo(&buf); n != 0 || err != nil || buf.Len() != 0 {
		t.Fatalf("empty expo wrote %d %v %q", n, err, buf.String())
	}
	body := scrape(t, fakeSource{})
	for _, absent := range []string{"socksgate_flows_active", "socksgate_flows_total", "socksgate_dial_duration_seconds", "socksgate_upstream_up"} {
		if strings.Contains(body, "# TYPE "+absent+" ") {
			t.Errorf("%s written with no series", absent)
		}
	}
	parseExposition(t, body)
}

// FuzzExpoLabelsAndHelp: whatever an upstream, group or reason is called and whatever a help
// text says, the official parser accepts the exposition and reads the value back (invalid
// UTF-8 as U+FFFD).
func FuzzExpoLabelsAndHelp(f *testing.F) {
	f.Add("main", "pool", "help", 1.0)
	f.Add(`a"b\c`, "new\nline", `back\slash "quoted"`+"\n", 0.5)
	f.Add("\xff\xfe", `"}`, "#", math.Inf(-1))
	f.Add("", "", "", math.NaN())
	f.Add(`\`, `\\n`, "\\", 1e300)
	f.Fuzz(func(t *testing.T, v1, v2, help string, val float64) {
		var e expo
		e.gauge("fuzz_gauge", help, val, "a", v1, "b", v2)
		e.histogram("fuzz_hist", help, map[float64]uint64{val: 1, 1: 1}, 2, val, "a", v1)
		var buf bytes.Buffer
		e.WriteTo(&buf)
		fams := parseExposition(t, buf.String())
		m := fams["fuzz_gauge"].GetMetric()
		if len(m) != 1 {
			t.Fatalf("%d series:\n%s", len(m), buf.String())
		}
		if got, want := label(m[0], "a"), strings.ToValidUTF8(v1, "\uFFFD"); got != want {
			t.Errorf("a = %q, want %q", got, want)
		}
		if got, want := label(m[0], "b"), strings.ToValidUTF8(v2, "\uFFFD"); got != want {
			t.Errorf("b = %q, want %q", got, want)
		}
		if got := m[0].GetGauge().GetValue(); got != val && !(math.IsNaN(got) && math.IsNaN(val)) {
			t.Errorf("value %v, want %v", got, val)
		}
		// The format cannot carry a help text's leading blanks: the parser skips them.
		if got, want := fams["fuzz_gauge"].GetHelp(), strings.TrimLeft(strings.ToValidUTF8(help, "\uFFFD"), " \t"); got != want {
			t.Errorf("help %q, want %q", got, want)
		}
	})
}

type response struct {
	code              int
	body, contentType string
}

func httptestGet(t *testing.T, h http.Handler, path string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return response{rec.Code, rec.Body.String(), rec.Header().Get("Content-Type")}
}

// The SOCKS UDP drop counters are written for every reason from the start, zeros included, so
// that rate() and alerts see each series before its first drop.
func TestMetricsSOCKSUDPDropsHaveEveryReason(t *testing.T) {
	fams := parseExposition(t, scrape(t, fakeSource{}))
	got := map[string]float64{}
	for _, m := range fams["socksgate_socks_udp_dropped_total"].GetMetric() {
		got[label(m, "reason")] = m.GetCounter().GetValue()
	}
	want := map[string]float64{"foreign_source": 0, "fragment": 0, "malformed": 0}
	if len(got) != len(want) {
		t.Fatalf("socksgate_socks_udp_dropped_total series %v, want %v", got, want)
	}
	for r, v := range want {
		if g, ok := got[r]; !ok || g != v {
			t.Errorf("reason %q: %v (present %v), want %v", r, g, ok, v)
		}
	}
}
