//go:build linux

package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/tests/netlab"
)

// The dashboard in a real browser against a fake of the API (dashboard_helpers_test.go):
// without the secret it shows the unauthorized state and no data; a wrong secret is refused;
// the right one is kept in local storage and sent; a 401 later (the secret changed) brings
// the form back.
func TestDashboardAsksForTheSecret(t *testing.T) {
	f := newFakeAPI("s3cret")
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	ctx := newBrowser(t)

	step(t, ctx, "load the dashboard", chromedp.Navigate(srv.URL+"/ui/"))
	waitJS(t, ctx, "the unauthorized state", `document.body.dataset.state === "unauthorized"`)
	if evalJS[bool](t, ctx, `document.querySelector("#main").hidden && !document.querySelector("#login").hidden`) == false {
		t.Fatal("without the secret the views are shown, or the form is not")
	}
	if got := evalJS[string](t, ctx, `document.querySelector("#login-title").textContent`); got != "Unauthorized" {
		t.Errorf("login title %q", got)
	}
	screenshot(t, ctx, "login")

	step(t, ctx, "a wrong secret",
		chromedp.SendKeys(chromedp.CSS("#secret"), "wrong"),
		chromedp.Click(chromedp.CSS("#login-submit")))
	waitJS(t, ctx, "the wrong secret refused", `document.querySelector("#login-title").textContent.includes("wrong secret")`)
	if evalJS[string](t, ctx, `document.body.dataset.state`) != "unauthorized" {
		t.Fatal("a wrong secret got past the form")
	}

	step(t, ctx, "the right secret",
		chromedp.SendKeys(chromedp.CSS("#secret"), "s3cret"),
		chromedp.Click(chromedp.CSS("#login-submit")))
	waitJS(t, ctx, "the dashboard ready", `document.body.dataset.state === "ready"`)
	waitJS(t, ctx, "the live flows", `document.querySelector("#ov-flows").textContent === "4"`)
	if got := evalJS[string](t, ctx, `localStorage.getItem("socksgate.secret")`); got != "s3cret" {
		t.Errorf("local storage holds %q", got)
	}
	step(t, ctx, "reload", chromedp.Reload())
	waitJS(t, ctx, "ready again from local storage", `document.body.dataset.state === "ready"`)

	// The secret changes under the page: its next call gets a 401.
	f.mu.Lock()
	f.secret = "rotated"
	f.mu.Unlock()
	waitJS(t, ctx, "the unauthorized state after a 401", `document.body.dataset.state === "unauthorized"`)
	if got := evalJS[string](t, ctx, `document.querySelector("#login-title").textContent`); !strings.Contains(got, "wrong secret") {
		t.Errorf("after a 401 the title says %q", got)
	}
	screenshot(t, ctx, "unauthorized-after-401")
	step(t, ctx, "the new secret",
		chromedp.SendKeys(chromedp.CSS("#secret"), "rotated"),
		chromedp.Click(chromedp.CSS("#login-submit")))
	waitJS(t, ctx, "ready with the new secret", `document.body.dataset.state === "ready"`)
}

// Every view of the dashboard against the fake API, on a desktop window and on a phone's
// screen: the flows table sorts, filters and closes a flow with DELETE /connections/{id};
// a select group's member is chosen with PUT /proxies/{group}; the /connections stream is
// asked for every second only while the flows view is open; nothing is wider than a phone.
func TestDashboardViews(t *testing.T) {
	f := newFakeAPI("s3cret")
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	ctx := newBrowser(t)

	// An hour of throughput, as the page keeps it across a reload, seeded from a page of the
	// same origin (the dashboard itself would save its own few seconds over it on leaving).
	step(t, ctx, "seed the session",
		chromedp.Navigate(srv.URL+"/ui/none"),
		chromedp.Evaluate[chromedp.Void](`sessionStorage.setItem("socksgate.traffic", `+strconv.Quote(hourOfTraffic())+`); localStorage.setItem("socksgate.secret", "s3cret")`),
		chromedp.Navigate(srv.URL+"/ui/"))
	waitJS(t, ctx, "the dashboard ready", `document.body.dataset.state === "ready"`)

	// overview
	waitJS(t, ctx, "the flows counted", `document.querySelector("#ov-flows").textContent === "4"`)
	waitJS(t, ctx, "upstream health", `document.querySelectorAll("#ov-health li").length === 3`)
	waitJS(t, ctx, "the throughput", `document.querySelector("#ov-down").textContent.endsWith("/s")`)
	if got := evalJS[string](t, ctx, `document.querySelector("#ov-health").innerText`); !strings.Contains(got, "up-c") || !strings.Contains(got, "down") {
		t.Errorf("upstream health does not show up-c down:\n%s", got)
	}
	if _, _, ws := f.state(); ws["/connections"] != 5000 {
		t.Errorf("the overview asked for /connections every %d ms, want 5000", ws["/connections"])
	}
	screenshot(t, ctx, "overview")

	// flows
	openView(t, ctx, "flows")
	waitJS(t, ctx, "four flows", `document.querySelectorAll("#flows tbody tr[data-id]").length === 4`)
	testutil.WaitUntil(t, "the flows view streaming every second", func() bool {
		_, _, ws := f.state()
		return ws["/connections"] == 1000
	})
	row := evalJS[string](t, ctx, `document.querySelector('#flows tr[data-id="f1"]').innerText`)
	for _, want := range []string{"video.example.net:443", "laptop", "aa:bb:cc:00:00:20", "streaming", "DomainSuffix example.net", "proxy › up-a"} {
		if !strings.Contains(row, want) {
			t.Errorf("flow f1's row lacks %q:\n%s", want, row)
		}
	}
	if got := evalJS[string](t, ctx, `document.querySelector('#flows tr[data-id="f1"] td[data-label="Rule"]').firstChild.textContent`); got != "streaming" {
		t.Errorf("f1's rule cell begins with %q, want the rule's name first", got)
	}
	order := func() string {
		return evalJS[string](t, ctx, `[...document.querySelectorAll("#flows tbody tr[data-id]")].map(r => r.dataset.id).join(",")`)
	}
	if got := order(); got != "f3,f4,f1,f2" { // newest first
		t.Errorf("default order %s, want newest first f3,f4,f1,f2", got)
	}
	step(t, ctx, "sort by download", chromedp.Click(chromedp.CSS(`#flows th[data-sort="download"]`)))
	if got := order(); got != "f1,f4,f2,f3" {
		t.Errorf("by download, largest first: %s", got)
	}
	step(t, ctx, "sort by download again", chromedp.Click(chromedp.CSS(`#flows th[data-sort="download"]`)))
	if got := order(); got != "f3,f2,f4,f1" {
		t.Errorf("by download, smallest first: %s", got)
	}
	filter := func(what, js, want string) {
		t.Helper()
		step(t, ctx, "filter by "+what, chromedp.Evaluate[chromedp.Void](js))
		if got := order(); got != want {
			t.Errorf("filtered by %s: %s, want %s", what, got, want)
		}
	}
	const reset = `for (const s of ["f-device","f-rule","f-upstream"]) { const e = document.getElementById(s); e.value = ""; e.dispatchEvent(new Event("change")); }
		{ const e = document.getElementById("f-host"); e.value = ""; e.dispatchEvent(new Event("input")); }`
	selectJS := func(id, v string) string {
		return reset + `{ const e = document.getElementById("` + id + `"); e.value = ` + strconv.Quote(v) + `; e.dispatchEvent(new Event("change")); }`
	}
	filter("device", selectJS("f-device", "phone"), "f3")
	filter("rule", selectJS("f-rule", "streaming"), "f1")
	filter("rule without a name", selectJS("f-rule", "Match"), "f4") // f2 is Match too, but named default
	filter("upstream", selectJS("f-upstream", "up-b"), "f4")
	filter("host", reset+`{ const e = document.getElementById("f-host"); e.value = "mail"; e.dispatchEvent(new Event("input")); }`, "f2")
	filter("nothing", reset, "f3,f2,f4,f1")
	screenshot(t, ctx, "flows")

	step(t, ctx, "close flow f2", chromedp.Click(chromedp.CSS(`#flows button.close[data-id="f2"]`)))
	testutil.WaitUntil(t, "DELETE /connections/f2", func() bool {
		closed, _, _ := f.state()
		return slices.Equal(closed, []string{"f2"})
	})
	waitJS(t, ctx, "f2's row gone", `document.querySelector('#flows tr[data-id="f2"]') === null && document.querySelectorAll("#flows tbody tr[data-id]").length === 3`)

	// devices
	openView(t, ctx, "devices")
	waitJS(t, ctx, "three devices", `document.querySelectorAll("#devices tbody tr[data-mac]").length === 3`)
	dev := evalJS[string](t, ctx, `document.querySelector('#devices tr[data-mac="aa:bb:cc:00:00:20"]').innerText`)
	for _, want := range []string{"laptop", "fd00::20", "52.0 MB / 1.90 GB", "900 MB / 41.0 GB"} {
		if !strings.Contains(dev, want) {
			t.Errorf("the laptop's row lacks %q:\n%s", want, dev)
		}
	}
	screenshot(t, ctx, "devices")

	// upstreams and groups
	openView(t, ctx, "proxies")
	waitJS(t, ctx, "the groups", `document.querySelectorAll("#groups .group").length === 2 && document.querySelectorAll("#upstreams tbody tr[data-name]").length === 3`)
	if !evalJS[bool](t, ctx, `document.querySelector('button.member[data-group="auto"]').disabled`) {
		t.Error("a url-test group's members can be chosen")
	}
	step(t, ctx, "choose up-b", chromedp.Click(chromedp.CSS(`button.member[data-group="proxy"][data-member="up-b"]`)))
	testutil.WaitUntil(t, "PUT /proxies/proxy", func() bool {
		_, chosen, _ := f.state()
		return slices.Equal(chosen, []string{"proxy=up-b"})
	})
	waitJS(t, ctx, "up-b shown as the group's member", `document.querySelector('button.member.now[data-group="proxy"]').dataset.member === "up-b"`)
	screenshot(t, ctx, "proxies")

	// rules and DNS
	openView(t, ctx, "rules")
	waitJS(t, ctx, "the rules", `document.querySelectorAll("#rules tbody tr").length === 4`)
	if got := evalJS[string](t, ctx, `document.querySelector("#rules tbody").innerText`); !strings.Contains(got, "1,834") || !strings.Contains(got, "5,120") {
		t.Errorf("rules' hit counts missing:\n%s", got)
	}
	screenshot(t, ctx, "rules")
	openView(t, ctx, "dns")
	waitJS(t, ctx, "the DNS figures", `document.querySelector("#dns").innerText.includes("Cache hit ratio")`)
	if got := evalJS[string](t, ctx, `document.querySelector("#dns").innerText`); !strings.Contains(got, "78.5 %") || !strings.Contains(got, "12.0 ms") {
		t.Errorf("DNS view lacks the hit ratio 78.5 %% or the mean latency 12.0 ms:\n%s", got)
	}
	screenshot(t, ctx, "dns")

	// A phone: every view fits its width.
	phone(t, ctx, true)
	for _, v := range []string{"overview", "flows", "devices", "proxies", "rules", "dns"} {
		openView(t, ctx, v)
		waitJS(t, ctx, v+" drawn", `!document.querySelector("#view-`+v+`").innerText.includes("Loading")`)
		if v == "flows" {
			waitJS(t, ctx, "flow rows", `document.querySelectorAll("#flows tbody tr[data-id]").length === 3`)
		}
		if w := evalJS[int](t, ctx, `document.documentElement.scrollWidth - window.innerWidth`); w > 0 {
			t.Errorf("%s on a phone is %d px wider than the screen", v, w)
		}
		screenshot(t, ctx, "phone-"+v)
	}
}

// With 3000 live flows the table draws the first 500 (sorted and filtered over all of them)
// and says so; a filter reaches the flows beyond the first 500.
func TestDashboardManyFlows(t *testing.T) {
	f := newFakeAPI("s3cret")
	f.addFlows(2996)
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	ctx := newBrowser(t)
	signIn(t, ctx, srv.URL, "s3cret")
	openView(t, ctx, "flows")
	waitJS(t, ctx, "the first 500 of 3000", `document.querySelector("#f-count").textContent === "first 500 of 3000 flows"`)
	if n := evalJS[int](t, ctx, `document.querySelectorAll("#flows tbody tr[data-id]").length`); n != 500 {
		t.Errorf("%d rows drawn, want 500", n)
	}
	step(t, ctx, "filter by a device far down", chromedp.Evaluate[chromedp.Void](
		`{ const e = document.getElementById("f-device"); e.value = "host-2990"; e.dispatchEvent(new Event("change")); }`))
	waitJS(t, ctx, "the one flow of host-2990", `document.querySelectorAll("#flows tbody tr[data-id]").length === 1 && document.querySelector('#flows tr[data-id="bulk-2990"]') !== null`)
	screenshot(t, ctx, "flows-3000")
}

// The dashboard against socksgate itself in the lab, its admin endpoint with a secret: the
// page refuses without the secret; a flow that a lan client holds open appears with the lan
// host's MAC as its device (and the name its DHCP lease gives); closing it from the page
// ends the client's connection; choosing the other member of a select group moves new flows
// to the other upstream, as that upstream's own log shows. A screenshot of each view.
func TestDashboardAgainstSocksgate(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	upA := startDante(t, tp, danteOptions{Port: "1080"})
	upB := startDante(t, tp, danteOptions{Port: "1081"})

	// A server in wan that greets and then holds each connection open until the test ends.
	hold := tp.WAN.Listen("tcp", net.JoinHostPort(netlab.WAN4, "9000"))
	go func() {
		for {
			c, err := hold.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			io.WriteString(c, "hello\n")
		}
	}()

	mac := strings.TrimSpace(tp.LAN.MustRun("cat", "/sys/class/net/"+netlab.LANIf+"/address"))
	leases := writeFile(t, "dhcp.leases", fmt.Sprintf("%d %s %s lanbox 01:%s\n",
		time.Now().Add(time.Hour).Unix(), mac, netlab.LAN4, mac))
	const secret = "dash-s3cret"
	cfg := fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 3s, grace: 2s}
state_dir: %s
admin: {listen: "127.0.0.1:9090", secret: %s}
devices: {leases: [%s], reverse_dns: false}
upstreams:
  - {name: a, url: "socks5://%s:1080"}
  - {name: b, url: "socks5://%s:1081"}
groups:
  - {name: pool, policy: select, upstreams: [a, b]}
rules:
  - {action: proxy, upstream: pool}
`, netlab.GWLANIf, t.TempDir(), secret, leases, netlab.Proxy4, netlab.Proxy4)
	gw := startSocksgate(t, tp.GW, cfg)
	tp.GW.WaitListening("127.0.0.1:9090", 10*time.Second)
	base := forwardIntoNS(t, tp.GW, "127.0.0.1:9090")
	if r, err := http.Get(base + "/version"); err != nil {
		t.Fatal(err)
	} else if r.Body.Close(); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /version without the secret: %d, want 401", r.StatusCode)
	}
	ctx := newBrowser(t)

	// Without the secret: the unauthorized state, no data.
	step(t, ctx, "load the dashboard", chromedp.Navigate(base+"/ui/"))
	waitJS(t, ctx, "the unauthorized state", `document.body.dataset.state === "unauthorized"`)
	if !evalJS[bool](t, ctx, `document.querySelector("#main").hidden`) {
		t.Fatal("the views are shown without the secret")
	}
	screenshot(t, ctx, "lab-login")
	signIn(t, ctx, base, secret)

	// A flow the lan client holds open.
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := tp.LAN.Dial(dctx, "tcp", net.JoinHostPort(netlab.WAN4, "9000"))
	if err != nil {
		t.Fatalf("lan dial: %v\n%s", err, gw.Output())
	}
	defer client.Close()
	greet := make([]byte, 6)
	if _, err := io.ReadFull(client, greet); err != nil {
		t.Fatalf("the held flow's greeting: %v\n%s", err, gw.Output())
	}
	openView(t, ctx, "flows")
	sel := `[...document.querySelectorAll("#flows tbody tr[data-id]")].find(r => r.innerText.includes("` + netlab.WAN4 + `:9000"))`
	waitJS(t, ctx, "the held flow in the table", sel+` !== undefined`)
	waitJS(t, ctx, "the held flow's device", sel+`.dataset.mac === "`+mac+`"`)
	row := evalJS[string](t, ctx, sel+`.innerText`)
	if !strings.Contains(row, mac) || !strings.Contains(row, "pool") || !strings.Contains(row, "a") {
		t.Errorf("the held flow's row lacks the MAC %s or the group:\n%s", mac, row)
	}
	if !strings.Contains(row, "lanbox") {
		t.Errorf("the held flow's row lacks the device's DHCP name lanbox:\n%s", row)
	}
	screenshot(t, ctx, "lab-flows")
	phone(t, ctx, true)
	screenshot(t, ctx, "lab-phone-flows")
	phone(t, ctx, false)

	// Closing it from the page ends the client's connection.
	id := evalJS[string](t, ctx, sel+`.dataset.id`)
	closed := make(chan error, 1)
	go func() {
		client.SetReadDeadline(time.Now().Add(20 * time.Second)) // a bound, not the expectation
		_, err := client.Read(make([]byte, 1))
		closed <- err
	}()
	step(t, ctx, "close the held flow", chromedp.Click(chromedp.CSS(`#flows button.close[data-id="`+id+`"]`)))
	if err := <-closed; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client's connection did not end when the page closed its flow: %v\n%s", err, gw.Output())
	}
	waitJS(t, ctx, "the closed flow gone from the table", `document.querySelector('#flows tr[data-id="`+id+`"]') === null`)

	// Choosing b in the select group moves new flows to b.
	served := func(p *netlab.Proc) int { return strings.Count(p.Output(), netlab.WAN4+".80") }
	get := func() {
		t.Helper()
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl: %v %q\n%s", err, out, gw.Output())
		}
	}
	get()
	if !waitFor(5*time.Second, func() bool { return served(upA) > 0 }) || served(upB) > 0 {
		t.Fatalf("before the choice the flow went to b, or not to a:\na:\n%s\nb:\n%s", upA.Output(), upB.Output())
	}
	openView(t, ctx, "proxies")
	waitJS(t, ctx, "the select group", `document.querySelector('button.member.now[data-group="pool"]') !== null`)
	if now := evalJS[string](t, ctx, `document.querySelector('button.member.now[data-group="pool"]').dataset.member`); now != "a" {
		t.Fatalf("the page shows pool's member as %q, want a", now)
	}
	step(t, ctx, "choose b", chromedp.Click(chromedp.CSS(`button.member[data-group="pool"][data-member="b"]`)))
	waitJS(t, ctx, "b shown as pool's member", `document.querySelector('button.member.now[data-group="pool"]').dataset.member === "b"`)
	beforeA := served(upA)
	get()
	if !waitFor(5*time.Second, func() bool { return served(upB) > 0 }) {
		t.Fatalf("after choosing b in the page, b's log shows no flow:\n%s\ngw:\n%s", upB.Output(), gw.Output())
	}
	if served(upA) != beforeA {
		t.Errorf("a still carried a new flow after b was chosen:\n%s", upA.Output())
	}
	screenshot(t, ctx, "lab-proxies")

	// A 20 MB download shows in the page's throughput, from the /traffic stream.
	if out, err := curl(tp.LAN, "-o", "/dev/null", "-w", "%{size_download}", urlFor(netlab.WAN4, "/bytes?n=20000000")); err != nil || out != "20000000" {
		t.Fatalf("download: %v %q", err, out)
	}
	openView(t, ctx, "overview")
	waitJS(t, ctx, "the download in the page's throughput", `st.traffic.reduce((n, p) => n + p.down, 0) >= 20e6`)
	for _, v := range []string{"overview", "devices", "rules", "dns"} {
		openView(t, ctx, v)
		waitJS(t, ctx, v+" drawn", `!document.querySelector("#view-`+v+`").innerText.includes("Loading")`)
		screenshot(t, ctx, "lab-"+v)
	}
	if got := evalJS[string](t, ctx, `document.querySelector("#view-devices").innerText`); !strings.Contains(got, mac) {
		t.Errorf("the devices view lacks the lan host %s:\n%s", mac, got)
	}
}

// The DNS view against socksgate's own DNS in the lab (dnsmasq as the origin in wan): after
// two lan queries for a cacheable name, the page shows the queries by rule, a cache hit ratio
// and each resolver's mean latency, as GET /dns has them.
func TestDashboardDNSFigures(t *testing.T) {
	tp := netlab.NewTopology(t)
	dnsStartOrigin(t, tp)
	startDante(t, tp, danteOptions{})
	const secret = "dns-s3cret"
	gw := startSocksgate(t, tp.GW, dnsConfig("  hijack: true\n", "")+
		`admin: {listen: "127.0.0.1:9090", secret: `+secret+"}\n")
	for range 2 {
		if out, err := digShort(tp.LAN, netlab.WAN4, "direct.test", "A"); err != nil || out != netlab.WAN4 {
			t.Fatalf("dig direct.test: %v %q\n%s", err, out, gw.Output())
		}
	}
	tp.GW.WaitListening("127.0.0.1:9090", 10*time.Second)
	base := forwardIntoNS(t, tp.GW, "127.0.0.1:9090")
	ctx := newBrowser(t)
	signIn(t, ctx, base, secret)
	openView(t, ctx, "dns")
	waitJS(t, ctx, "the DNS figures", `document.querySelector("#dns").innerText.includes("Cache hit ratio")`)
	text := evalJS[string](t, ctx, `document.querySelector("#dns").innerText`)
	for _, want := range []string{"50.0 %", "Queries", "default", "Latency", netlab.WAN4 + ":53", " ms"} {
		if !strings.Contains(text, want) {
			t.Errorf("the DNS view lacks %q:\n%s", want, text)
		}
	}
	screenshot(t, ctx, "lab-dns-on")
}
