//go:build linux

package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// routerExcludedUID owns no entry in /etc/passwd: setpriv runs curl as it.
const routerExcludedUID = "4242"

// routerServeWhoami runs an HTTP server in wan on port, both families, that answers with the
// address the connection came from: dante's wan address when the flow went through the
// upstream, gw's own (10.0.2.1, fd00:2::1) when it went direct.
func routerServeWhoami(t testing.TB, tp *netlab.Topology, port string) {
	t.Helper()
	ln := tp.WAN.Listen("tcp", "[::]:"+port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, strings.TrimPrefix(host, "::ffff:"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// routerConfig captures the LAN and the router's own traffic (TCP in mode, UDP too), everything
// through dante, except the router's flows to port 81, which a rule sends direct, and what
// routerExcludedUID sends, which is never captured.
func routerConfig(mode string) string {
	return gatewayConfig("socks5://"+netlab.Proxy4+":1080", fmt.Sprintf(`transparent: {tcp_mode: %s, udp: true, udp_idle: 1s}
router: {capture: true, exclude_uids: [%s]}
rules:
  - {name: router-direct, inbound: [router], dst_ports: [81], action: direct}
  - {name: default, action: proxy, upstream: main}
`, mode, routerExcludedUID))
}

// The router's own curl and dig go through the upstream and are seen with inbound router;
// socksgate's own direct dial for the router's flow is not captured again; an excluded uid and
// loopback go their own way untouched.
func TestRouterCapture(t *testing.T) {
	needBin(t, "curl", "dig", "setpriv")
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			routerServeWhoami(t, tp, "80")
			routerServeWhoami(t, tp, "81")
			origin := dnsStartOrigin(t, tp)
			d := startDante(t, tp, danteOptions{})
			gw := startSocksgate(t, tp.GW, routerConfig(mode))

			// TCP from the router, both families: dante's address is what wan sees.
			for _, c := range []struct{ dst, via string }{{netlab.WAN4, netlab.ProxyWAN4}, {netlab.WAN6, netlab.ProxyWAN6}} {
				out, err := curl(tp.GW, urlFor(c.dst, "/"))
				if err != nil || out != c.via {
					t.Fatalf("curl %s on gw: %v: %q, want %s (through dante)\n%s", c.dst, err, out, c.via, gw.Output())
				}
				l, ok := waitLog(gw, 5*time.Second, flowEnded.with("dst", net.JoinHostPort(c.dst, "80")))
				if !ok || l.str("inbound") != "router" || l.str("rule") != "default" {
					t.Fatalf("flow to %s: %v, want inbound router, rule default\n%s", c.dst, l, gw.Output())
				}
			}
			if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), netlab.WAN4) }) {
				t.Errorf("dante did not log the router's connection to %s:\n%s", netlab.WAN4, d.Output())
			}

			// UDP from the router: dig's query reaches wan's dnsmasq from dante's address.
			out, err := digShort(tp.GW, netlab.WAN4, "wan.test", "A")
			if err != nil || out != netlab.WAN4 {
				t.Fatalf("dig on gw: %v: %q\n%s", err, out, gw.Output())
			}
			if n := dnsAsked(origin, "A", "wan.test", dnsFromProxy); n != 1 {
				t.Fatalf("wan.test asked %d times through dante, want 1:\n%s", n, origin.Output())
			}
			if _, ok := waitLog(gw, 10*time.Second, udpEnded.with("inbound", "router", "dst", net.JoinHostPort(netlab.WAN4, "53"))); !ok {
				t.Fatalf("no UDP session with inbound router to %s:53:\n%s", netlab.WAN4, gw.Output())
			}

			// A direct rule for the router's traffic: socksgate's own dial (marked) leaves as
			// itself and is not captured again, so one flow, no nested one.
			out, err = curl(tp.GW, "http://"+net.JoinHostPort(netlab.WAN4, "81")+"/")
			if err != nil || out != netlab.GWUp4 {
				t.Fatalf("curl :81 on gw (router-direct): %v: %q, want %s\n%s", err, out, netlab.GWUp4, gw.Output())
			}
			to81 := flowEnded.with("dst", net.JoinHostPort(netlab.WAN4, "81"))
			if l, ok := waitLog(gw, 5*time.Second, to81); !ok || l.str("rule") != "router-direct" || l.str("inbound") != "router" {
				t.Fatalf("flow to :81: %v\n%s", l, gw.Output())
			}

			// The excluded uid goes direct and is never seen by socksgate.
			out, err = tp.GW.Run("setpriv", "--reuid="+routerExcludedUID, "--regid="+routerExcludedUID, "--clear-groups",
				"curl", "-sS", "--max-time", "15", "http://"+net.JoinHostPort(netlab.WAN4, "81")+"/")
			if err != nil || out != netlab.GWUp4 {
				t.Fatalf("curl as uid %s on gw: %v: %q, want %s (direct)", routerExcludedUID, err, out, netlab.GWUp4)
			}

			// Loopback and the router's own addresses are untouched.
			lo := tp.GW.Listen("tcp", "127.0.0.1:8081")
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "local") })}
			go srv.Serve(lo)
			defer srv.Close()
			if out, err := curl(tp.GW, "http://127.0.0.1:8081/"); err != nil || out != "local" {
				t.Fatalf("curl loopback on gw: %v: %q", err, out)
			}

			// Every flow was seen once: the curls to :81 (one by a rule, one excluded) gave
			// one flow, and nothing was seen to loopback.
			stopSocksgate(t, tp.GW, gw)
			if n := countLogs(gw.Output(), to81); n != 1 {
				t.Errorf("%d flows to :81, want 1 (the excluded uid's curl is not captured, socksgate's dial not again)\n%s", n, gw.Output())
			}
			if n := countLogs(gw.Output(), flowEnded.with("dst", "~127.0.0.1")); n != 0 {
				t.Errorf("%d flows to loopback, want 0\n%s", n, gw.Output())
			}
		})
	}
}
