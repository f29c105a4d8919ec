//go:build linux

package tests

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// Name sniffing on captured flows: the TLS SNI or HTTP Host of what the lan client sends
// becomes the flow's name, a domain rule matches it, and the upstream (dante) is asked for the
// name, which it resolves itself; a protocol where the server speaks first is not held up
// longer than the sniff timeout.

const sniffName = "name.test"

// The flow is decided by a name rule (the catch-all blocks, so only the name can let it
// through), and dante's log shows the name it was asked for, not the address.
func TestSniffRoutesByNameThroughDante(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	serveTLS(t, tp, sniffName)
	// Only dante can resolve the names: the proof that it was sent the name.
	nsHosts(t, tp.Proxy, netlab.WAN4+" "+sniffName+" web.test\n")
	d := startDante(t, tp, danteOptions{Server: "debug: 1"}) // debug logs each request as sent ("ATYP: 3 address: name.test.443"); plain connect lines show only the resolved address
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", `rules:
  - {name: by-name, domain: [name.test, web.test], upstream: main}
  - {name: catchall, action: block}
transparent: {sniff: {enabled: true, ports: [80, 443], timeout: 3s, override: true}}
`))

	t.Run("TLS SNI", func(t *testing.T) {
		out, err := curl(tp.LAN, "-k", "--resolve", sniffName+":443:"+netlab.WAN4, "https://"+sniffName+"/")
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q", err, out)
		}
		line := routingFlowLine(t, gw, sniffName+":443")
		if !line.has(logFields{"rule": "by-name", "ip": netlab.WAN4 + ":443"}) {
			t.Fatalf("flow line: %v", line)
		}
		sniffDanteAskedForName(t, d, sniffName+".443", netlab.WAN4+".443")
	})
	t.Run("HTTP Host", func(t *testing.T) {
		out, err := curl(tp.LAN, "--resolve", "web.test:80:"+netlab.WAN4, "http://web.test/")
		if err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q", err, out)
		}
		line := routingFlowLine(t, gw, "web.test:80")
		if line.str("rule") != "by-name" {
			t.Fatalf("flow line: %s", line)
		}
		sniffDanteAskedForName(t, d, "web.test.80", netlab.WAN4+".80")
	})
	t.Run("no name, no match", func(t *testing.T) {
		// By address, the same server is refused by the catch-all: the name made the difference.
		if out, err := curl(tp.LAN, "-k", "--max-time", "5", "https://"+netlab.WAN4+"/"); err == nil {
			t.Fatalf("a flow without a name passed: %q", out)
		}
		line := routingFlowLine(t, gw, netlab.WAN4+":443")
		if line.str("rule") != "catchall" {
			t.Fatalf("flow line: %s", line)
		}
	})
}

// Without sniff.override the sniffed name routes the flow but the client's own choice of address
// stands (curl -4, a hosts-file entry for a staging server): dante is asked for the address.
func TestSniffedNameIsAClaimWithoutOverride(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	d := startDante(t, tp, danteOptions{Server: "debug: 1"})
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", `rules:
  - {name: by-name, domain: [web.test], upstream: main}
  - {name: catchall, action: block}
transparent: {sniff: {enabled: true, ports: [80], timeout: 3s}}
`))
	out, err := curl(tp.LAN, "-4", "--resolve", "web.test:80:"+netlab.WAN4, "http://web.test/")
	if err != nil || out != pageBody {
		t.Fatalf("curl: %v: %q", err, out)
	}
	if line := routingFlowLine(t, gw, "web.test:80"); line.str("rule") != "by-name" {
		t.Fatalf("flow line: %s", line)
	}
	if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), "address: "+netlab.WAN4+".80") }) {
		t.Fatalf("dante was not asked for the client's address %s:\n%s", netlab.WAN4, d.Output())
	}
	if strings.Contains(d.Output(), "ATYP: 3 address: web.test") {
		t.Fatalf("dante was asked for the sniffed name:\n%s", d.Output())
	}
}

// sniffDanteAskedForName checks dante received a request for the name (address type 3,
// domain) and none for the address.
func sniffDanteAskedForName(t *testing.T, d *netlab.Proc, name, addr string) {
	t.Helper()
	if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), "ATYP: 3 address: "+name) }) {
		t.Fatalf("dante was not asked for %s:\n%s", name, d.Output())
	}
	if strings.Contains(d.Output(), "address: "+addr+" ") {
		t.Fatalf("dante was asked for the address %s:\n%s", addr, d.Output())
	}
}

// A server that speaks first (an SMTP-like banner) on a sniffed port: the client, which sends
// nothing until it has the banner, gets it after at most the sniff timeout plus the dial.
func TestSniffServerSpeaksFirstNotDelayed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tp := netlab.NewTopology(t)
	ln := tp.WAN.Listen("tcp", "[::]:443")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 banner.test ESMTP ready\r\n")
				line, _ := bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "250 got "+line)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080",
		"transparent: {sniff: {enabled: true, ports: [443], timeout: 300ms}}\n"))

	for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		c, err := tp.LAN.Dial(ctx, "tcp", net.JoinHostPort(dst, "443"))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		banner, err := r.ReadString('\n')
		delay := time.Since(start)
		if err != nil || !strings.HasPrefix(banner, "220 ") {
			t.Fatalf("%s: banner %q: %v", dst, banner, err)
		}
		if delay > timeout+2*time.Second {
			t.Fatalf("%s: the banner took %v, beyond the sniff timeout %v (+2s slack)", dst, delay, timeout)
		}
		t.Logf("%s: banner after %v (sniff timeout %v)", dst, delay.Round(time.Millisecond), timeout)
		// The conversation continues normally both ways.
		io.WriteString(c, "EHLO lan\r\n")
		if reply, err := r.ReadString('\n'); err != nil || reply != "250 got EHLO lan\r\n" {
			t.Fatalf("%s: reply %q: %v", dst, reply, err)
		}
		c.Close()
		routingFlowLine(t, gw, net.JoinHostPort(dst, "443"))
	}
}
