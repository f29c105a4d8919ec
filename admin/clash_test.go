package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/socksgate/socksgate/internal/testutil"
)

// fakeController is a Source and Controller: two upstreams, a select group and a url-test
// group, two rules, and a traffic counter the test moves.
type fakeController struct {
	fakeSource
	mu        sync.Mutex
	selected  map[string]string
	closed    []string
	reloads   int
	reloadErr error
	up, down  atomic.Uint64
	logs      LogFeed
}

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func newFakeController() *fakeController {
	c := &fakeController{selected: map[string]string{"pick": "a"}}
	c.flows = []Flow{
		{ID: "7", Network: "tcp", Src: "10.0.1.2:40000", Dst: "203.0.113.10:443", Name: "www.example.com", NameFrom: "sniff",
			Inbound: "redirect", Upstream: "group:pick via a", Rule: "web", Action: "proxy", Start: t0, BytesUp: 10, BytesDown: 20,
			MAC: "aa:bb:cc:dd:ee:ff", Device: "laptop", Way: "pick", Member: "a"},
		{ID: "8", Network: "udp", Src: "[fd00::2]:5353", Dst: "[2001:db8::1]:53", Inbound: "tproxy", Upstream: "direct",
			Rule: "default", Action: "direct", Start: t0, Way: "direct"},
		{ID: "9", Network: "tcp", Src: "10.0.1.3:1000", Dst: "ads.example:80", Name: "ads.example", NameFrom: "client",
			Inbound: "http", User: "alice", Rule: "ads", Action: "block", Start: t0},
	}
	return c
}

func (c *fakeController) Settings() Settings {
	return Settings{HTTPPort: 8080, SOCKSPort: 1080, RedirPort: 12345, AllowLAN: true, LogLevel: "info", IPv6: true}
}
func (c *fakeController) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloads++
	return c.reloadErr
}
func (c *fakeController) Proxies() []Proxy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []Proxy{
		{Name: "DIRECT", Type: "Direct", Alive: true, UDP: true},
		{Name: "REJECT", Type: "Reject", Alive: true, UDP: true},
		{Name: "a", Type: "Socks5", Alive: true, UDP: true, History: []DelaySample{{t0, 42 * time.Millisecond}}},
		{Name: "b", Type: "Http", Alive: false},
		{Name: "pick", Type: "Selector", Alive: true, Members: []string{"a", "b"}, Now: c.selected["pick"]},
		{Name: "fast", Type: "URLTest", Alive: true, Members: []string{"a", "b"}, Now: "a", TestURL: "https://example.com/",
			History: []DelaySample{{t0, 42 * time.Millisecond}}},
	}
}
func (c *fakeController) Select(group, member string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch group {
	case "pick":
	case "fast", "a", "b":
		return ErrNotSelectable
	default:
		return ErrNoProxy
	}
	if member != "a" && member != "b" {
		return fmt.Errorf("no member named %q", member)
	}
	c.selected[group] = member
	return nil
}
func (c *fakeController) Delay(ctx context.Context, name, url string) (time.Duration, error) {
	switch name {
	case "a":
		return 42 * time.Millisecond, nil
	case "b":
		return 0, errors.New("connection refused")
	case "slow":
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return 0, ErrNoProxy
}
func (c *fakeController) Rules() []Rule {
	return []Rule{
		{Name: "ads", Type: "DomainSuffix", Payload: "ads.example", Proxy: "REJECT", Hits: 3},
		{Name: "web", Type: "AND", Payload: "((DstPort,443) && (Network,tcp))", Proxy: "pick", Hits: 5},
		{Name: "default", Type: "Match", Proxy: "DIRECT", Hits: 1},
	}
}
func (c *fakeController) CloseFlow(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = append(c.closed, id)
	return id == "7"
}
func (c *fakeController) CloseFlows() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = append(c.closed, "*")
	return 3
}
func (c *fakeController) Traffic() (uint64, uint64) { return c.up.Load(), c.down.Load() }
func (c *fakeController) Logs() *LogFeed            { return &c.logs }

func do(t *testing.T, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec.Code, rec.Body.String()
}

func decodeMap(t *testing.T, body string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, body)
	}
	return m
}

// keys lists a JSON object's keys, sorted.
func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestClashVersionAndConfigs(t *testing.T) {
	h := Handler(newFakeController(), "v1.2.3")
	code, body := do(t, h, "GET", "/version", "")
	if code != 200 || body != `{"version":"socksgate v1.2.3","meta":true}`+"\n" {
		t.Fatalf("/version: %d %s", code, body)
	}
	code, body = do(t, h, "GET", "/configs", "")
	m := decodeMap(t, body)
	want := map[string]any{"port": 8080.0, "socks-port": 1080.0, "mixed-port": 0.0, "redir-port": 12345.0, "tproxy-port": 0.0,
		"allow-lan": true, "bind-address": "127.0.0.1", "mode": "rule", "log-level": "info", "ipv6": true,
		"authentication": []any{}, "tun": map[string]any{"enable": false}}
	if code != 200 || !reflect.DeepEqual(m, want) {
		t.Fatalf("/configs: %d\n got %v\nwant %v", code, m, want)
	}
}

func TestClashReload(t *testing.T) {
	c := newFakeController()
	h := Handler(c, "test")
	if code, body := do(t, h, "PUT", "/configs?force=true", `{"path": "", "payload": ""}`); code != 204 || c.reloads != 1 {
		t.Fatalf("PUT /configs: %d %s, %d reloads", code, body, c.reloads)
	}
	if code, _ := do(t, h, "PUT", "/configs", ``); code != 204 || c.reloads != 2 {
		t.Fatalf("PUT /configs without a body: %d, %d reloads", code, c.reloads)
	}
	if code, body := do(t, h, "PUT", "/configs", `{"payload": "mixed-port: 7890"}`); code != 400 || !strings.Contains(body, "payload") || c.reloads != 2 {
		t.Fatalf("a payload: %d %s", code, body)
	}
	c.reloadErr = errors.New("line 3: unknown key")
	if code, body := do(t, h, "PUT", "/configs", `{}`); code != 400 || decodeMap(t, body)["message"] != "line 3: unknown key" {
		t.Fatalf("a refused reload: %d %s", code, body)
	}
	if code, _ := do(t, h, "PUT", "/configs", `{`); code != 400 {
		t.Fatalf("bad JSON: %d", code)
	}
}

// GET /proxies holds every proxy by name with mihomo's fields, groups with all and now, and
// GLOBAL listing every proxy in order.
func TestClashProxies(t *testing.T) {
	h := Handler(newFakeController(), "test")
	code, body := do(t, h, "GET", "/proxies", "")
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	ps := decodeMap(t, body)["proxies"].(map[string]any)
	if got := keys(ps); !reflect.DeepEqual(got, []string{"DIRECT", "GLOBAL", "REJECT", "a", "b", "fast", "pick"}) {
		t.Fatalf("proxies %v", got)
	}
	a := ps["a"].(map[string]any)
	if got := keys(a); !reflect.DeepEqual(got, []string{"alive", "extra", "history", "id", "mptcp", "name", "smux", "tfo", "type", "udp", "xudp"}) {
		t.Errorf("a proxy's keys %v", got)
	}
	if a["type"] != "Socks5" || a["alive"] != true || a["name"] != "a" {
		t.Errorf("a: %v", a)
	}
	hist := a["history"].([]any)
	if len(hist) != 1 || hist[0].(map[string]any)["delay"] != 42.0 || hist[0].(map[string]any)["time"] != "2026-12-02T10:00:00Z" {
		t.Errorf("a's history %v", hist)
	}
	if h := ps["b"].(map[string]any)["history"]; h == nil || len(h.([]any)) != 0 {
		t.Errorf("b's history %v, want [] (never null)", h)
	}
	pick := ps["pick"].(map[string]any)
	for k, want := range map[string]any{"type": "Selector", "now": "a", "all": []any{"a", "b"}} {
		if !reflect.DeepEqual(pick[k], want) {
			t.Errorf("pick.%s = %v, want %v", k, pick[k], want)
		}
	}
	if ps["fast"].(map[string]any)["type"] != "URLTest" || ps["fast"].(map[string]any)["testUrl"] != "https://example.com/" {
		t.Errorf("fast: %v", ps["fast"])
	}
	g := ps["GLOBAL"].(map[string]any)
	if g["type"] != "Selector" || !reflect.DeepEqual(g["all"], []any{"DIRECT", "REJECT", "a", "b", "pick", "fast"}) {
		t.Errorf("GLOBAL: %v", g)
	}
	if ps["DIRECT"].(map[string]any)["type"] != "Direct" || ps["REJECT"].(map[string]any)["type"] != "Reject" {
		t.Errorf("built-ins: %v %v", ps["DIRECT"], ps["REJECT"])
	}

	code, body = do(t, h, "GET", "/proxies/pick", "")
	if code != 200 || decodeMap(t, body)["now"] != "a" {
		t.Errorf("/proxies/pick: %d %s", code, body)
	}
	code, body = do(t, h, "GET", "/proxies/nothing", "")
	if code != 404 || decodeMap(t, body)["message"] != "Resource not found" {
		t.Errorf("unknown proxy: %d %s", code, body)
	}
	code, body = do(t, h, "GET", "/group", "")
	if gs := decodeMap(t, body)["proxies"].([]any); code != 200 || len(gs) != 2 {
		t.Errorf("/group: %d %s", code, body)
	}
	code, body = do(t, h, "GET", "/providers/proxies", "")
	if code != 200 || body != `{"providers":{}}`+"\n" {
		t.Errorf("/providers/proxies: %d %s", code, body)
	}
}

// PUT /proxies/{group} {"name": member} chooses the member of a select group: 204; 400 for
// anything but a select group or a member of it; 404 for no such proxy.
func TestClashSelect(t *testing.T) {
	c := newFakeController()
	h := Handler(c, "test")
	for _, tc := range []struct {
		path, body string
		want       int
	}{
		{"/proxies/pick", `{"name":"b"}`, 204},
		{"/proxies/pick", `{"name":"c"}`, 400},
		{"/proxies/pick", `{}`, 400},
		{"/proxies/pick", `nonsense`, 400},
		{"/proxies/fast", `{"name":"b"}`, 400},
		{"/proxies/GLOBAL", `{"name":"a"}`, 400},
		{"/proxies/nothing", `{"name":"a"}`, 404},
	} {
		if code, body := do(t, h, "PUT", tc.path, tc.body); code != tc.want {
			t.Errorf("PUT %s %s: %d %s, want %d", tc.path, tc.body, code, body, tc.want)
		}
	}
	if _, body := do(t, h, "GET", "/proxies/pick", ""); decodeMap(t, body)["now"] != "b" {
		t.Errorf("after choosing b: %s", body)
	}
}

func TestClashDelay(t *testing.T) {
	h := Handler(newFakeController(), "test")
	for _, tc := range []struct {
		path     string
		want     int
		wantBody string
	}{
		{"/proxies/a/delay?url=https://www.gstatic.com/generate_204&timeout=5000", 200, `{"delay":42}`},
		{"/proxies/b/delay?url=http://example.com/&timeout=5000", 503, ""},
		{"/proxies/slow/delay?url=http://example.com/&timeout=20", 504, `{"message":"Timeout"}`},
		{"/proxies/nothing/delay?url=http://example.com/&timeout=5000", 404, ""},
		{"/proxies/a/delay?url=http://example.com/", 400, ""},
		{"/proxies/a/delay?url=ftp://example.com/&timeout=100", 400, ""},
		{"/group/pick/delay?url=http://example.com/&timeout=5000", 200, `{"a":42}`},
		{"/group/a/delay?url=http://example.com/&timeout=5000", 404, ""},
	} {
		code, body := do(t, h, "GET", tc.path, "")
		if code != tc.want || (tc.wantBody != "" && strings.TrimSpace(body) != tc.wantBody) {
			t.Errorf("GET %s: %d %s, want %d %s", tc.path, code, body, tc.want, tc.wantBody)
		}
	}
}

// GET /rules: type, payload, proxy, size, and extra.hitCount per rule, in order.
func TestClashRules(t *testing.T) {
	code, body := do(t, Handler(newFakeController(), "test"), "GET", "/rules", "")
	var got struct {
		Rules []struct {
			Index   int    `json:"index"`
			Type    string `json:"type"`
			Payload string `json:"payload"`
			Proxy   string `json:"proxy"`
			Size    int    `json:"size"`
			Extra   struct {
				Disabled  bool   `json:"disabled"`
				HitCount  uint64 `json:"hitCount"`
				MissCount uint64 `json:"missCount"`
				Name      string `json:"name"`
			} `json:"extra"`
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || len(got.Rules) != 3 {
		t.Fatalf("%d %v %s", code, err, body)
	}
	r := got.Rules[1]
	if r.Index != 1 || r.Type != "AND" || r.Payload != "((DstPort,443) && (Network,tcp))" || r.Proxy != "pick" || r.Size != -1 ||
		r.Extra.HitCount != 5 || r.Extra.Name != "web" || r.Extra.Disabled {
		t.Errorf("rule 1: %+v", r)
	}
	if got.Rules[2].Type != "Match" || got.Rules[2].Proxy != "DIRECT" || got.Rules[0].Proxy != "REJECT" {
		t.Errorf("rules: %+v", got.Rules)
	}
}

// GET /connections: the totals and every flow with the metadata dashboards read, socksgate's
// sourceMAC and sourceDevice among them.
func TestClashConnections(t *testing.T) {
	c := newFakeController()
	c.up.Store(1000)
	c.down.Store(5000)
	code, body := do(t, Handler(c, "test"), "GET", "/connections", "")
	m := decodeMap(t, body)
	if code != 200 || m["uploadTotal"] != 1000.0 || m["downloadTotal"] != 5000.0 || m["memory"] == nil {
		t.Fatalf("%d %s", code, body)
	}
	conns := m["connections"].([]any)
	if len(conns) != 3 {
		t.Fatalf("%d connections", len(conns))
	}
	first := conns[0].(map[string]any)
	if got := keys(first); !reflect.DeepEqual(got, []string{"chains", "download", "id", "metadata", "rule", "ruleName", "rulePayload", "start", "upload"}) {
		t.Errorf("connection keys %v", got)
	}
	want := map[string]any{"id": "7", "upload": 10.0, "download": 20.0, "start": "2026-12-02T10:00:00Z",
		"chains": []any{"a", "pick"}, "rule": "AND", "rulePayload": "((DstPort,443) && (Network,tcp))", "ruleName": "web"}
	for k, v := range want {
		if !reflect.DeepEqual(first[k], v) {
			t.Errorf("%s = %v, want %v", k, first[k], v)
		}
	}
	md := first["metadata"].(map[string]any)
	wantMD := map[string]any{"network": "tcp", "type": "Redir", "sourceIP": "10.0.1.2", "sourcePort": "40000",
		"destinationIP": "203.0.113.10", "destinationPort": "443", "host": "", "sniffHost": "www.example.com",
		"dnsMode": "normal", "inboundName": "redirect", "process": "", "processPath": "", "remoteDestination": "",
		"specialProxy": "", "specialRules": "", "sourceMAC": "aa:bb:cc:dd:ee:ff", "sourceDevice": "laptop", "inboundUser": ""}
	if !reflect.DeepEqual(md, wantMD) {
		t.Errorf("metadata\n got %v\nwant %v", md, wantMD)
	}
	udp := conns[1].(map[string]any)
	umd := udp["metadata"].(map[string]any)
	if umd["sourceIP"] != "fd00::2" || umd["destinationPort"] != "53" || umd["type"] != "TProxy" ||
		!reflect.DeepEqual(udp["chains"], []any{"DIRECT"}) || udp["rule"] != "Match" {
		t.Errorf("udp: %v", udp)
	}
	blocked := conns[2].(map[string]any)
	bmd := blocked["metadata"].(map[string]any)
	if bmd["host"] != "ads.example" || bmd["destinationIP"] != "" || bmd["type"] != "HTTP" || bmd["inboundUser"] != "alice" ||
		!reflect.DeepEqual(blocked["chains"], []any{"REJECT"}) || blocked["rulePayload"] != "ads.example" {
		t.Errorf("blocked: %v", blocked)
	}
}

func TestClashCloseConnections(t *testing.T) {
	c := newFakeController()
	h := Handler(c, "test")
	if code, _ := do(t, h, "DELETE", "/connections/7", ""); code != 204 {
		t.Errorf("DELETE /connections/7: %d", code)
	}
	if code, _ := do(t, h, "DELETE", "/connections/nope", ""); code != 204 {
		t.Errorf("DELETE of an unknown id: %d (mihomo answers 204)", code)
	}
	if code, _ := do(t, h, "DELETE", "/connections", ""); code != 204 {
		t.Errorf("DELETE /connections: %d", code)
	}
	if !reflect.DeepEqual(c.closed, []string{"7", "nope", "*"}) {
		t.Errorf("closed %v", c.closed)
	}
}

// /traffic streams one {"up","down"} a second of the bytes carried in it, as JSON lines
// without an upgrade and as WebSocket messages with one; one sampler serves every listener
// (that it starts with the first and stops with the last: TestHubFirstAndLast).
func TestClashTrafficStreams(t *testing.T) {
	c := newFakeController()
	srv := httptest.NewServer(Handler(c, "test"))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/traffic")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(srv.URL, "http", "ws", 1)+"/traffic", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()

	lines := bufio.NewScanner(resp.Body)
	// Move the counters until a line and a message carry the move: the sampler may have
	// read before or after the first move.
	var sawLine, sawWS bool
	for i := 0; i < 20 && !(sawLine && sawWS); i++ {
		c.up.Add(100)
		c.down.Add(1000)
		if !sawLine {
			if !lines.Scan() {
				t.Fatal("the chunked stream ended")
			}
			var tr Traffic
			if err := json.Unmarshal(lines.Bytes(), &tr); err != nil {
				t.Fatalf("line %q: %v", lines.Text(), err)
			}
			sawLine = tr.Up > 0 && tr.Down == 10*tr.Up
		}
		if !sawWS {
			typ, b, err := ws.Read(ctx)
			if err != nil || typ != websocket.MessageText {
				t.Fatalf("ws: %v %v", typ, err)
			}
			var tr Traffic
			if err := json.Unmarshal(b, &tr); err != nil {
				t.Fatalf("message %q: %v", b, err)
			}
			sawWS = tr.Up > 0 && tr.Down == 10*tr.Up
		}
	}
	if !sawLine || !sawWS {
		t.Fatalf("no sample carried the move (line %v, ws %v)", sawLine, sawWS)
	}
}

// /logs streams the lines of its level and above as {"type","payload"}; an unknown level is
// a 400.
func TestClashLogsStream(t *testing.T) {
	c := newFakeController()
	srv := httptest.NewServer(Handler(c, "test"))
	defer srv.Close()
	if resp, err := http.Get(srv.URL + "/logs?level=chatty"); err != nil || resp.StatusCode != 400 {
		t.Fatalf("unknown level: %v %v", resp, err)
	}
	if c.logs.Listening() {
		t.Fatal("listening before anyone streams")
	}
	resp, err := http.Get(srv.URL + "/logs?level=warning")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if !c.logs.Listening() {
		t.Fatal("the stream's headers came before it listened: a line logged now would be lost")
	}
	c.logs.Publish(LogLine{Type: "info", Payload: "not for warning listeners"})
	c.logs.Publish(LogLine{Type: "warning", Payload: "upstream down upstream=a"})
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || sc.Text() != `{"type":"warning","payload":"upstream down upstream=a"}` {
		t.Fatalf("line %q", sc.Text())
	}
	resp.Body.Close()
	testutil.WaitUntil(t, "the stream to leave", func() bool { return !c.logs.Listening() })
}

// /connections over WebSocket sends a snapshot at once and then every interval.
func TestClashConnectionsOverWebSocket(t *testing.T) {
	srv := httptest.NewServer(Handler(newFakeController(), "test"))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(srv.URL, "http", "ws", 1)+"/connections?interval=100", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	for range 2 {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var cs connections
		if err := json.Unmarshal(b, &cs); err != nil || len(cs.Connections) != 3 {
			t.Fatalf("%v %s", err, b)
		}
	}
	if _, _, err := websocket.Dial(ctx, strings.Replace(srv.URL, "http", "ws", 1)+"/connections?interval=5", nil); err == nil {
		t.Fatal("interval 5ms accepted")
	}
}

// A WebSocket from another origin is refused unless the origin is configured; the token
// query authenticates it.
func TestWebSocketOriginsAndToken(t *testing.T) {
	srv := httptest.NewServer(Guarded(Handler(newFakeController(), "test"), Access{Secret: "s", CORSOrigins: []string{"http://dash.example"}}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := strings.Replace(srv.URL, "http", "ws", 1) + "/memory"
	dial := func(origin, query string) error {
		hdr := http.Header{}
		if origin != "" {
			hdr.Set("Origin", origin)
		}
		ws, _, err := websocket.Dial(ctx, url+query, &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			return err
		}
		defer ws.CloseNow()
		_, b, err := ws.Read(ctx)
		if err == nil && !strings.Contains(string(b), `"inuse"`) {
			err = fmt.Errorf("message %s", b)
		}
		return err
	}
	if err := dial("", ""); err == nil {
		t.Error("no token: upgraded")
	}
	if err := dial("", "?token=s"); err != nil {
		t.Errorf("token: %v", err)
	}
	if err := dial("http://dash.example", "?token=s"); err != nil {
		t.Errorf("configured origin: %v", err)
	}
	if err := dial("http://evil.example", "?token=s"); err == nil {
		t.Error("another origin upgraded")
	}
}
