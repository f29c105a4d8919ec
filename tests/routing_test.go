//go:build linux

package tests

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// Routing tests: one per match kind and per action, through the transparent path, with plain
// curl from lan. A matching rule sends the flow to dante (port 1081, whose log names every
// destination it connects to); everything else falls to the catch-all rule through microsocks.
// The flow log line says which rule decided.

const routingDantePort = "1081"

// routingConfig is a gateway config with upstreams "main" (microsocks) and "dante", the given
// rules (YAML list items, indented by two spaces) and a catch-all "catchall" through main.
func routingConfig(rules string) string {
	return gatewayConfig("socks5://"+netlab.Proxy4+":1080",
		"  - {name: dante, url: \"socks5://"+netlab.Proxy4+":"+routingDantePort+"\"}\n"+
			"rules:\n"+rules+"  - {name: catchall, upstream: main}\n")
}

// routingLab is a topology with the web server (port 80 and routingAltPort in wan), microsocks
// and dante running.
type routingLab struct {
	*netlab.Topology
	dante *netlab.Proc
}

const routingAltPort = "8081"

func newRoutingLab(t *testing.T) *routingLab {
	t.Helper()
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	routingServeAlt(t, tp, routingAltPort)
	startMicrosocks(t, tp, "", "")
	d := startDante(t, tp, danteOptions{Port: routingDantePort})
	return &routingLab{Topology: tp, dante: d}
}

// routingServeAlt serves pageBody on another port in wan, both families.
func routingServeAlt(t *testing.T, tp *netlab.Topology, port string) {
	t.Helper()
	ln := tp.WAN.Listen("tcp", "[::]:"+port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, pageBody) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// routingStartSocksgate starts socksgate for this (sub)test only: the lab stops processes when
// the whole test ends, so a subtest stops its own, letting the next one bind the same ports.
func routingStartSocksgate(t *testing.T, ns *netlab.NS, yaml string) *netlab.Proc {
	t.Helper()
	p := startSocksgate(t, ns, yaml)
	t.Cleanup(func() {
		p.Signal(syscall.SIGTERM)
		if exited, _ := p.Wait(10 * time.Second); !exited {
			p.Kill()
		}
	})
	return p
}

// routingFlowLine waits for the flow log line (success, failure or block) whose dst field is
// dst, and returns the first.
func routingFlowLine(t *testing.T, gw *netlab.Proc, dst string) logLine {
	t.Helper()
	var line logLine
	waitFor(3*time.Second, func() bool {
		for _, l := range findLogs(gw.Output(), logFields{"dst": dst}) {
			if m := l.str("msg"); m == "flow" || m == "flow failed" || m == "flow blocked" {
				line = l
				return true
			}
		}
		return false
	})
	if line == nil {
		t.Fatalf("no flow log line for %s:\n%s", dst, gw.Output())
	}
	return line
}

// routingExpect fetches url with curl (extra args first) and checks the page arrived and the
// rule that decided the flow to dst.
func routingExpect(t *testing.T, lab *routingLab, gw *netlab.Proc, dst, rule string, args ...string) {
	t.Helper()
	out, err := curl(lab.LAN, args...)
	if err != nil || out != pageBody {
		t.Fatalf("curl %v: %v: %q", args, err, out)
	}
	line := routingFlowLine(t, gw, dst)
	if line.str("rule") != rule {
		t.Fatalf("flow to %s decided by the wrong rule, want %s:\n%s", dst, rule, line)
	}
	if rule != "catchall" && !waitFor(2*time.Second, func() bool { return strings.Contains(lab.dante.Output(), routingDanteAddr(dst)) }) {
		t.Fatalf("dante's log does not show %s:\n%s", dst, lab.dante.Output())
	}
}

// routingDanteAddr is how dante's log writes host:port ("203.0.113.10.80").
func routingDanteAddr(hostport string) string {
	h, p, _ := net.SplitHostPort(hostport)
	return h + "." + p
}

func TestRoutingMatchKinds(t *testing.T) {
	lab := newRoutingLab(t)
	// A second address on lan for the source rule, a second one in wan for the dst rule.
	lab.LAN.Addr(netlab.LANIf, "10.0.1.3/24")
	lab.WAN.Addr(netlab.WANIf, "203.0.113.11/24")
	v4, v4b, v6 := net.JoinHostPort(netlab.WAN4, "80"), "203.0.113.11:80", net.JoinHostPort(netlab.WAN6, "80")

	t.Run("dst CIDR IPv4", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, dst: [203.0.113.10/32], upstream: dante}\n"))
		routingExpect(t, lab, gw, v4, "hit", urlFor(netlab.WAN4, "/"))
		routingExpect(t, lab, gw, v4b, "catchall", urlFor("203.0.113.11", "/"))
		routingExpect(t, lab, gw, v6, "catchall", urlFor(netlab.WAN6, "/"))
	})
	t.Run("dst CIDR IPv6", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, dst: [\"2001:db8:3::/64\"], upstream: dante}\n"))
		routingExpect(t, lab, gw, v6, "hit", urlFor(netlab.WAN6, "/"))
		routingExpect(t, lab, gw, v4, "catchall", urlFor(netlab.WAN4, "/"))
	})
	t.Run("dst port range", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, dst_ports: [\"8000-8100\"], upstream: dante}\n"))
		routingExpect(t, lab, gw, net.JoinHostPort(netlab.WAN4, routingAltPort), "hit",
			"http://"+net.JoinHostPort(netlab.WAN4, routingAltPort)+"/")
		routingExpect(t, lab, gw, v4, "catchall", urlFor(netlab.WAN4, "/"))
	})
	t.Run("src CIDR", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, src: [10.0.1.3/32], upstream: dante}\n"))
		routingExpect(t, lab, gw, v4, "hit", "--interface", "10.0.1.3", urlFor(netlab.WAN4, "/"))
		if line := lastLog(gw.Output(), logFields{"rule": "hit"}); !strings.HasPrefix(line.str("src"), "10.0.1.3:") {
			t.Fatalf("the hit came from the wrong source: %s", line)
		}
		routingExpect(t, lab, gw, v4b, "catchall", "--interface", netlab.LAN4, urlFor("203.0.113.11", "/"))
	})
	t.Run("protocol", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig(
			"  - {name: udp-only, protocol: [udp], action: block}\n"+
				"  - {name: hit, protocol: [tcp], dst: [\"2001:db8:3::10/128\"], upstream: dante}\n"))
		routingExpect(t, lab, gw, v6, "hit", urlFor(netlab.WAN6, "/"))
	})
	t.Run("inbound", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig(
			"  - {name: explicit-only, inbound: [http, socks], action: block}\n"+
				"  - {name: hit, inbound: [transparent], dst: [203.0.113.10/32], upstream: dante}\n"))
		routingExpect(t, lab, gw, v4, "hit", urlFor(netlab.WAN4, "/"))
	})
}

// routingCountingServer accepts connections in wan on port and counts them.
func routingCountingServer(t *testing.T, tp *netlab.Topology, port string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	ln := tp.WAN.Listen("tcp", "[::]:"+port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return &n
}

func TestRoutingActions(t *testing.T) {
	lab := newRoutingLab(t)
	v4 := net.JoinHostPort(netlab.WAN4, "80")

	t.Run("proxy", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, dst: [203.0.113.0/24], action: proxy, upstream: dante}\n"))
		routingExpect(t, lab, gw, v4, "hit", urlFor(netlab.WAN4, "/"))
		if line := routingFlowLine(t, gw, v4); !line.has(logFields{"action": "proxy", "upstream": "~:" + routingDantePort}) {
			t.Fatalf("flow line does not show the proxy action through dante: %s", line)
		}
	})
	t.Run("proxy through a group", func(t *testing.T) {
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: hit, dst: [203.0.113.0/24], upstream: pool}\n")+
			"groups:\n  - {name: pool, upstreams: [dante]}\n")
		routingExpect(t, lab, gw, v4, "hit", urlFor(netlab.WAN4, "/"))
	})
	t.Run("block", func(t *testing.T) {
		hits := routingCountingServer(t, lab.Topology, "8090")
		gw := routingStartSocksgate(t, lab.GW, routingConfig("  - {name: deny, dst_ports: [8090], action: block}\n"))
		start := time.Now()
		out, err := curl(lab.LAN, "--max-time", "10", "http://"+net.JoinHostPort(netlab.WAN4, "8090")+"/")
		if err == nil {
			t.Fatalf("a blocked flow succeeded: %q", out)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("the client waited %v for a blocked flow", d)
		}
		line := routingFlowLine(t, gw, net.JoinHostPort(netlab.WAN4, "8090"))
		if !line.has(logFields{"rule": "deny", "action": "block"}) {
			t.Fatalf("flow line: %s", line)
		}
		time.Sleep(200 * time.Millisecond)
		if n := hits.Load(); n != 0 {
			t.Fatalf("the wan server saw %d connections for a blocked flow", n)
		}
		if strings.Contains(lab.dante.Output(), "203.0.113.10.8090") {
			t.Fatalf("dante saw the blocked flow:\n%s", lab.dante.Output())
		}
	})
	t.Run("direct", func(t *testing.T) {
		// No AllowDirect: socksgate's direct socket is gw's own traffic, which the lab's filter
		// (forwarded lan traffic only) never drops, so success proves socksgate carried it.
		// The catch-all points at an upstream that does not exist: only direct can carry it.
		// (protocol keeps the rule out of the kernel's direct sets: on dst alone the kernel
		// would forward the flow itself, which TestHoistedDirectSetNeverReachesSocksgate tests.)
		cfg := gatewayConfig("socks5://"+netlab.Proxy4+":9", "rules:\n"+
			"  - {name: go-direct, dst: [\"2001:db8:3::10/128\"], protocol: [tcp], action: direct}\n"+
			"  - {name: catchall, upstream: main}\n")
		gw := routingStartSocksgate(t, lab.GW, cfg)
		out, err := curl(lab.LAN, urlFor(netlab.WAN6, "/"))
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q", err, out)
		}
		line := routingFlowLine(t, gw, net.JoinHostPort(netlab.WAN6, "80"))
		if !line.has(logFields{"rule": "go-direct", "action": "direct", "upstream": "direct"}) {
			t.Fatalf("flow line: %s", line)
		}
		if _, err := curl(lab.LAN, "--max-time", "5", urlFor(netlab.WAN4, "/")); err == nil {
			t.Fatal("a flow for the dead upstream succeeded")
		}
	})
}
