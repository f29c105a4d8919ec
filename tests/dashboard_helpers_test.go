//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/tests/netlab"
)

// The dashboard tests drive Debian's chromium with chromedp (a test-only dependency: nothing
// under cmd/ imports it). Each test has its own headless browser; its screenshots go to
// $SOCKSGATE_TEST_OUT, or tests/out/ (gitignored), where they outlive the test.

// chromiumPath finds the browser, skipping (failing under CI) when it is not installed.
func chromiumPath(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	skipOutsideCI(t, "chromium is not installed (make deps installs it)")
	return ""
}

// newBrowser starts a headless chromium for the test and returns its first tab's context,
// which has already run once (so a timeout on a child context limits one step, not the
// browser).
func newBrowser(t testing.TB) context.Context {
	t.Helper()
	path := chromiumPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // root, in a container
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(f string, a ...any) {
		if !strings.Contains(f, "could not unmarshal") { // events of newer Chromiums than cdproto knows
			t.Logf("chromedp: "+f, a...)
		}
	}))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// step runs browser actions with a bound on how long they may take, failing the test with
// what was being done.
func step(t testing.TB, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitJS waits until a JavaScript expression is truthy in the page.
func waitJS(t testing.TB, ctx context.Context, what, expr string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(sctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 2000) : ""`))
		t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, body)
	}
}

// evalJS evaluates an expression in the page.
func evalJS[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// testOutDir is where screenshots are kept after the test.
func testOutDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SOCKSGATE_TEST_OUT")
	if dir == "" {
		dir = "out"
	}
	dir = filepath.Join(dir, "dashboard")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	return abs
}

// screenshot saves the whole page as a PNG under testOutDir and logs where.
func screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	// From the top: a full-page capture draws the sticky header where the page was scrolled.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`)); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(testOutDir(t), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// phone switches the tab to a phone's viewport (390x844 CSS pixels, as an iPhone 13's), or
// back to the desktop window with phone(false).
func phone(t testing.TB, ctx context.Context, on bool) {
	t.Helper()
	if on {
		step(t, ctx, "phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile, chromedp.EmulateTouch))
		return
	}
	// EmulateReset's zero-sized override leaves the phone's width on full-page captures.
	if _, err := chromedp.Call(ctx, emulation.ClearDeviceMetricsOverride, cdp.Empty{}); err != nil {
		t.Fatalf("desktop viewport: %v", err)
	}
	if _, err := chromedp.Call(ctx, emulation.SetTouchEmulationEnabled, emulation.SetTouchEmulationEnabledParams{Enabled: false}); err != nil {
		t.Fatalf("desktop viewport: %v", err)
	}
}

// openView navigates the dashboard to a view and waits until it is drawn.
func openView(t testing.TB, ctx context.Context, view string) {
	t.Helper()
	step(t, ctx, "open "+view, chromedp.Evaluate[chromedp.Void](`location.hash = "#`+view+`"`))
	waitJS(t, ctx, view+" view shown", `document.querySelector("#view-`+view+`.active") !== null`)
}

// signIn loads the dashboard at base with the secret in its local storage, as the login form
// leaves it, and waits for it to be ready.
func signIn(t testing.TB, ctx context.Context, base, secret string) {
	t.Helper()
	step(t, ctx, "load the dashboard", chromedp.Navigate(base+"/ui/"))
	waitJS(t, ctx, "the login form", `document.body.dataset.state === "unauthorized" || document.body.dataset.state === "ready"`)
	if evalJS[string](t, ctx, `document.body.dataset.state`) == "unauthorized" {
		step(t, ctx, "enter the secret",
			chromedp.SendKeys(chromedp.CSS("#secret"), secret),
			chromedp.Click(chromedp.CSS("#login-submit")))
	}
	waitJS(t, ctx, "the dashboard ready", `document.body.dataset.state === "ready"`)
}

// forwardIntoNS makes addr inside ns reachable on a loopback port of the test's own
// namespace, where the browser runs (its DevTools socket would otherwise sit in the
// namespace's loopback), and returns the base URL. Host headers pass through unchanged.
func forwardIntoNS(t testing.TB, ns *netlab.NS, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := ns.Dial(context.Background(), "tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	return "http://" + ln.Addr().String()
}

// ---- a fake of the API the dashboard speaks, in the shapes of docs/ and CONTRACT18, for
// the views the lab cannot fill on its own (devices with a month of bytes, rules with hits,
// a dozen flows, DNS counters).

type fakeAPI struct {
	secret string
	ui     http.Handler

	mu     sync.Mutex
	flows  []map[string]any
	now    map[string]string // select group -> member
	closed []string          // ids closed with DELETE /connections/{id}
	chosen []string          // "group=member" chosen with PUT /proxies/{group}
	ws     map[string]int    // WebSocket upgrades by path, with their ?interval=
}

type emptySource struct{}

func (emptySource) Snapshot() admin.Snapshot    { return admin.Snapshot{} }
func (emptySource) Flows() []admin.Flow         { return nil }
func (emptySource) Upstreams() []admin.Upstream { return nil }

func newFakeAPI(secret string) *fakeAPI {
	f := &fakeAPI{
		secret: secret,
		ui:     admin.Handler(emptySource{}, "test"),
		now:    map[string]string{"proxy": "up-a"},
		ws:     map[string]int{},
	}
	start := time.Now().Add(-90 * time.Second)
	flow := func(id, mac, dev, src, host, dstIP string, port int, rule, payload string, chains []string, up, down int, age time.Duration) map[string]any {
		// socksgate's rule name (ruleName) where the API has one: f4 stands for a server
		// without the extension.
		name := map[string]string{"f1": "streaming", "f2": "default", "f3": "lan-direct"}[id]
		return map[string]any{
			"ruleName": name,
			"id":       id,
			"metadata": map[string]any{
				"network": "tcp", "type": "Redir", "sourceIP": src, "sourcePort": "51000",
				"destinationIP": dstIP, "destinationPort": strconv.Itoa(port), "host": host,
				"sniffHost": "", "dnsMode": "normal", "sourceMAC": mac, "sourceDevice": dev,
			},
			"upload": up, "download": down, "start": start.Add(-age).Format(time.RFC3339Nano),
			"chains": chains, "rule": rule, "rulePayload": payload,
		}
	}
	f.flows = []map[string]any{
		flow("f1", "aa:bb:cc:00:00:20", "laptop", "192.168.1.20", "video.example.net", "203.0.113.10", 443, "DomainSuffix", "example.net", []string{"up-a", "proxy"}, 48_000, 310_000_000, 20*time.Minute),
		flow("f2", "aa:bb:cc:00:00:20", "laptop", "192.168.1.20", "mail.example.org", "203.0.113.25", 993, "Match", "", []string{"up-a", "proxy"}, 12_500, 98_000, time.Hour),
		flow("f3", "aa:bb:cc:00:00:31", "phone", "192.168.1.31", "", "198.51.100.7", 8443, "IPCIDR", "198.51.100.0/24", []string{"DIRECT"}, 1_200, 4_100, 3*time.Second),
		flow("f4", "aa:bb:cc:00:00:44", "", "192.168.1.44", "updates.example.com", "203.0.113.99", 80, "Match", "", []string{"up-b", "proxy"}, 900, 2_400_000, 2*time.Minute),
	}
	return f
}

// addFlows adds n more flows from n devices, for the table's limits.
func (f *fakeAPI) addFlows(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range n {
		fl := map[string]any{}
		b, _ := json.Marshal(f.flows[i%len(f.flows)])
		json.Unmarshal(b, &fl)
		fl["id"] = fmt.Sprintf("bulk-%d", i)
		fl["download"], fl["upload"] = i*1000, i
		fl["metadata"].(map[string]any)["sourceMAC"] = fmt.Sprintf("aa:bb:cc:00:%02x:%02x", i>>8&0xff, i&0xff)
		fl["metadata"].(map[string]any)["sourceDevice"] = fmt.Sprintf("host-%d", i)
		f.flows = append(f.flows, fl)
	}
}

func (f *fakeAPI) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /ui/", f.ui)
	mux.Handle("GET /ui", f.ui)
	api := http.NewServeMux()
	api.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		fakeJSON(w, map[string]any{"version": "socksgate-test", "meta": false})
	})
	api.HandleFunc("GET /traffic", func(w http.ResponseWriter, r *http.Request) {
		n := 0
		f.stream(w, r, time.Second, func() any {
			n++
			return map[string]any{"up": 20_000 + 5_000*(n%3), "down": 900_000 + 100_000*(n%5)}
		})
	})
	api.HandleFunc("GET /connections", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("interval"))
		if ms <= 0 {
			ms = 1000
		}
		f.stream(w, r, time.Duration(ms)*time.Millisecond, func() any {
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, fl := range f.flows { // the bytes move, for the speeds
				fl["download"] = asInt(fl["download"]) + 150_000
				fl["upload"] = asInt(fl["upload"]) + 2_000
			}
			b, _ := json.Marshal(map[string]any{"downloadTotal": 1_250_000_000, "uploadTotal": 81_000_000, "connections": f.flows, "memory": 0})
			return json.RawMessage(b)
		})
	})
	api.HandleFunc("DELETE /connections/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		id := r.PathValue("id")
		f.closed = append(f.closed, id)
		for i, fl := range f.flows {
			if fl["id"] == id {
				f.flows = append(f.flows[:i], f.flows[i+1:]...)
				break
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	api.HandleFunc("GET /proxies", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		hist := func(ds ...int) []map[string]any {
			var h []map[string]any
			for i, d := range ds {
				h = append(h, map[string]any{"time": time.Now().Add(time.Duration(i-len(ds)) * time.Minute).Format(time.RFC3339), "delay": d})
			}
			return h
		}
		fakeJSON(w, map[string]any{"proxies": map[string]any{
			"up-a":   map[string]any{"name": "up-a", "type": "Socks5", "udp": true, "alive": true, "history": hist(42, 40, 45, 39, 41, 60, 44, 43)},
			"up-b":   map[string]any{"name": "up-b", "type": "Http", "udp": false, "alive": true, "history": hist(80, 95, 77, 120, 88, 82)},
			"up-c":   map[string]any{"name": "up-c", "type": "Socks5", "udp": true, "alive": false, "history": hist(50, 0, 0)},
			"DIRECT": map[string]any{"name": "DIRECT", "type": "Direct", "udp": true, "alive": true, "history": []any{}},
			"proxy":  map[string]any{"name": "proxy", "type": "Selector", "now": f.now["proxy"], "all": []string{"up-a", "up-b", "up-c"}, "alive": true, "history": []any{}},
			"GLOBAL": map[string]any{"name": "GLOBAL", "type": "Selector", "now": "up-a", "all": []string{"up-a", "up-b", "up-c", "proxy", "auto"}, "alive": true, "history": []any{}},
			"auto":   map[string]any{"name": "auto", "type": "URLTest", "now": "up-a", "all": []string{"up-a", "up-b"}, "alive": true, "history": []any{}, "testUrl": "http://probe.test/"},
		}})
	})
	api.HandleFunc("PUT /proxies/{group}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Name string `json:"name"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Name == "" {
			http.Error(w, `{"message":"Body invalid"}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		g := r.PathValue("group")
		if _, ok := f.now[g]; !ok {
			http.Error(w, `{"message":"Resource not found"}`, http.StatusNotFound)
			return
		}
		f.now[g] = body.Name
		f.chosen = append(f.chosen, g+"="+body.Name)
		w.WriteHeader(http.StatusNoContent)
	})
	api.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		fakeJSON(w, map[string]any{"devices": []map[string]any{
			{"mac": "aa:bb:cc:00:00:20", "name": "laptop", "name_from": "dhcp", "addresses": []string{"192.168.1.20", "fd00::20"}, "flows": 2,
				"last_seen": time.Now().Add(-2 * time.Second).Format(time.RFC3339), "today": map[string]int{"up": 52_000_000, "down": 1_900_000_000},
				"month": map[string]int{"up": 900_000_000, "down": 41_000_000_000}, "total": map[string]int{"up": 2_000_000_000, "down": 90_000_000_000}},
			{"mac": "aa:bb:cc:00:00:31", "name": "phone", "name_from": "dns", "addresses": []string{"192.168.1.31"}, "flows": 1,
				"last_seen": time.Now().Add(-40 * time.Second).Format(time.RFC3339), "today": map[string]int{"up": 3_100_000, "down": 77_000_000},
				"month": map[string]int{"up": 60_000_000, "down": 2_400_000_000}, "total": map[string]int{"up": 60_000_000, "down": 2_400_000_000}},
			{"mac": "aa:bb:cc:00:00:44", "name": "", "name_from": "", "addresses": []string{"192.168.1.44"}, "flows": 1,
				"last_seen": time.Now().Format(time.RFC3339), "today": map[string]int{"up": 900, "down": 2_400_000},
				"month": map[string]int{"up": 900, "down": 2_400_000}, "total": map[string]int{"up": 900, "down": 2_400_000}},
		}})
	})
	api.HandleFunc("GET /rules", func(w http.ResponseWriter, r *http.Request) {
		rule := func(typ, payload, proxy string, hits int) map[string]any {
			return map[string]any{"type": typ, "payload": payload, "proxy": proxy, "size": -1,
				"extra": map[string]any{"disabled": false, "hitCount": hits, "hitAt": time.Now().Add(-time.Duration(hits%90) * time.Second).Format(time.RFC3339), "missCount": 0, "missAt": "0001-01-01T00:00:00Z"}}
		}
		fakeJSON(w, map[string]any{"rules": []map[string]any{
			rule("DomainSuffix", "example.net", "proxy", 1834),
			rule("IPCIDR", "198.51.100.0/24", "DIRECT", 77),
			rule("SrcMAC", "aa:bb:cc:00:00:44", "proxy", 12),
			rule("Match", "", "proxy", 5120),
		}})
	})
	api.HandleFunc("GET /dns", func(w http.ResponseWriter, r *http.Request) {
		fakeJSON(w, map[string]any{
			"Queries":   []map[string]any{{"Rule": "ads", "Action": "block", "Queries": 310}, {"Rule": "default", "Action": "forward", "Queries": 9120}},
			"CacheHits": 7400, "CacheMisses": 2030, "Coalesced": 41,
			"UpstreamErrors": map[string]int{"udp://192.168.1.1:53": 3},
			"RateLimited":    0, "RefusedSource": 0, "Malformed": 1, "Overloaded": 0,
			"Latency":      []map[string]any{{"Upstream": "udp://192.168.1.1:53", "Count": 2030, "Sum": 24.36}},
			"CacheEntries": 1288, "CacheBytes": 301000, "Mappings": 950, "FakeIPs": 0,
		})
	})
	mux.Handle("/", f.auth(api))
	return mux
}

// auth answers 401 without the secret, as a Bearer header or (WebSockets) a token query.
func (f *fakeAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		secret := f.secret
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+secret && r.URL.Query().Get("token") != secret {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"message":"Unauthorized"}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// stream sends msg() every interval over a WebSocket, or as JSON lines without an upgrade.
func (f *fakeAPI) stream(w http.ResponseWriter, r *http.Request, every time.Duration, msg func() any) {
	f.mu.Lock()
	f.ws[r.URL.Path] = int(every / time.Millisecond)
	f.mu.Unlock()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := c.CloseRead(r.Context())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		b, _ := json.Marshal(msg())
		if err := c.Write(ctx, websocket.MessageText, b); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (f *fakeAPI) state() (closed, chosen []string, ws map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ws = map[string]int{}
	for k, v := range f.ws {
		ws[k] = v
	}
	return append([]string(nil), f.closed...), append([]string(nil), f.chosen...), ws
}

func asInt(v any) int {
	switch n := v.(type) {
	case int:
		return n
	case float64:
		return int(n)
	}
	return 0
}

func fakeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// hourOfTraffic is a synthetic last hour for the chart, as the page keeps it in its session
// storage across a reload: a download that ran twenty minutes and a steady trickle.
func hourOfTraffic() string {
	now := float64(time.Now().UnixMilli()) / 1000
	var b strings.Builder
	b.WriteByte('[')
	for i := 3600; i > 0; i -= 2 {
		t := now - float64(i)
		down, up := 40_000+float64((i*7919)%30_000), 8_000+float64((i*104729)%6_000)
		if i < 2400 && i > 1200 {
			down += 2_600_000 + float64((i*31)%400_000)
			up += 60_000
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"t":%.3f,"up":%.0f,"down":%.0f}`, t, up, down)
	}
	b.WriteByte(']')
	return b.String()
}
