//go:build linux

package tests

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// danteOptions configure startDante.
type danteOptions struct {
	Port       string // default 1080
	SOCKSAuth  string // dante socksmethod: "none" (default) or "username"
	ExtraRules string // appended to the config verbatim
	Server     string // server options, placed before the rules (e.g. "debug: 1", "udp.connectdst: no")
}

// startDante runs dante-server (danted) in the proxy namespace on 10.0.2.2 and fd00:2::2 with
// SOCKS5 and SOCKS4 CONNECT and UDP ASSOCIATE allowed, exiting toward wan. Its log (which names
// every session) is the returned Proc's output.
func startDante(t testing.TB, tp *netlab.Topology, o danteOptions) *netlab.Proc {
	t.Helper()
	needBin(t, "danted")
	if o.Port == "" {
		o.Port = "1080"
	}
	if o.SOCKSAuth == "" {
		o.SOCKSAuth = "none"
	}
	conf := `logoutput: stderr
internal: ` + netlab.Proxy4 + ` port = ` + o.Port + `
internal: ` + netlab.Proxy6 + ` port = ` + o.Port + `
external: wan0
socksmethod: ` + o.SOCKSAuth + `
clientmethod: none
user.privileged: root
user.unprivileged: nobody
` + o.Server + `
client pass { from: 0/0 to: 0/0 }
socks pass {
	from: 0/0 to: 0/0
	command: connect udpassociate udpreply
	log: connect disconnect error
}
` + o.ExtraRules
	path := writeFile(t, "danted.conf", conf)
	p := tp.Proxy.Start("danted", "-f", path, "-N", "2", "-p", path+".pid")
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, o.Port), 10*time.Second)
	return p
}

// Dante as the upstream: the flow appears in dante's own log, which proves the path.
func TestTransparentTCPThroughDante(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	d := startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://["+netlab.Proxy6+"]:1080", ""))
	for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
		out, err := curl(tp.LAN, urlFor(dst, "/"))
		if err != nil || out != pageBody {
			t.Fatalf("curl %s: %v: %q", dst, err, out)
		}
	}
	if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), netlab.WAN4) }) {
		t.Fatalf("dante's log does not show the flow:\n%s", d.Output())
	}
	// Dante reads ahead: the first flow's probe finds it, and later flows send their request
	// with the greeting.
	if _, ok := waitLog(gw, 5*time.Second, logFields{"msg": "~answers a request sent with its greeting: pipelining them"}); !ok {
		t.Fatalf("no pipelining verdict for dante:\n%s", gw.Output())
	}
	for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
		if out, err := curl(tp.LAN, urlFor(dst, "/")); err != nil || out != pageBody {
			t.Fatalf("curl %s pipelined: %v: %q", dst, err, out)
		}
	}
}
