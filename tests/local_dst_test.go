//go:build linux

package tests

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// With the default rules (everything direct), a LAN client asking the explicit ports for the
// router itself — the admin endpoint on loopback, by address or as localhost, or a service on
// the router's own LAN address — is refused (403 / SOCKS "not allowed", logged with the reason
// local_destination), while the WAN still works; a rule naming the destination with dst allows
// it. A dst rule that blocks an address also blocks a name for it (localhost), through HTTP
// forwarding, CONNECT, SOCKS5 with a domain and SOCKS4a alike. curl is the client.
func TestExplicitPortsRefuseTheRouterItself(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	// A service on the router's own LAN address (its web UI, say).
	ui := tp.GW.Listen("tcp", net.JoinHostPort(netlab.GWLAN4, "8081"))
	go func() {
		for {
			c, err := ui.Accept()
			if err != nil {
				return
			}
			go func() { // read the request, then answer: an answer before the request confuses clients
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				c.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nrouter-ui"))
			}()
		}
	}()
	proxy := "http://" + net.JoinHostPort(netlab.GWLAN4, "7890")
	socks := net.JoinHostPort(netlab.GWLAN4, "7890")
	run := func(rules string) *netlab.Proc {
		t.Helper()
		return startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", rules, "admin: 127.0.0.1:9091\n"))
	}

	gw := run("  - {name: all-direct, action: direct}\n")
	for _, tt := range []struct{ name, url string }{
		{"admin by address", "http://127.0.0.1:9091/flows"},
		{"admin as localhost", "http://localhost:9091/flows"},
		{"router's own LAN address", "http://" + net.JoinHostPort(netlab.GWLAN4, "8081") + "/"},
	} {
		for _, mode := range []struct {
			name string
			args []string
		}{
			{"forward", []string{"--proxy", proxy}},
			{"connect", []string{"--proxy", proxy, "--proxytunnel"}},
			{"socks5h", []string{"--socks5-hostname", socks}},
			{"socks4a", []string{"--socks4a", socks}},
		} {
			out, err := curl(tp.LAN, append(mode.args, "-f", tt.url)...)
			if err == nil || strings.Contains(out, "router-ui") || strings.Contains(out, "[") {
				t.Errorf("%s through %s: %v %q; want it refused", tt.name, mode.name, err, out)
			}
		}
	}
	if out, err := curl(tp.LAN, "--proxy", proxy, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("the WAN through the proxy port: %v %q", err, out)
	}
	if out, _ := curl(tp.LAN, "--proxy", proxy, "-i", "http://127.0.0.1:9091/flows"); !strings.Contains(out, "403") || !strings.Contains(out, "router itself") {
		t.Errorf("the refusal does not say what happened: %q", out)
	}
	if !waitFor(2*time.Second, func() bool {
		return hasLog(gw.Output(), logFields{"msg": "flow refused", "inbound": "http", "error": "~router itself"})
	}) {
		t.Errorf("no refusal logged:\n%s", gw.Output())
	}
	stopSocksgate(t, tp.GW, gw)

	// A rule naming the router's UI lets it through; an address rule blocks the name too.
	run("  - {name: ui, dst: [" + netlab.GWLAN4 + "/32], dst_ports: [8081], action: direct}\n" +
		"  - {name: no-loopback, dst: [127.0.0.0/8, \"::1/128\"], action: block}\n" +
		"  - {name: all-direct, action: direct}\n")
	if out, err := curl(tp.LAN, "--proxy", proxy, "http://"+net.JoinHostPort(netlab.GWLAN4, "8081")+"/"); err != nil || out != "router-ui" {
		t.Errorf("the UI a dst rule names: %v %q", err, out)
	}
	for _, mode := range [][]string{{"--proxy", proxy}, {"--proxy", proxy, "--proxytunnel"}, {"--socks5-hostname", socks}, {"--socks4a", socks}} {
		out, _ := curl(tp.LAN, append(mode, "-i", "http://localhost:9091/healthz")...)
		if strings.Contains(out, "ok") && !strings.Contains(out, "403") {
			t.Errorf("localhost through %v passed the block on 127.0.0.0/8: %q", mode, out)
		}
	}
}
