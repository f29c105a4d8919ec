//go:build linux

package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/geoip/geoiptest"
	"github.com/socksgate/socksgate/tests/netlab"
)

// The matchers of issue 19 against real clients: per-user policy on the explicit ports
// (curl's --proxy-user on the HTTP proxy, CONNECT and forwarded, and SOCKS5 username/password),
// domain_keyword and domain_regex on captured flows named by their sniffed Host, and dst_geoip
// from a tiny database the test writes, replaced while socksgate runs.

// matchersConfig serves the explicit ports on gw's LAN address for three users and captures
// the LAN; "dante" is the way of the rules that match, microsocks ("main") the catch-all's.
func matchersConfig(db string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen:
  http: ["%s:8080"]
  socks: ["%s:1080"]
  users:
    - {username: alice, password: alice-pw}
    - {username: bob, password: bob-pw}
    - {username: carol, password: carol-pw}
timeouts: {dial: 3s, grace: 2s}
admin: 127.0.0.1:9091
geoip: {path: %q}
upstreams:
  - {name: main, url: "socks5://%s:1080"}
  - {name: dante, url: "socks5://%s:%s"}
rules:
  - {name: alice-dante, user: [alice], upstream: dante}
  - {name: bob-direct, user: [bob], action: direct}
  - {name: carol-blocked, user: [carol], action: block}
  - {name: keyword, domain_keyword: [video], upstream: dante}
  - {name: regex, domain_regex: ['^cdn[0-9]+\.example\.net$'], upstream: dante}
  - {name: china, dst_geoip: [cn], upstream: dante}
  - {name: catchall, upstream: main}
`, netlab.GWLANIf, netlab.GWLAN4, netlab.GWLAN4, db, netlab.Proxy4, netlab.Proxy4, routingDantePort)
}

// matchersFlow waits for the line of the nth TCP flow socksgate ended (1-based; each curl
// here is one flow) and checks its fields.
func matchersFlow(t *testing.T, gw *netlab.Proc, n int, want logFields) {
	t.Helper()
	var lines []logLine
	waitFor(3*time.Second, func() bool {
		lines = findLogs(gw.Output(), flowEnded)
		return len(lines) >= n
	})
	if len(lines) < n {
		t.Fatalf("%d flow lines, want %d:\n%s", len(lines), n, gw.Output())
	}
	if !lines[n-1].has(want) {
		t.Fatalf("flow %d: %s, want %v", n, lines[n-1], want)
	}
}

func TestMatchersUsersNamesAndCountries(t *testing.T) {
	lab := newRoutingLab(t)
	dbPath := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.WriteFile(dbPath, geoiptest.Network{Prefix: netlab.WAN4 + "/32", Country: "CN"}); err != nil {
		t.Fatal(err)
	}
	gw := startSocksgate(t, lab.GW, matchersConfig(dbPath))
	web := urlFor(netlab.WAN4, "/")
	wan80 := net.JoinHostPort(netlab.WAN4, "80")
	httpProxy := "http://" + net.JoinHostPort(netlab.GWLAN4, "8080")
	socksProxy := net.JoinHostPort(netlab.GWLAN4, "1080")
	flows := 0
	get := func(wantOK bool, args ...string) string {
		t.Helper()
		out, err := curl(lab.LAN, args...)
		if wantOK && (err != nil || out != pageBody) {
			t.Fatalf("curl %v: %v: %q", args, err, out)
		}
		if !wantOK && err == nil && out == pageBody {
			t.Fatalf("curl %v: the page arrived, want a refusal", args)
		}
		flows++
		return out
	}
	danteSaw := func(what string) {
		t.Helper()
		if !waitFor(2*time.Second, func() bool { return strings.Contains(lab.dante.Output(), routingDanteAddr(wan80)) }) {
			t.Fatalf("%s: dante's log does not show %s:\n%s", what, wan80, lab.dante.Output())
		}
	}

	t.Run("per-user policy on the explicit ports", func(t *testing.T) {
		// alice through dante, forwarded (absolute URI) and through CONNECT, and over SOCKS5.
		get(true, "--proxy-user", "alice:alice-pw", "-x", httpProxy, web)
		matchersFlow(t, gw, flows, logFields{"rule": "alice-dante", "user": "alice", "inbound": "http", "upstream": "~:" + routingDantePort})
		danteSaw("alice")
		get(true, "--proxytunnel", "--proxy-user", "alice:alice-pw", "-x", httpProxy, web)
		matchersFlow(t, gw, flows, logFields{"rule": "alice-dante", "user": "alice"})
		get(true, "--socks5", socksProxy, "--proxy-user", "alice:alice-pw", web)
		matchersFlow(t, gw, flows, logFields{"rule": "alice-dante", "user": "alice", "inbound": "socks"})
		// bob direct, on both ports.
		get(true, "--proxy-user", "bob:bob-pw", "-x", httpProxy, web)
		matchersFlow(t, gw, flows, logFields{"rule": "bob-direct", "user": "bob", "action": "direct", "upstream": "direct"})
		get(true, "--socks5", socksProxy, "--proxy-user", "bob:bob-pw", web)
		matchersFlow(t, gw, flows, logFields{"rule": "bob-direct", "user": "bob", "action": "direct"})
		// carol blocked: 403 on the HTTP port, a refusal on the SOCKS port.
		if out := get(false, "-o", "/dev/null", "-w", "%{http_code}", "--proxy-user", "carol:carol-pw", "-x", httpProxy, web); out != "403" {
			t.Fatalf("carol through the HTTP proxy: %q, want 403", out)
		}
		matchersFlow(t, gw, flows, logFields{"rule": "carol-blocked", "user": "carol", "action": "block"})
		get(false, "--socks5", socksProxy, "--proxy-user", "carol:carol-pw", web)
		matchersFlow(t, gw, flows, logFields{"rule": "carol-blocked", "user": "carol"})
	})

	t.Run("keyword and regex on sniffed names", func(t *testing.T) {
		for _, tc := range []struct{ name, rule string }{
			{"www.video-site.example", "keyword"},
			{"cdn12.example.net", "regex"},
			{"cdn12.example.net.evil.test", "china"}, // the regex is anchored; the address is in CN
		} {
			get(true, "--resolve", tc.name+":80:"+netlab.WAN4, "http://"+tc.name+"/")
			matchersFlow(t, gw, flows, logFields{"rule": tc.rule, "dst": tc.name + ":80", "upstream": "~:" + routingDantePort})
		}
	})

	t.Run("dst_geoip follows the database file", func(t *testing.T) {
		get(true, web)
		matchersFlow(t, gw, flows, logFields{"rule": "china", "upstream": "~:" + routingDantePort})

		// A broken file keeps the version in force, and says so in the log and in /metrics.
		if err := os.WriteFile(dbPath, []byte("half a database"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, ok := waitLog(gw, 5*time.Second, msg("geoip: the database did not load; the version in force stays")); !ok {
			t.Fatalf("no error for the broken database:\n%s", gw.Output())
		}
		metrics, err := lab.GW.Run("curl", "-sS", "--max-time", "5", "http://127.0.0.1:9091/metrics")
		if err != nil || !strings.Contains(metrics, `socksgate_geoip_load_ok{path="`+dbPath+`"} 0`) ||
			!strings.Contains(metrics, "socksgate_geoip_load_error{") || !strings.Contains(metrics, "socksgate_geoip_load_failures_total") {
			t.Fatalf("/metrics: %v\n%s", err, grepLines(metrics, "geoip"))
		}
		get(true, web)
		matchersFlow(t, gw, flows, logFields{"rule": "china"})

		// A new version renamed into place moves the address to another country.
		if err := geoiptest.WriteFile(dbPath, geoiptest.Network{Prefix: netlab.WAN4 + "/32", Country: "US"}); err != nil {
			t.Fatal(err)
		}
		if _, ok := waitLog(gw, 5*time.Second, msg("geoip: database reloaded")); !ok {
			t.Fatalf("no reload of the database:\n%s", gw.Output())
		}
		get(true, web)
		matchersFlow(t, gw, flows, logFields{"rule": "catchall"})
		metrics, _ = lab.GW.Run("curl", "-sS", "--max-time", "5", "http://127.0.0.1:9091/metrics")
		if !strings.Contains(metrics, `socksgate_geoip_load_ok{path="`+dbPath+`"} 1`) || strings.Contains(metrics, "socksgate_geoip_load_error{") {
			t.Fatalf("/metrics after a good reload:\n%s", grepLines(metrics, "geoip"))
		}
	})
	stopSocksgate(t, lab.GW, gw)
}

// A direct rule on countries alone is hoisted like one on a cidr set: the country's networks
// in the database go into the kernel's direct sets, flows there are forwarded by gw's kernel
// and never reach socksgate, and when the database is replaced the sets follow it.
func TestHoistedCountryNeverReachesSocksgate(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	tp.WAN.Addr(netlab.WANIf, "203.0.113.12/24")
	tp.AllowDirect("203.0.113.12")
	dbPath := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.WriteFile(dbPath, geoiptest.Network{Prefix: "203.0.113.12/32", Country: "DE"}); err != nil {
		t.Fatal(err)
	}
	cfg := gatewayConfig("socks5://"+netlab.Proxy4+":1080", fmt.Sprintf(`geoip: {path: %q}
rules:
  - {name: home, dst_geoip: [de], action: direct}
  - {name: catchall, upstream: main}
admin: %q
`, dbPath, setsAdmin))
	gw := startSocksgate(t, tp.GW, cfg)
	if _, ok := waitLog(gw, 5*time.Second, msg("kernel direct sets: flows to these destinations are routed by the kernel").with("rules", "[home]")); !ok {
		t.Fatalf("no direct sets logged:\n%s", gw.Output())
	}
	if set, _ := tp.GW.Run("nft", "list", "set", "inet", "socksgate", "direct4"); !strings.Contains(set, "203.0.113.12") {
		t.Fatalf("direct4 lacks the country's network:\n%s", set)
	}
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor("203.0.113.12", "/")); err != nil || out != pageBody {
		t.Fatalf("hoisted: %v: %q", err, out)
	}
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("captured: %v: %q", err, out)
	}
	routingFlowLine(t, gw, net.JoinHostPort(netlab.WAN4, "80"))
	if rs := flowRules(gw, "203.0.113.12:80"); len(rs) != 0 {
		t.Errorf("socksgate carried flows to the hoisted country: %q", rs)
	}

	// The database moves the address to another country: the kernel's set follows, and the
	// next flow there is socksgate's, decided by the catch-all.
	if err := geoiptest.WriteFile(dbPath, geoiptest.Network{Prefix: "203.0.113.12/32", Country: "FR"}); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool {
		set, _ := tp.GW.Run("nft", "list", "set", "inet", "socksgate", "direct4")
		return !strings.Contains(set, "203.0.113.12")
	}) {
		t.Fatalf("direct4 still holds 203.0.113.12:\n%s", gw.Output())
	}
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor("203.0.113.12", "/")); err != nil || out != pageBody {
		t.Fatalf("after the change: %v: %q", err, out)
	}
	if l := routingFlowLine(t, gw, "203.0.113.12:80"); l.str("rule") != "catchall" {
		t.Fatalf("flow line: %s", l)
	}
	stopSocksgate(t, tp.GW, gw)
}
