package admin

import (
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric descriptions. Every socksgate series is computed from one Snapshot per scrape.
var (
	descActive = prometheus.NewDesc("socksgate_flows_active",
		"Flows being handled now, by inbound and upstream (\"pending\" while routing and dialing).",
		[]string{"inbound", "upstream"}, nil)
	descTotal = prometheus.NewDesc("socksgate_flows_total",
		"Flows ended, by inbound, upstream and outcome (ok, failed, blocked).",
		[]string{"inbound", "upstream", "outcome"}, nil)
	descBytes = prometheus.NewDesc("socksgate_flow_bytes_total",
		"Bytes relayed by ended flows, by inbound, upstream and direction (up: client to destination).",
		[]string{"inbound", "upstream", "direction"}, nil)
	descRefused = prometheus.NewDesc("socksgate_flows_refused_total",
		"Flows refused before routing, by reason.",
		[]string{"reason"}, nil)
	descDial = prometheus.NewDesc("socksgate_dial_duration_seconds",
		"Time from a flow's start to its upstream connection being ready (routing, connect and proxy handshake), successful dials.",
		[]string{"upstream"}, nil)
	descUp = prometheus.NewDesc("socksgate_upstream_up",
		"Upstream health: 1 up, 0 down. Members of a group are reported with the group label.",
		[]string{"upstream", "group"}, nil)
	descUDPSessions = prometheus.NewDesc("socksgate_udp_sessions",
		"UDP sessions in the NAT table now.", nil, nil)
	descUDPSessionsTotal = prometheus.NewDesc("socksgate_udp_sessions_total",
		"UDP sessions created.", nil, nil)
	descReplyBind = prometheus.NewDesc("socksgate_udp_reply_bind_failures_total",
		"UDP replies dropped because their transparent reply socket could not be bound.", nil, nil)
	descBuild = prometheus.NewDesc("socksgate_build_info",
		"Always 1; labelled with the build.", []string{"version", "goversion"}, nil)
)

// collector turns a Source's Snapshot into metrics at scrape time.
type collector struct {
	src     Source
	version string
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descTotal, descBytes, descRefused, descDial,
		descUp, descUDPSessions, descUDPSessionsTotal, descReplyBind, descBuild} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	for _, a := range s.Active {
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(a.Flows), a.Inbound, a.Upstream)
	}
	for _, e := range s.Ended {
		ch <- prometheus.MustNewConstMetric(descTotal, prometheus.CounterValue, float64(e.Flows), e.Inbound, e.Upstream, e.Outcome)
	}
	// Bytes do not depend on the outcome: sum them over it.
	type ib struct{ inbound, upstream string }
	up, down := map[ib]uint64{}, map[ib]uint64{}
	for _, e := range s.Ended {
		k := ib{e.Inbound, e.Upstream}
		up[k] += e.BytesUp
		down[k] += e.BytesDown
	}
	for k, v := range up {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v), k.inbound, k.upstream, "up")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(down[k]), k.inbound, k.upstream, "down")
	}
	for reason, n := range s.Refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), reason)
	}
	for _, h := range s.DialLatency {
		ch <- prometheus.MustNewConstHistogram(descDial, h.Count, h.Sum, h.Buckets, h.Upstream)
	}
	for _, u := range c.src.Upstreams() {
		v := 0.0
		if u.Up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, v, u.Name, u.Group)
	}
	ch <- prometheus.MustNewConstMetric(descUDPSessions, prometheus.GaugeValue, float64(s.UDPSessions))
	ch <- prometheus.MustNewConstMetric(descUDPSessionsTotal, prometheus.CounterValue, float64(s.UDPSessionsTotal))
	ch <- prometheus.MustNewConstMetric(descReplyBind, prometheus.CounterValue, float64(s.ReplyBindFailures))
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, c.version, runtime.Version())
}

// metricsHandler serves a private registry: socksgate's collector plus the Go runtime
// (go_goroutines, memory) and process (open fds, RSS, CPU) collectors.
func metricsHandler(src Source, version string) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collector{src: src, version: version},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
