package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
)

// A flow ended is counted once by inbound, upstream and outcome, with its bytes; blocked and
// failed flows get their own outcome.
func TestStatsCountEndedFlowsByOutcome(t *testing.T) {
	var s Stats
	up := stubUpstream{"socks5://proxy:1080"}
	f := route.Flow{Network: route.TCP, Inbound: route.Redirect}
	s.FlowEnded(f, route.Decision{Action: route.ActionProxy, Upstream: up}, 10, 200, nil)
	s.FlowEnded(f, route.Decision{Action: route.ActionProxy, Upstream: up}, 5, 50, nil)
	s.FlowEnded(f, route.Decision{Action: route.ActionProxy, Upstream: up}, 1, 0, errors.New("reset"))
	s.FlowEnded(f, route.Decision{Action: route.ActionBlock, Rule: "ads"}, 0, 0, ErrBlocked)
	s.Refuse("loop")
	s.DialDone(route.Decision{Upstream: up}, 3*time.Millisecond)
	s.DialDone(route.Decision{Upstream: up}, 20*time.Second)
	s.UDPSessions.Add(2)
	s.ReplyBindFailures.Add(1)

	s.SetUDPSource(func() UDPCounts { return UDPCounts{Active: 3, Total: 10, ReplyBindFailures: 4} })
	snap := s.snapshot()
	if snap.UDPSessions != 5 || snap.UDPSessionsTotal != 10 || snap.ReplyBindFailures != 5 {
		t.Errorf("udp counters with a source: %+v", snap)
	}
	s.SetUDPSource(nil)
	snap = s.snapshot()
	got := map[string][3]uint64{}
	for _, e := range snap.Ended {
		got[e.Inbound+"|"+e.Upstream+"|"+e.Outcome] = [3]uint64{e.Flows, e.BytesUp, e.BytesDown}
	}
	want := map[string][3]uint64{
		"redirect|socks5://proxy:1080|ok":     {2, 15, 250},
		"redirect|socks5://proxy:1080|failed": {1, 1, 0},
		"redirect|none|blocked":               {1, 0, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("ended = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if snap.Refused["loop"] != 1 || snap.UDPSessions != 2 || snap.ReplyBindFailures != 1 {
		t.Errorf("refused/udp counters: %+v", snap)
	}
	if len(snap.DialLatency) != 1 {
		t.Fatalf("latency: %+v", snap.DialLatency)
	}
	h := snap.DialLatency[0]
	if h.Count != 2 || h.Buckets[0.0025] != 0 || h.Buckets[0.005] != 1 || h.Buckets[10] != 1 {
		t.Errorf("histogram: %+v", h)
	}
}

// A live relayed flow is listed with its decision and with byte counts read from the client
// socket's TCP_INFO; when it ends it leaves the list and is counted once.
func TestLiveFlowsShowDecisionAndBytes(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO byte counts are Linux-only")
	}
	server, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go func() {
		c, err := server.Accept()
		if err != nil {
			return
		}
		c.Write(make([]byte, 5000)) // down
		io.Copy(io.Discard, c)
		c.Close()
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()

	up := stubUpstream{"direct-stub"}
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: up, Rule: "all"}}
	dst := netip.MustParseAddrPort(server.Addr().String())
	done := make(chan struct{})
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		g.Handle(context.Background(), c, route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: dst, Inbound: route.Redirect}, nil)
		close(done)
	}()
	client, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client.Write(make([]byte, 3000)) // up
	if _, err := io.ReadFull(client, make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}

	var flows []struct{ up, down uint64 }
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		l := g.LiveFlows()
		if len(l) == 1 && l[0].BytesUp == 3000 && l[0].BytesDown == 5000 {
			f := l[0]
			if f.Upstream != "direct-stub" || f.Rule != "all" || f.Action != "direct" || f.Dst != dst.String() || f.Inbound != "redirect" {
				t.Fatalf("live flow: %+v", f)
			}
			flows = append(flows, struct{ up, down uint64 }{f.BytesUp, f.BytesDown})
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(flows) == 0 {
		t.Fatalf("live flow never showed 3000/5000 bytes: %+v", g.LiveFlows())
	}
	if a := g.activeCounts(); len(a) != 1 || a[0].Upstream != "direct-stub" || a[0].Flows != 1 {
		t.Fatalf("active: %+v", a)
	}
	client.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Handle did not return")
	}
	// Handle returns once the relay runs; the flow ends on the relay's goroutines.
	for end := time.Now().Add(5 * time.Second); g.Active() > 0 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	if l := g.LiveFlows(); len(l) != 0 {
		t.Fatalf("ended flow still listed: %+v", l)
	}
	snap := AdminSource{G: g}.Snapshot()
	if len(snap.Ended) != 1 || snap.Ended[0].Flows != 1 || snap.Ended[0].BytesUp != 3000 || snap.Ended[0].BytesDown != 5000 {
		t.Fatalf("ended: %+v", snap.Ended)
	}
	if len(snap.DialLatency) != 1 || snap.DialLatency[0].Count != 1 {
		t.Fatalf("dial latency: %+v", snap.DialLatency)
	}
}

// Without health checks every configured upstream is reported up, and says why; its URL is
// shown without the password.
func TestConfiguredHealthReportsUpstreamsUp(t *testing.T) {
	cfg := &configs.Config{Upstreams: []configs.Upstream{
		{Name: "a", URL: &url.URL{Scheme: "socks5", User: url.UserPassword("u", "secret"), Host: "192.0.2.1:1080"}},
	}}
	ups := AdminSource{Health: ConfiguredHealth(cfg)}.Upstreams()
	if len(ups) != 1 || !ups[0].Up || ups[0].Name != "a" || ups[0].Reason != "not health-checked" {
		t.Fatalf("%+v", ups)
	}
	if strings.Contains(ups[0].URL, "secret") || !strings.Contains(ups[0].URL, "192.0.2.1:1080") {
		t.Fatalf("URL %q", ups[0].URL)
	}
}
