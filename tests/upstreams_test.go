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

	"github.com/socksgate/socksgate/tests/netlab"
)

// upstreamsStartMicrosocks runs microsocks on 10.0.2.2:port (startMicrosocks takes 1080 on
// every address, which dante needs too).
func upstreamsStartMicrosocks(t testing.TB, tp *netlab.Topology, port, user, pass string) *netlab.Proc {
	t.Helper()
	needBin(t, "microsocks")
	args := []string{"microsocks", "-i", netlab.Proxy4, "-p", port}
	if user != "" {
		args = append(args, "-u", user, "-P", pass)
	}
	p := tp.Proxy.Start(args...)
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, port), 5*time.Second)
	return p
}

// upstreamsFetch runs socksgate with cfg, fetches a page from lan and returns socksgate's
// output after stopping it.
func upstreamsFetch(t *testing.T, tp *netlab.Topology, cfg string) (out, gwLog string, err error) {
	t.Helper()
	gw := startSocksgate(t, tp.GW, cfg)
	out, err = curl(tp.LAN, urlFor(netlab.WAN4, "/"))
	waitLog(gw, 2*time.Second, flowEnded.with("dst", "203.0.113.10:80"))
	gw.Kill()
	return out, gw.Output(), err
}

// Plain curl from lan reaches the server through every upstream kind: dante as SOCKS5 (with
// username auth where a private passwd can be arranged) and as SOCKS4, microsocks as a second
// SOCKS5 with auth, tinyproxy as HTTP CONNECT with and without Basic auth. Wrong HTTP proxy
// credentials fail with the refusal named in the flow log, without the password.
func TestUpstreamsEveryKind(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	dante := startDante(t, tp, danteOptions{})
	micro := upstreamsStartMicrosocks(t, tp, "1081", "mia", "m1cro-pw")
	tiny := upstreamsStartTinyproxy(t, tp, upstreamsTinyproxy{Port: "8888"})
	tinyAuth := upstreamsStartTinyproxy(t, tp, upstreamsTinyproxy{Port: "8889", User: "tina", Pass: "t1ny-pw"})

	for _, tc := range []struct {
		name, url string
		peerLog   *netlab.Proc // shows the flow, when the peer logs
	}{
		{"socks5 dante", "socks5://" + netlab.Proxy4 + ":1080", dante},
		{"socks4 dante", "socks4://" + netlab.Proxy4 + ":1080", dante},
		{"socks5 microsocks with auth", "socks5://mia:m1cro-pw@" + netlab.Proxy4 + ":1081", micro},
		{"http tinyproxy", "http://" + netlab.Proxy4 + ":8888", tiny},
		{"http tinyproxy with basic auth", "http://tina:t1ny-pw@" + netlab.Proxy4 + ":8889", tinyAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(tc.peerLog.Output(), netlab.WAN4)
			out, gwLog, err := upstreamsFetch(t, tp, upstreamsConfig(fmt.Sprintf("upstreams:\n  - {name: main, url: %q}\n", tc.url)))
			if err != nil || out != pageBody {
				t.Fatalf("curl: %v: %q\n%s", err, out, gwLog)
			}
			if l := lastLog(gwLog, msg("flow")); l.str("rule") == "" || l.str("outcome") != "ok" {
				t.Fatalf("no flow line:\n%s", gwLog)
			}
			if tc.peerLog == micro {
				return // microsocks logs nothing by default
			}
			if !waitFor(2*time.Second, func() bool { return strings.Count(tc.peerLog.Output(), netlab.WAN4) > before }) {
				t.Fatalf("the upstream's log does not show the flow:\n%s", tc.peerLog.Output())
			}
		})
	}

	// tinyproxy 1.11 answers a CONNECT with wrong credentials with 401 (407 without any).
	t.Run("http tinyproxy wrong password is a named auth refusal", func(t *testing.T) {
		out, gwLog, err := upstreamsFetch(t, tp, upstreamsConfig(fmt.Sprintf("upstreams:\n  - {name: main, url: %q}\n",
			"http://tina:wr0ng-pw@"+netlab.Proxy4+":8889")))
		if err == nil && out == pageBody {
			t.Fatal("the page arrived with wrong credentials")
		}
		line := lastLog(gwLog, msg("flow failed")).str("error")
		if !strings.Contains(line, "401 Unauthorized") || !strings.Contains(line, "credentials") || !strings.Contains(line, "http connect") {
			t.Fatalf("flow log does not name the auth refusal:\n%s", gwLog)
		}
		if strings.Contains(gwLog, "wr0ng-pw") {
			t.Fatal("the password appears in the log")
		}
	})

	t.Run("socks5 dante with username auth", func(t *testing.T) {
		danteAuth := upstreamsStartDanteWithUser(t, tp, "1082", "sgtuser", "d4nte-pw")
		out, gwLog, err := upstreamsFetch(t, tp, upstreamsConfig(fmt.Sprintf("upstreams:\n  - {name: main, url: %q}\n",
			"socks5://sgtuser:d4nte-pw@"+netlab.Proxy4+":1082")))
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q\n%s\ndante:\n%s", err, out, gwLog, danteAuth.Output())
		}
		_, gwLog, err = upstreamsFetch(t, tp, upstreamsConfig(fmt.Sprintf("upstreams:\n  - {name: main, url: %q}\n",
			"socks5://sgtuser:bad@"+netlab.Proxy4+":1082")))
		if err == nil || !lastLog(gwLog, msg("flow failed")).has(logFields{"error": "~authentication failed"}) {
			t.Fatalf("wrong dante password: curl %v\n%s", err, gwLog)
		}
	})
}

// squid's shipped policy allows CONNECT only to port 443: a captured port-80 flow over it fails
// and socksgate's flow log says why and what to change; with CONNECT allowed it works.
func TestUpstreamsSquidConnectOnlyTo443(t *testing.T) {
	cfg := upstreamsConfig(fmt.Sprintf("upstreams:\n  - {name: main, url: %q}\n", "http://"+netlab.Proxy4+":3128"))
	t.Run("default policy: explained refusal", func(t *testing.T) {
		tp := netlab.NewTopology(t)
		serveWeb(t, tp)
		upstreamsStartSquid(t, tp, "")
		out, gwLog, err := upstreamsFetch(t, tp, cfg)
		if err == nil && out == pageBody {
			t.Fatal("squid's default policy let a port-80 CONNECT through")
		}
		line := lastLog(gwLog, msg("flow failed")).str("error")
		for _, want := range []string{"403", "Forbidden", "CONNECT only to port 443", "SSL_ports", "allow port 80"} {
			if !strings.Contains(line, want) {
				t.Fatalf("flow log line lacks %q:\n%s", want, line)
			}
		}
	})
	t.Run("CONNECT allowed: works", func(t *testing.T) {
		tp := netlab.NewTopology(t)
		serveWeb(t, tp)
		dir := upstreamsStartSquid(t, tp, "http_access allow CONNECT lab")
		out, gwLog, err := upstreamsFetch(t, tp, cfg)
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q\n%s", err, out, gwLog)
		}
		if !waitFor(3*time.Second, func() bool {
			b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
			return strings.Contains(string(b), "CONNECT "+netlab.WAN4+":80")
		}) {
			b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
			t.Fatalf("squid's access log does not show the CONNECT:\n%s", b)
		}
	})
}

// A chain: socksgate reaches dante (SOCKS5) through tinyproxy (HTTP CONNECT). tinyproxy's log
// shows the CONNECT to dante, and dante's log shows the session to the server coming from the
// proxy host (tinyproxy), not from gw.
func TestUpstreamsChainSOCKS5ViaHTTP(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	dante := startDante(t, tp, danteOptions{})
	tiny := upstreamsStartTinyproxy(t, tp, upstreamsTinyproxy{Port: "8888", ConnectPorts: []string{"1080"}})
	cfg := upstreamsConfig(fmt.Sprintf(`upstreams:
  - {name: outer, url: %q, via: corp}
  - {name: corp, url: %q}
rules:
  - {action: proxy, upstream: outer}
`, "socks5://"+netlab.Proxy4+":1080", "http://"+netlab.Proxy4+":8888"))
	out, gwLog, err := upstreamsFetch(t, tp, cfg)
	if err != nil || out != pageBody {
		t.Fatalf("curl: %v: %q\n%s", err, out, gwLog)
	}
	if !waitFor(2*time.Second, func() bool {
		return strings.Contains(tiny.Output(), "CONNECT") && strings.Contains(tiny.Output(), netlab.Proxy4+":1080")
	}) {
		t.Fatalf("tinyproxy's log does not show the hop to dante:\n%s", tiny.Output())
	}
	if !waitFor(2*time.Second, func() bool { return upstreamsDanteSawFrom(dante.Output(), netlab.Proxy4, netlab.WAN4) }) {
		t.Fatalf("dante's log does not show a session from tinyproxy's host to the server:\n%s", dante.Output())
	}
	if upstreamsDanteSawFrom(dante.Output(), netlab.GWUp4, netlab.WAN4) {
		t.Fatalf("dante saw gw directly: the chain was skipped:\n%s", dante.Output())
	}
}

// upstreamsDanteSawFrom reports whether a dante log line shows a session from client to dst.
func upstreamsDanteSawFrom(log, client, dst string) bool {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, client+".") && strings.Contains(l, dst+".") {
			return true
		}
	}
	return false
}

// Failover between two dante upstreams in a group with a 1s health interval: killing the first
// during a run of requests costs no request; restarting it brings it back into use; with both
// down and on_down: block, requests fail promptly and nothing leaves gw toward wan directly.
func TestUpstreamsFailoverGroup(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	first := startDante(t, tp, danteOptions{Port: "1080"})
	second := startDante(t, tp, danteOptions{Port: "1081"})
	probe := tp.WAN.Listen("tcp", net.JoinHostPort(netlab.WAN4, "81")) // health probe target
	go func() {
		for {
			c, err := probe.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	leaked := upstreamsLeakCounter(t, tp)
	cfg := upstreamsConfig(fmt.Sprintf(`upstreams:
  - {name: first, url: %q}
  - {name: second, url: %q}
groups:
  - name: pool
    policy: failover
    upstreams: [first, second]
    on_down: block
    health: {probe: %q, interval: 1s, timeout: 1s, rise: 1, fall: 1}
rules:
  - {action: proxy, upstream: pool}
`, "socks5://"+netlab.Proxy4+":1080", "socks5://"+netlab.Proxy4+":1081", net.JoinHostPort(netlab.WAN4, "81")))
	gw := startSocksgate(t, tp.GW, cfg)

	get := func() error {
		out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/"))
		if err == nil && out != pageBody {
			err = fmt.Errorf("body %q", out)
		}
		return err
	}
	served := func(p *netlab.Proc) int { return strings.Count(p.Output(), "203.0.113.10.80") }

	for range 3 {
		if err := get(); err != nil {
			t.Fatalf("before failover: %v\n%s", err, gw.Output())
		}
	}
	if served(first) == 0 {
		t.Fatalf("the first upstream did not serve while up:\n%s", first.Output())
	}

	first.Kill()
	killed := time.Now()
	secondBefore := served(second)
	for i := range 5 {
		if err := get(); err != nil {
			t.Fatalf("request %d after killing the first upstream failed: %v\n%s", i, err, gw.Output())
		}
	}
	if time.Since(killed) > 5*time.Second || served(second) <= secondBefore {
		t.Fatalf("requests were not served by the second upstream promptly (%v)", time.Since(killed))
	}
	// The flow lines name the group and the member that carried each flow.
	if l := lastLog(gw.Output(), msg("flow")); !l.has(logFields{"upstream": "group:pool", "member": "second"}) {
		t.Fatalf("the last flow line does not name the group and its member second: %v", l)
	}
	if !waitFor(2*time.Second, func() bool { return countLogs(gw.Output(), msg("upstream down")) == 1 }) ||
		!lastLog(gw.Output(), msg("upstream down")).has(logFields{"upstream": "first", "group": "pool", "level": "warning"}) {
		t.Fatalf("want one 'upstream down' line for first:\n%s", gw.Output())
	}

	first = startDante(t, tp, danteOptions{Port: "1080"})
	if _, ok := waitLog(gw, 4*time.Second, msg("upstream up").with("upstream", "first")); !ok {
		t.Fatalf("the first upstream was not seen up again within the health interval:\n%s", gw.Output())
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(2*time.Second, func() bool { return served(first) > 0 }) {
		t.Fatalf("the restarted first upstream is not used:\n%s", first.Output())
	}

	first.Kill()
	second.Kill()
	for range 3 {
		start := time.Now()
		if err := get(); err == nil {
			t.Fatal("a request succeeded with every upstream down")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("a request with every upstream down took %v", d)
		}
	}
	if _, ok := waitLog(gw, 2*time.Second, logFields{"msg": "flow failed", "error": "~every upstream of the group is down"}); !ok {
		t.Fatalf("no flow failed with the group-down error:\n%s", gw.Output())
	}
	if n := leaked(); n != 0 {
		t.Fatalf("%d packets left gw straight for wan with on_down: block", n)
	}
	if n := upstreamsLabDrops(tp); n != 0 {
		t.Fatalf("gw's lab filter dropped %d forwarded lan packets", n)
	}
}
