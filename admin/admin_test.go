package admin

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type fakeSource struct {
	snap  Snapshot
	flows []Flow
	ups   []Upstream
}

func (f fakeSource) Snapshot() Snapshot    { return f.snap }
func (f fakeSource) Flows() []Flow         { return f.flows }
func (f fakeSource) Upstreams() []Upstream { return f.ups }

var testSource = fakeSource{
	snap: Snapshot{
		Active: []ActiveCount{{Inbound: "redirect", Upstream: "socks5://10.0.2.2:1080", Flows: 3}},
		Ended: []FlowCount{
			{Inbound: "redirect", Upstream: "socks5://10.0.2.2:1080", Outcome: "ok", Flows: 5, BytesUp: 100, BytesDown: 2000},
			{Inbound: "redirect", Upstream: "socks5://10.0.2.2:1080", Outcome: "failed", Flows: 1, BytesUp: 7, BytesDown: 0},
			{Inbound: "http", Upstream: "none", Outcome: "blocked", Flows: 2},
		},
		Refused:           map[string]uint64{"loop": 4},
		DialLatency:       []Histogram{{Upstream: "direct", Count: 2, Sum: 0.03, Buckets: map[float64]uint64{0.01: 1, 0.1: 2}}},
		UDPSessions:       6,
		UDPSessionsTotal:  60,
		ReplyBindFailures: 9,
		SOCKSUDPDropped:   SOCKSUDPDrops{ForeignSource: 11, Fragment: 12, Malformed: 13},
		RulesRestored:     14,
	},
	flows: []Flow{{Network: "tcp", Src: "10.0.1.2:40000", Dst: "203.0.113.10:80", Inbound: "redirect",
		Upstream: "direct", Rule: "default", Action: "direct", Age: 1.5, BytesUp: 10, BytesDown: 20}},
	ups: []Upstream{{Name: "main", URL: "socks5://10.0.2.2:1080", Up: true}, {Name: "backup", Group: "pool", Up: false, Reason: "dial: refused"}},
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// /metrics exposes every socksgate series the snapshot holds, in Prometheus text format, plus
// the Go runtime and process series.
func TestMetricsExposeEverySeries(t *testing.T) {
	code, body := get(t, Handler(testSource, "v1.2.3"), "/metrics")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	for _, want := range []string{
		`socksgate_flows_active{inbound="redirect",upstream="socks5://10.0.2.2:1080"} 3`,
		`socksgate_flows_total{inbound="redirect",outcome="ok",upstream="socks5://10.0.2.2:1080"} 5`,
		`socksgate_flows_total{inbound="redirect",outcome="failed",upstream="socks5://10.0.2.2:1080"} 1`,
		`socksgate_flows_total{inbound="http",outcome="blocked",upstream="none"} 2`,
		`socksgate_flow_bytes_total{direction="up",inbound="redirect",upstream="socks5://10.0.2.2:1080"} 107`,
		`socksgate_flow_bytes_total{direction="down",inbound="redirect",upstream="socks5://10.0.2.2:1080"} 2000`,
		`socksgate_flows_refused_total{reason="loop"} 4`,
		`socksgate_dial_duration_seconds_bucket{upstream="direct",le="0.01"} 1`,
		`socksgate_dial_duration_seconds_bucket{upstream="direct",le="+Inf"} 2`,
		`socksgate_dial_duration_seconds_count{upstream="direct"} 2`,
		`socksgate_upstream_up{group="",upstream="main"} 1`,
		`socksgate_upstream_up{group="pool",upstream="backup"} 0`,
		`socksgate_udp_sessions 6`,
		`socksgate_udp_sessions_total 60`,
		`socksgate_udp_reply_bind_failures_total 9`,
		`socksgate_rules_restored_total 14`,
		`socksgate_socks_udp_dropped_total{reason="foreign_source"} 11`,
		`socksgate_socks_udp_dropped_total{reason="fragment"} 12`,
		`socksgate_socks_udp_dropped_total{reason="malformed"} 13`,
		`socksgate_build_info{goversion="`,
		`go_goroutines `,
		`process_open_fds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

// The JSON endpoints and /healthz, read back through the Client over a real listener.
func TestListenServesClient(t *testing.T) {
	s, err := Listen("127.0.0.1:0", testSource, "test", Access{})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + s.Addr().String()
	c := Client{Base: base}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	flows, err := c.Flows(ctx)
	if err != nil || len(flows) != 1 || flows[0] != testSource.flows[0] {
		t.Fatalf("flows: %v %+v", err, flows)
	}
	ups, err := c.Upstreams(ctx)
	if err != nil || len(ups) != 2 || ups[1].Reason != "dial: refused" || ups[1].Up {
		t.Fatalf("upstreams: %v %+v", err, ups)
	}
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, body)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("healthz still answers after Close")
	}
}

// Empty lists are JSON arrays, not null, so scripts can iterate them.
func TestEmptyListsAreArrays(t *testing.T) {
	h := Handler(fakeSource{}, "")
	for _, path := range []string{"/flows", "/upstreams"} {
		if code, body := get(t, h, path); code != 200 || strings.TrimSpace(body) != "[]" {
			t.Errorf("%s: %d %q", path, code, body)
		}
	}
}

func TestUnknownPathAndMethodRefused(t *testing.T) {
	h := Handler(testSource, "")
	if code, _ := get(t, h, "/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/flows", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /flows: %d", rec.Code)
	}
}

// The client names the endpoint and the status when the server does not answer 200.
func TestClientReportsHTTPErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	_, err := Client{Base: srv.URL}.Flows(context.Background())
	if err == nil || !strings.Contains(err.Error(), "/flows") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("err = %v", err)
	}
}

// FuzzDecodeFlows: whatever an endpoint answers, decoding it never panics.
func FuzzDecodeFlows(f *testing.F) {
	f.Add(`[{"network":"tcp","src":"10.0.1.2:1","dst":"203.0.113.10:80","age_seconds":1.5,"bytes_up":1}]`)
	f.Add(`[]`)
	f.Add(`null`)
	f.Add(`[{"start":"x"}]`)
	f.Add(`{"a":`)
	f.Fuzz(func(t *testing.T, s string) {
		var flows []Flow
		_ = DecodeJSON(strings.NewReader(s), &flows)
		var ups []Upstream
		_ = DecodeJSON(strings.NewReader(s), &ups)
	})
}

type unhealthySource struct {
	fakeSource
	down []string
}

func (u unhealthySource) Unhealthy() []string { return u.down }

// /healthz answers 503 with the reasons while the source reports something down, 200 "ok"
// once nothing is.
func TestHealthzReportsWhatIsDown(t *testing.T) {
	down := []string{"listen.http 10.0.1.1:8080: accept: invalid argument"}
	if code, body := get(t, Handler(unhealthySource{down: down}, ""), "/healthz"); code != 503 || body != down[0]+"\n" {
		t.Fatalf("healthz with a listener down: %d %q", code, body)
	}
	if code, body := get(t, Handler(unhealthySource{}, ""), "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz with nothing down: %d %q", code, body)
	}
}

type haSource struct {
	fakeSource
	vip, held []netip.Addr
}

func (h haSource) Serving() (vip, held []netip.Addr) { return h.vip, h.held }

// With ha.vip, /healthz and socksgate_serving say whether this router holds the LAN gateway
// address; the standby still answers 200 (its VRRP track script must pass). Without ha.vip
// neither says anything.
func TestServingOnHealthzAndMetrics(t *testing.T) {
	vip := []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("fd00:1::1")}
	for _, tc := range []struct {
		name    string
		src     haSource
		healthz string
		metric  string
	}{
		{"serving", haSource{vip: vip, held: vip}, "ok\nserving: holds 10.0.1.1 fd00:1::1\n", "socksgate_serving 1\n"},
		{"serving v4 only", haSource{vip: vip, held: vip[:1]}, "ok\nserving: holds 10.0.1.1\n", "socksgate_serving 1\n"},
		{"standby", haSource{vip: vip}, "ok\nstandby: holds none of 10.0.1.1 fd00:1::1\n", "socksgate_serving 0\n"},
		{"no ha", haSource{}, "ok\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := Handler(tc.src, "")
			if code, body := get(t, h, "/healthz"); code != 200 || body != tc.healthz {
				t.Errorf("healthz: %d %q, want 200 %q", code, body, tc.healthz)
			}
			_, body := get(t, h, "/metrics")
			if got := strings.Contains(body, "socksgate_serving "); got != (tc.metric != "") || !strings.Contains(body, tc.metric) {
				t.Errorf("metrics: want %q, got serving series: %v", tc.metric, got)
			}
		})
	}
}
