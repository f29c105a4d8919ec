package admin

import (
	"bufio"
	"cmp"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// contentType is what /metrics answers: the Prometheus text exposition format 0.0.4.
const contentType = "text/plain; version=0.0.4; charset=utf-8"

// Metric types as the TYPE line names them.
const (
	typeGauge     = "gauge"
	typeCounter   = "counter"
	typeHistogram = "histogram"
	typeSummary   = "summary"
)

// expo gathers the metric families of one scrape and writes them in the Prometheus text
// exposition format 0.0.4: families sorted by name, each with its HELP and TYPE lines, its
// series sorted by label values, label values and HELP text escaped as the format requires.
// A family with no series is not written. The zero value is ready to use.
//
// Metric and label names are the caller's constants and are not checked; label values may be
// anything (they are escaped, and invalid UTF-8 is replaced with U+FFFD).
type expo struct {
	fams map[string]*family
}

type family struct {
	name, help, typ string
	series          []series
}

// series is one labelled member of a family: a value for gauges and counters; buckets (or
// quantiles), sum and count for histograms (summaries).
type series struct {
	labels    []labelPair // sorted by name
	value     float64
	buckets   []bucket   // ascending upper bounds, cumulative counts, no +Inf
	quantiles []quantile // ascending
	count     uint64
	sum       float64
}

type labelPair struct{ name, value string }

type bucket struct {
	bound float64
	count uint64
}

type quantile struct{ q, v float64 }

// labels turns name, value, name, value... into pairs sorted by name. A missing last value
// counts as "".
func labels(nv []string) []labelPair {
	if len(nv) == 0 {
		return nil
	}
	ls := make([]labelPair, 0, (len(nv)+1)/2)
	for i := 0; i < len(nv); i += 2 {
		p := labelPair{name: nv[i]}
		if i+1 < len(nv) {
			p.value = nv[i+1]
		}
		ls = append(ls, p)
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].name < ls[j].name })
	return ls
}

func (e *expo) add(name, help, typ string, s series) {
	if e.fams == nil {
		e.fams = make(map[string]*family)
	}
	f := e.fams[name]
	if f == nil {
		f = &family{name: name, help: help, typ: typ}
		e.fams[name] = f
	}
	f.series = append(f.series, s)
}

// gauge adds one gauge series; labelNV is name, value, name, value...
func (e *expo) gauge(name, help string, v float64, labelNV ...string) {
	e.add(name, help, typeGauge, series{labels: labels(labelNV), value: v})
}

// counter adds one counter series; labelNV is name, value, name, value...
func (e *expo) counter(name, help string, v float64, labelNV ...string) {
	e.add(name, help, typeCounter, series{labels: labels(labelNV), value: v})
}

// histogram adds one histogram series from cumulative bucket counts keyed by upper bound.
// The +Inf bucket is always count (a +Inf or NaN key in buckets is ignored).
func (e *expo) histogram(name, help string, buckets map[float64]uint64, count uint64, sum float64, labelNV ...string) {
	s := series{labels: labels(labelNV), count: count, sum: sum}
	for _, b := range slices.Sorted(maps.Keys(buckets)) {
		if math.IsNaN(b) || math.IsInf(b, +1) {
			continue
		}
		s.buckets = append(s.buckets, bucket{bound: b, count: buckets[b]})
	}
	e.add(name, help, typeHistogram, s)
}

// summary adds one summary series from quantile → value.
func (e *expo) summary(name, help string, quantiles map[float64]float64, count uint64, sum float64, labelNV ...string) {
	s := series{labels: labels(labelNV), count: count, sum: sum}
	for _, q := range slices.Sorted(maps.Keys(quantiles)) {
		if math.IsNaN(q) {
			continue
		}
		s.quantiles = append(s.quantiles, quantile{q, quantiles[q]})
	}
	e.add(name, help, typeSummary, s)
}

// compareLabels orders two series of one family by their label pairs.
func compareLabels(a, b series) int {
	for i := range min(len(a.labels), len(b.labels)) {
		if c := cmp.Or(strings.Compare(a.labels[i].name, b.labels[i].name),
			strings.Compare(a.labels[i].value, b.labels[i].value)); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a.labels), len(b.labels))
}

// WriteTo writes every family in the text format. A series repeated with the same labels is
// written once (the first added).
func (e *expo) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, name := range slices.Sorted(maps.Keys(e.fams)) {
		f := e.fams[name]
		sort.SliceStable(f.series, func(i, j int) bool { return compareLabels(f.series[i], f.series[j]) < 0 })
		bw.WriteString("# HELP ")
		bw.WriteString(f.name)
		bw.WriteByte(' ')
		writeEscaped(bw, f.help, false)
		bw.WriteString("\n# TYPE ")
		bw.WriteString(f.name)
		bw.WriteByte(' ')
		bw.WriteString(f.typ)
		bw.WriteByte('\n')
		for i, s := range f.series {
			if i > 0 && compareLabels(f.series[i-1], s) == 0 {
				continue
			}
			switch f.typ {
			case typeHistogram:
				for _, b := range s.buckets {
					writeSample(bw, f.name, "_bucket", s.labels, "le", b.bound, float64(b.count))
				}
				writeSample(bw, f.name, "_bucket", s.labels, "le", math.Inf(+1), float64(s.count))
				writeSample(bw, f.name, "_sum", s.labels, "", 0, s.sum)
				writeSample(bw, f.name, "_count", s.labels, "", 0, float64(s.count))
			case typeSummary:
				for _, q := range s.quantiles {
					writeSample(bw, f.name, "", s.labels, "quantile", q.q, q.v)
				}
				writeSample(bw, f.name, "_sum", s.labels, "", 0, s.sum)
				writeSample(bw, f.name, "_count", s.labels, "", 0, float64(s.count))
			default:
				writeSample(bw, f.name, "", s.labels, "", 0, s.value)
			}
		}
	}
	err := bw.Flush()
	return cw.n, err
}

// writeSample writes one line: name+suffix, the labels plus (when extra is not "") the label
// extra="bound", and the value.
func writeSample(w *bufio.Writer, name, suffix string, ls []labelPair, extra string, bound, v float64) {
	w.WriteString(name)
	w.WriteString(suffix)
	if len(ls) > 0 || extra != "" {
		w.WriteByte('{')
		for i, l := range ls {
			if i > 0 {
				w.WriteByte(',')
			}
			w.WriteString(l.name)
			w.WriteString(`="`)
			writeEscaped(w, l.value, true)
			w.WriteByte('"')
		}
		if extra != "" {
			if len(ls) > 0 {
				w.WriteByte(',')
			}
			w.WriteString(extra)
			w.WriteString(`="`)
			writeFloat(w, bound)
			w.WriteByte('"')
		}
		w.WriteByte('}')
	}
	w.WriteByte(' ')
	writeFloat(w, v)
	w.WriteByte('\n')
}

// writeEscaped writes s with backslash and newline escaped, and the double quote too in a
// label value; invalid UTF-8 becomes U+FFFD, as the format is UTF-8.
func writeEscaped(w *bufio.Writer, s string, labelValue bool) {
	s = strings.ToValidUTF8(s, "\uFFFD")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			w.WriteString(`\\`)
		case c == '\n':
			w.WriteString(`\n`)
		case c == '"' && labelValue:
			w.WriteString(`\"`)
		default:
			w.WriteByte(c)
		}
	}
}

// writeFloat formats v as the Prometheus client does: the shortest representation that
// parses back to v, with an exponent from 1e6 up and below 1e-4 (2.5e+06); NaN, +Inf, -Inf.
func writeFloat(w *bufio.Writer, v float64) {
	switch {
	case math.IsNaN(v):
		w.WriteString("NaN")
	case math.IsInf(v, +1):
		w.WriteString("+Inf")
	case math.IsInf(v, -1):
		w.WriteString("-Inf")
	default:
		var buf [32]byte
		w.Write(strconv.AppendFloat(buf[:0], v, 'g', -1, 64))
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
