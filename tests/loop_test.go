//go:build linux

package tests

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// loopConfig is an explicit-ports config whose every flow goes through upstream "main" at
// upstreamURL; the mixed port (lan:7890) takes clients from all of 10.0.0.0/8, so that a
// connection that comes back from the upstream side is not stopped by the source ACL first. The
// flow limit bounds what a loop that is not caught costs the test.
func loopConfig(upstreamURL string) string {
	return explicitConfig(upstreamURL, "  - {action: proxy, upstream: main}",
		"  allow: [10.0.0.0/8]\nlimits: {max_flows: 300}\nadmin: "+hardeningAdmin+"\n")
}

// loopRefusals reads socksgate's refusals by reason and its flow count from /metrics.
func loopRefusals(t testing.TB, gw *netlab.NS) (loop, limit, flows float64) {
	m := hardeningMetrics(t, gw)
	return max(opsMetric(m, `socksgate_flows_refused_total{reason="loop"}`), 0),
		max(opsMetric(m, `socksgate_flows_refused_total{reason="max_flows"}`), 0),
		hardeningMetricSum(m, "socksgate_flows_total")
}

// loopExpectOneRefusal sends one request through the mixed port and checks that the loop it
// makes ends at once: one connection refused with reason loop, none against the flow limit, no flow
// nested behind it, and socksgate's descriptors back where they were.
func loopExpectOneRefusal(t *testing.T, tp *netlab.Topology, gw *netlab.Proc, clientArgs ...string) {
	t.Helper()
	pid := gw.Cmd.Process.Pid
	fds0 := hardeningFDs(t, pid)
	out, err := curl(tp.LAN, append(append([]string{"-m", "10", "-f"}, clientArgs...), urlFor(netlab.WAN4, "/"))...)
	if err == nil {
		t.Fatalf("a request into a loop succeeded: %q", out)
	}
	var loop, limit, flows float64
	if !waitFor(5*time.Second, func() bool {
		loop, limit, flows = loopRefusals(t, tp.GW)
		return loop >= 1
	}) {
		t.Fatalf("no flow refused as a loop (refused for max_flows: %v, flows: %v):\n%s", limit, flows, gw.Output())
	}
	// Settle: a loop that was not caught keeps nesting meanwhile.
	if !waitFor(5*time.Second, func() bool { return hardeningFDs(t, pid) <= fds0+2 }) {
		t.Errorf("descriptors %d, were %d before the request", hardeningFDs(t, pid), fds0)
	}
	// The request's own dial comes back once; a SOCKS upstream's probe (does it take
	// pipelined requests?) is one more of socksgate's dials coming back.
	loop, limit, flows = loopRefusals(t, tp.GW)
	if loop < 1 || loop > 2 || limit != 0 || flows > 1 {
		t.Fatalf("one request: %v refused as loop (want 1, or 2 with a probe), %v refused by the flow limit (want 0), %v flows (want at most 1)\n%s",
			loop, limit, flows, gw.Output())
	}
	if !hasLog(gw.Output(), logFields{"outcome": "refused", "level": "warning", "error": "~loop"}) {
		t.Errorf("the refusal's line does not say loop:\n%s", gw.Output())
	}
}

// An upstream that `check` cannot see to be socksgate itself, found at run time: its address
// is NATed back to socksgate's own port (a DNAT in the router's output path), or its name
// resolves to the router's own address. The connection that comes back is one of socksgate's
// own dials: it is refused at once, instead of nesting flows until the flow limit.
func TestLoopThroughNATOrNameIsRefusedAtOnce(t *testing.T) {
	for _, tt := range []struct {
		name, upstream string
		setup          func(tp *netlab.Topology)
	}{
		{"dnat", "socks5://" + netlab.Proxy4 + ":1081", func(tp *netlab.Topology) {
			// Test scaffolding in gw's own namespace: the upstream's address leads back to
			// socksgate's mixed port, as a port forward on another box would.
			tp.GW.MustRun("nft", "add table ip loopnat")
			tp.GW.MustRun("nft", "add chain ip loopnat out { type nat hook output priority -100; }")
			tp.GW.MustRun("nft", fmt.Sprintf("add rule ip loopnat out ip daddr %s tcp dport 1081 dnat to %s:7890", netlab.Proxy4, netlab.GWLAN4))
		}},
		{"name", "socks5://sg-loop.test:7890", func(tp *netlab.Topology) {
			nsHosts(t, tp.GW, netlab.GWLAN4+" sg-loop.test\n")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			serveWeb(t, tp)
			tt.setup(tp)
			gw := startSocksgate(t, tp.GW, loopConfig(tt.upstream))
			loopExpectOneRefusal(t, tp, gw, "--socks5-hostname", net.JoinHostPort(netlab.GWLAN4, "7890"))
			if !hasLog(gw.Output(), logFields{"outcome": "refused", "error": "~own dial come back"}) {
				t.Errorf("the refusal does not say why:\n%s", gw.Output())
			}
		})
	}
}

// A proxy chain through a third-party proxy that leads back to socksgate: socksgate's upstream
// is tinyproxy, whose own upstream is socksgate's port. The connection that comes back is
// tinyproxy's, not socksgate's own dial; the CONNECT socksgate sent carries socksgate's Via
// pseudonym, tinyproxy passes it on, and socksgate refuses the request that comes back with it.
func TestLoopThroughThirdPartyProxyIsRefusedByVia(t *testing.T) {
	needBin(t, "tinyproxy")
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	conf := writeFile(t, "tinyproxy-loop.conf", fmt.Sprintf("Port 8888\nTimeout 30\nMaxClients 400\nLogLevel Info\n"+
		"Allow 10.0.0.0/8\nUser nobody\nGroup nogroup\nConnectPort 80\nUpstream http %s:7890\n", netlab.GWLAN4))
	tiny := tp.Proxy.Start("tinyproxy", "-d", "-c", conf)
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, "8888"), 10*time.Second)
	gw := startSocksgate(t, tp.GW, loopConfig("http://"+netlab.Proxy4+":8888"))
	for _, mode := range [][]string{
		{"--proxy", "http://" + net.JoinHostPort(netlab.GWLAN4, "7890")},                  // forwarded
		{"--socks5-hostname", net.JoinHostPort(netlab.GWLAN4, "7890")},                    // SOCKS
		{"--proxy", "http://" + net.JoinHostPort(netlab.GWLAN4, "7890"), "--proxytunnel"}, // CONNECT
	} {
		before, _, _ := loopRefusals(t, tp.GW)
		out, err := curl(tp.LAN, append(append([]string{"-m", "10", "-f"}, mode...), urlFor(netlab.WAN4, "/"))...)
		if err == nil {
			t.Fatalf("%v: a request into a loop succeeded: %q", mode, out)
		}
		var loop, limit, flows float64
		if !waitFor(5*time.Second, func() bool {
			loop, limit, flows = loopRefusals(t, tp.GW)
			return loop > before
		}) {
			t.Fatalf("%v: no flow refused as a loop (max_flows: %v, flows: %v)\nsocksgate:\n%s\ntinyproxy:\n%s", mode, limit, flows, gw.Output(), tiny.Output())
		}
		loop, limit, _ = loopRefusals(t, tp.GW)
		if loop != before+1 || limit != 0 {
			t.Fatalf("%v: %v refused as loop (want %v), %v by the flow limit\n%s", mode, loop, before+1, limit, gw.Output())
		}
	}
	if !hasLog(gw.Output(), logFields{"outcome": "refused", "inbound": "http", "error": "~its Via names this process"}) {
		t.Errorf("the refusal does not say why:\n%s", gw.Output())
	}
}

// A chain through a SOCKS proxy that leads back: dante, socksgate's upstream, is itself told to
// go through socksgate. SOCKS carries no Via, and the connection that comes back is dante's
// own, not one of socksgate's dials: it is known by asking, while socksgate waits for dante's
// answer, for the very destination socksgate is asking dante for. One request is one loop
// refusal, not flows nested until the limit.
func TestLoopThroughSOCKSChainIsRefused(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	// Dante reaches socksgate from its own address (the one socksgate dials), as a proxy on
	// one address does: its external addresses are chosen by the route to each destination.
	d := startDante(t, tp, danteOptions{Server: "external: " + netlab.Proxy4 + "\nexternal.rotation: route", ExtraRules: fmt.Sprintf(`route {
	from: 0.0.0.0/0 to: 0.0.0.0/0 via: %s port = 7890
	proxyprotocol: socks_v5
	command: connect
	method: none
}
`, netlab.GWLAN4)})
	gw := startSocksgate(t, tp.GW, loopConfig("socks5://"+netlab.Proxy4+":1080"))
	before, _, _ := loopRefusals(t, tp.GW)
	out, err := curl(tp.LAN, "-m", "10", "-f", "--socks5", net.JoinHostPort(netlab.GWLAN4, "7890"), urlFor(netlab.WAN4, "/"))
	if err == nil {
		t.Fatalf("a request into a loop succeeded: %q", out)
	}
	var loop, limit, flows float64
	if !waitFor(5*time.Second, func() bool {
		loop, limit, flows = loopRefusals(t, tp.GW)
		return loop > before
	}) {
		t.Fatalf("no flow refused as a loop (max_flows: %v, flows: %v)\nsocksgate:\n%s\ndante:\n%s", limit, flows, gw.Output(), d.Output())
	}
	if loop, limit, _ = loopRefusals(t, tp.GW); loop != before+1 || limit != 0 {
		t.Fatalf("%v refused as loop (want %v), %v by the flow limit\n%s", loop, before+1, limit, gw.Output())
	}
	if !hasLog(gw.Output(), logFields{"outcome": "refused", "src": "~" + netlab.Proxy4 + ":", "error": "~a proxy chain leads back to socksgate"}) {
		t.Errorf("the refusal does not say why:\n%s", gw.Output())
	}
}
