//go:build linux

package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/tests/netlab"
)

const explicitName = "web.test"

var (
	explicitHTTP4  = "http://" + netlab.GWLAN4 + ":8080"
	explicitHTTP6  = "http://[" + netlab.GWLAN6 + "]:8080"
	explicitSOCKS4 = netlab.GWLAN4 + ":1080"
	explicitSOCKS6 = "[" + netlab.GWLAN6 + "]:1080"
	explicitMixed  = netlab.GWLAN4 + ":7890"
)

// Every client mode curl has, from lan to gw's explicit ports, through a SOCKS5 upstream
// (microsocks, which resolves the names it is given in the proxy namespace).
func TestExplicitEveryClientModeThroughUpstream(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	serveTLS(t, tp, explicitName)
	nsHosts(t, tp.Proxy, netlab.WAN4+" "+explicitName+"\n")
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}", ""))

	web4, web6 := urlFor(netlab.WAN4, "/"), urlFor(netlab.WAN6, "/")
	tests := []struct {
		name string
		args []string
	}{
		{"http proxy, http url", []string{"-x", explicitHTTP4, web4}},
		{"http proxy, https url (CONNECT)", []string{"-k", "-x", explicitHTTP4, "https://" + netlab.WAN4 + "/"}},
		{"http proxy, name", []string{"-x", explicitHTTP4, "http://" + explicitName + "/"}},
		{"http proxy, https by name", []string{"-k", "-x", explicitHTTP4, "https://" + explicitName + "/"}},
		{"http proxy over ipv6, ipv6 url", []string{"-x", explicitHTTP6, web6}},
		{"http proxy over ipv6, https ipv6 url", []string{"-k", "-x", explicitHTTP6, "https://[" + netlab.WAN6 + "]/"}},
		{"http/1.0 client", []string{"-0", "-x", explicitHTTP4, web4}},
		{"socks4", []string{"--socks4", explicitSOCKS4, web4}},
		{"socks4a", []string{"--socks4a", explicitSOCKS4, "http://" + explicitName + "/"}},
		{"socks5", []string{"--socks5", explicitSOCKS4, web4}},
		{"socks5 ipv6 literal", []string{"--socks5", explicitSOCKS6, web6}},
		{"socks5-hostname", []string{"--socks5-hostname", explicitSOCKS4, "http://" + explicitName + "/"}},
		{"socks5-hostname https", []string{"-k", "--socks5-hostname", explicitSOCKS6, "https://" + explicitName + "/"}},
		{"mixed port, http", []string{"-x", "http://" + explicitMixed, web4}},
		{"mixed port, socks5", []string{"--socks5", explicitMixed, web6}},
		{"mixed port, socks4a", []string{"--socks4a", explicitMixed, "http://" + explicitName + "/"}},
		{"loopback listener from gw", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := tp.LAN
			args := tt.args
			if args == nil {
				ns, args = tp.GW, []string{"-x", "http://127.0.0.1:8080", web4}
			}
			out, err := curl(ns, args...)
			if err != nil || out != pageBody {
				t.Fatalf("curl %v: %v: %q", args, err, out)
			}
		})
	}
	for _, in := range []string{"http", "socks"} {
		if !hasLog(gw.Output(), msg("flow").with("inbound", in)) {
			t.Errorf("no flow line with inbound %s", in)
		}
	}
	if !hasLog(gw.Output(), msg("flow").with("dst", explicitName+":80")) {
		t.Errorf("the flow of a name does not carry the name:\n%s", gw.Output())
	}
	line := lastLog(gw.Output(), msg("flow").with("inbound", "socks"))
	if line.str("upstream") != "socks5://"+netlab.Proxy4+":1080" {
		t.Errorf("socks flow not through the upstream: %v", line)
	}
}

// Per rule: HTTP clients go through dante (its log shows them), SOCKS clients go direct
// (socksgate resolving the name itself), a blocked port gets each protocol's refusal.
func TestExplicitRoutingPerRule(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	nsHosts(t, tp.GW, netlab.WAN4+" "+explicitName+"\n")
	d := startDante(t, tp, danteOptions{})
	rules := `  - {name: no-81, dst_ports: [81], action: block}
  - {name: socks-direct, inbound: [socks], action: direct}
  - {name: rest, action: proxy, upstream: main}`
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", rules, ""))

	out, err := curl(tp.LAN, "-x", explicitHTTP4, urlFor(netlab.WAN4, "/"))
	if err != nil || out != pageBody {
		t.Fatalf("http proxy: %v: %q", err, out)
	}
	if !waitFor(2*time.Second, func() bool { return strings.Contains(d.Output(), netlab.WAN4) }) {
		t.Fatalf("dante's log does not show the http client's flow:\n%s", d.Output())
	}
	// Count session openings only: dante logs a session's end later, whenever the HTTP
	// client's keep-alive connection happens to close.
	sessions := func() int {
		n := 0
		for _, l := range strings.Split(d.Output(), "\n") {
			if strings.Contains(l, "tcp/connect [") && strings.Contains(l, netlab.WAN4) {
				n++
			}
		}
		return n
	}
	before := sessions()
	if before == 0 {
		t.Fatalf("dante's log has no session opening for the http client:\n%s", d.Output())
	}

	for _, args := range [][]string{
		{"--socks5-hostname", explicitSOCKS4, "http://" + explicitName + "/"},
		{"--socks5", explicitSOCKS6, urlFor(netlab.WAN6, "/")},
	} {
		out, err := curl(tp.LAN, args...)
		if err != nil || out != pageBody {
			t.Fatalf("curl %v: %v: %q", args, err, out)
		}
	}
	if !waitFor(2*time.Second, func() bool { return countLogs(gw.Output(), msg("flow").with("rule", "socks-direct")) >= 2 }) {
		t.Fatalf("no direct flow lines:\n%s", gw.Output())
	}
	if l := lastLog(gw.Output(), msg("flow").with("rule", "socks-direct")); l.str("upstream") != "direct" {
		t.Errorf("direct flow line: %s", l)
	}
	if n := sessions(); n != before {
		t.Errorf("a socks client's flow went through dante (%d sessions, were %d)", n, before)
	}

	code, _ := curl(tp.LAN, "-o", "/dev/null", "-w", "%{http_code}", "-x", explicitHTTP4, "http://"+netlab.WAN4+":81/")
	if code != "403" {
		t.Errorf("blocked http request: status %q, want 403", code)
	}
	out, err = curl(tp.LAN, "-k", "-x", explicitHTTP4, "https://"+netlab.WAN4+":81/")
	if err == nil || !strings.Contains(out, "403") {
		t.Errorf("blocked CONNECT: %v: %q", err, out)
	}
	out, err = curl(tp.LAN, "--socks5", explicitSOCKS4, "http://"+netlab.WAN4+":81/")
	if err == nil || !strings.Contains(out, "(2)") { // curl prints the reply code: 2, not allowed by ruleset
		t.Errorf("blocked socks5: %v: %q", err, out)
	}
	out, err = curl(tp.LAN, "--socks4", explicitSOCKS4, "http://"+netlab.WAN4+":81/")
	if err == nil || !strings.Contains(strings.ToLower(out), "reject") {
		t.Errorf("blocked socks4: %v: %q", err, out)
	}
}

// With listen.users, HTTP clients need Basic credentials (407 otherwise), SOCKS5 clients
// RFC 1929, SOCKS4 clients are refused; no password reaches the log.
func TestExplicitAuthentication(t *testing.T) {
	const user, pass = "alice", "Explicit-s3cret"
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	serveTLS(t, tp, explicitName)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}",
		"  users: [{username: "+user+", password: "+pass+"}]"))
	web := urlFor(netlab.WAN4, "/")

	if out, err := curl(tp.LAN, "--proxy-user", user+":"+pass, "-x", explicitHTTP4, web); err != nil || out != pageBody {
		t.Errorf("http, right credentials: %v: %q", err, out)
	}
	if out, err := curl(tp.LAN, "-k", "--proxy-user", user+":"+pass, "-x", explicitHTTP4, "https://"+netlab.WAN4+"/"); err != nil || out != pageBody {
		t.Errorf("CONNECT, right credentials: %v: %q", err, out)
	}
	for _, cred := range []string{user + ":wrong-pass", "bob:" + pass, ""} {
		args := []string{"-i", "-x", explicitHTTP4, web}
		if cred != "" {
			args = append([]string{"--proxy-user", cred}, args...)
		}
		out, _ := curl(tp.LAN, args...)
		if !strings.HasPrefix(out, "HTTP/1.1 407") || !strings.Contains(out, `Proxy-Authenticate: Basic realm="socksgate"`) {
			t.Errorf("http with %q: want 407 with Proxy-Authenticate, got %q", cred, out)
		}
	}
	if out, err := curl(tp.LAN, "-k", "--proxy-user", user+":nope", "-x", explicitHTTP4, "https://"+netlab.WAN4+"/"); err == nil || !strings.Contains(out, "407") {
		t.Errorf("CONNECT, wrong credentials: %v: %q", err, out)
	}
	if out, err := curl(tp.LAN, "--socks5", user+":"+pass+"@"+explicitSOCKS4, web); err != nil || out != pageBody {
		t.Errorf("socks5, right credentials: %v: %q", err, out)
	}
	if out, err := curl(tp.LAN, "--socks5", user+":wrong@"+explicitSOCKS4, web); err == nil {
		t.Errorf("socks5, wrong credentials succeeded: %q", out)
	}
	if out, err := curl(tp.LAN, "--socks5", explicitSOCKS4, web); err == nil {
		t.Errorf("socks5 without credentials succeeded: %q", out)
	}
	if out, err := curl(tp.LAN, "--socks4", explicitSOCKS4, web); err == nil {
		t.Errorf("socks4 succeeded while users are set: %q", out)
	}
	if _, ok := waitLog(gw, 2*time.Second, logFields{"msg": "explicit client not authenticated", "level": "warning", "error": "~SOCKS4 refused"}); !ok {
		t.Errorf("the log does not say why SOCKS4 was refused")
	}
	// Each SOCKS5 client that did not authenticate is a warning with its reason: curl with
	// no credentials offers "no authentication" and GSSAPI, with a wrong password it names a user.
	for _, reason := range []string{"no acceptable method (offered: no authentication required, GSSAPI; want username/password)", `wrong username or password for user "alice"`} {
		if _, ok := waitLog(gw, 2*time.Second, logFields{"level": "warning", "error": "~" + reason}); !ok {
			t.Errorf("no warning says %q:\n%s", reason, gw.Output())
		}
	}
	gw.Signal(syscall.SIGTERM)
	gw.Wait(10 * time.Second)
	if strings.Contains(gw.Output(), pass) || strings.Contains(gw.Output(), "wrong-pass") {
		t.Fatalf("a password appears in the log:\n%s", gw.Output())
	}
}

// An unmodified program (curl with no proxy flags) run under proxychains4 reaches wan through
// the SOCKS port.
func TestExplicitProxychains(t *testing.T) {
	needBin(t, "proxychains4")
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}", ""))
	conf := writeFile(t, "proxychains.conf", "strict_chain\nquiet_mode\ntcp_read_time_out 5000\ntcp_connect_time_out 3000\n[ProxyList]\nsocks5 "+netlab.GWLAN4+" 1080\n")
	out, err := tp.LAN.Run("proxychains4", "-f", conf, "curl", "-sS", "--max-time", "10", urlFor(netlab.WAN4, "/"))
	if err != nil || !strings.HasSuffix(out, pageBody) {
		t.Fatalf("proxychains4 curl: %v: %q", err, out)
	}
	if _, ok := waitLog(gw, 2*time.Second, msg("flow").with("inbound", "socks")); !ok {
		t.Fatalf("no socks flow line:\n%s", gw.Output())
	}
}

// UDP ASSOCIATE: DNS-sized datagrams to a UDP echo in wan come back whole, each from the echo's
// address, routed direct by one config and through dante's UDP relay by another.
func TestExplicitUDPAssociate(t *testing.T) {
	for _, mode := range []string{"direct", "dante"} {
		t.Run(mode, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			explicitUDPEcho(t, tp)
			var d *netlab.Proc
			rules := "  - {name: udp-direct, protocol: [udp], action: direct}\n  - {action: proxy, upstream: main}"
			if mode == "dante" {
				d = startDante(t, tp, danteOptions{})
				rules = "  - {name: via-dante, action: proxy, upstream: main}"
			}
			gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", rules, ""))
			for _, server := range []string{explicitSOCKS4, explicitSOCKS6} {
				c := explicitAssociate(t, tp.LAN, server)
				for i := range 20 {
					for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
						to := socks.Addr{IP: netip.MustParseAddr(dst), Port: 7}
						p := explicitDNSLike(i, 64+i*20)
						got, from, err := c.roundTrip(to, p)
						if err != nil {
							t.Fatalf("via %s to %s, datagram %d: %v\n%s", server, dst, i, err, gw.Output())
						}
						if !bytes.Equal(got, p) || from.String() != to.String() {
							t.Fatalf("datagram %d: got %d bytes from %v, want %d from %v", i, len(got), from, len(p), to)
						}
					}
				}
				c.ctrl.Close() // ends the association
			}
			assoc := msg("udp session").with("inbound", "socks", "network", "udp")
			if !waitFor(3*time.Second, func() bool { return countLogs(gw.Output(), assoc) >= 2 }) {
				t.Fatalf("no association log lines:\n%s", gw.Output())
			}
			line := lastLog(gw.Output(), assoc)
			// The association's ways out, exactly: direct by the udp rule, or upstream main.
			upstreams := "[direct]"
			if mode == "dante" {
				upstreams = "[socks5://" + netlab.Proxy4 + ":1080]"
			}
			if !line.has(logFields{"packets_up": "40", "packets_down": "40", "dropped": "0", "outcome": "ok", "upstreams": upstreams}) {
				t.Errorf("association line: %v; want 40 packets each way, none dropped, outcome ok, upstreams %s", line, upstreams)
			}
			if mode == "dante" && !strings.Contains(d.Output(), "udp") && !strings.Contains(d.Output(), "UDP") {
				t.Errorf("dante's log shows no UDP session:\n%s", d.Output())
			}
		})
	}
}

// A datagram whose FRAG is not zero is dropped; an unfragmented one still gets through.
func TestExplicitUDPDropsFragments(t *testing.T) {
	tp := netlab.NewTopology(t)
	explicitUDPEcho(t, tp)
	startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {protocol: [udp], action: direct}\n  - {action: block}", ""))
	c := explicitAssociate(t, tp.LAN, explicitSOCKS4)
	b, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Frag: 1, Addr: socks.Addr{IP: netip.MustParseAddr(netlab.WAN4), Port: 7}})
	c.pc.WriteTo(append(b, "fragment"...), net.UDPAddrFromAddrPort(c.relay))
	got, _, err := c.roundTrip(socks.Addr{IP: netip.MustParseAddr(netlab.WAN4), Port: 7}, []byte("whole"))
	if err != nil || string(got) != "whole" {
		t.Fatalf("got %q, %v; want only the whole datagram back", got, err)
	}
}

// An association declared as 0.0.0.0:0 belongs to the client socket that sends first: a second
// socket on the same host gets none of its replies, and its own datagrams are not relayed.
// Dante, the reference, behaves the same; the same client runs against both.
func TestExplicitUDPAssociationBelongsToFirstSocket(t *testing.T) {
	for _, peer := range []string{"socksgate", "dante"} {
		t.Run(peer, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			explicitUDPEcho(t, tp)
			ns, server := tp.LAN, explicitSOCKS4
			var out func() string
			if peer == "dante" {
				d := startDante(t, tp, danteOptions{})
				ns, server, out = tp.GW, netlab.Proxy4+":1080", d.Output
			} else {
				gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {protocol: [udp], action: direct}\n  - {action: block}", ""))
				out = gw.Output
			}
			c := explicitAssociate(t, ns, server)
			second := ns.ListenPacket("udp4", ":0")
			defer second.Close()
			echo := socks.Addr{IP: netip.MustParseAddr(netlab.WAN4), Port: 7}
			if got, _, err := c.roundTrip(echo, []byte("first-1")); err != nil || string(got) != "first-1" {
				t.Fatalf("first socket: %q, %v\n%s", got, err, out())
			}
			b, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: echo})
			second.WriteTo(append(b, "intruder"...), net.UDPAddrFromAddrPort(c.relay))
			// The first socket's next datagram follows the intruder through the relay and the
			// echo: its echo coming back means the intruder's would have come back before it.
			if got, _, err := c.roundTrip(echo, []byte("first-2")); err != nil || string(got) != "first-2" {
				t.Fatalf("first socket after the intruder: %q, %v; want its own echo", got, err)
			}
			buf := make([]byte, 2048)
			second.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, _, err := second.ReadFrom(buf); err == nil {
				t.Fatalf("the second socket got %d bytes: % x", n, buf[:n])
			}
		})
	}
}

// With the default listen addresses, the explicit ports are not reachable from the WAN side,
// while lan reaches them.
func TestExplicitPortsClosedToWAN(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	startSocksgate(t, tp.GW, explicitDefaultListenConfig())
	for _, addr := range []string{netlab.GWUp4 + ":8080", netlab.GWUp4 + ":1080", "[" + netlab.GWUp6 + "]:8080", "[" + netlab.GWUp6 + "]:1080"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := tp.Proxy.Dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("%s is reachable from the WAN side", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s from the WAN side: %v, want connection refused", addr, err)
		}
	}
	if out, err := curl(tp.LAN, "-x", explicitHTTP4, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("lan through the default listener: %v: %q", err, out)
	}
}

// explicitDefaultListenConfig leaves listen at its defaults.
func explicitDefaultListenConfig() string {
	return `log: {level: debug}
lan: {interfaces: [` + netlab.GWLANIf + `]}
timeouts: {dial: 3s, grace: 2s}
upstreams:
  - {name: main, url: "socks5://` + netlab.Proxy4 + `:1080"}
`
}

// A client outside listen.allow gets each protocol's refusal, and one log line.
func TestExplicitACLRefusesOutsiders(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: proxy, upstream: main}",
		"  allow: [192.0.2.0/24]"))
	web := urlFor(netlab.WAN4, "/")
	if code, _ := curl(tp.LAN, "-o", "/dev/null", "-w", "%{http_code}", "-x", explicitHTTP4, web); code != "403" {
		t.Errorf("http: status %q, want 403", code)
	}
	if out, err := curl(tp.LAN, "--socks5", explicitSOCKS4, web); err == nil || !strings.Contains(out, "(2)") {
		t.Errorf("socks5: %v: %q", err, out)
	}
	if out, err := curl(tp.LAN, "--socks4", explicitSOCKS4, web); err == nil || !strings.Contains(strings.ToLower(out), "reject") {
		t.Errorf("socks4: %v: %q", err, out)
	}
	if !waitFor(2*time.Second, func() bool { return countLogs(gw.Output(), msg("explicit client refused")) == 3 }) {
		t.Errorf("want 3 refusal lines:\n%s", gw.Output())
	}
	// Loopback is not in this allow list either; the listener on 127.0.0.1 refuses it too.
	if code, _ := curl(tp.GW, "-o", "/dev/null", "-w", "%{http_code}", "-x", "http://127.0.0.1:8080", web); code != "403" {
		t.Errorf("loopback: status %q, want 403", code)
	}
}

// A blocked address stays blocked when a client sends it as a name with an IPv6 zone
// ("::ffff:203.0.113.10%x", which Go's dialer connects to 203.0.113.10) or as the
// unspecified address: the SOCKS port refuses both, and the allowed destination still works.
func TestExplicitSOCKSZonedNameDoesNotEscapeRules(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080",
		"  - {name: no-wan-web, dst: ["+netlab.WAN4+"/32], action: block}\n  - {action: direct}", ""))
	connect := func(atyp byte, addr []byte) (byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := tp.LAN.Dial(ctx, "tcp", explicitSOCKS4)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req := append([]byte{5, 1, 0, 5, 1, 0, atyp}, addr...)
		c.Write(append(req, 0, 80))
		if m, err := socks.ReadMethodSelection(c); err != nil || m != socks.MethodNoAuth {
			return 0, fmt.Errorf("method %v: %v", m, err)
		}
		rep, err := socks.ReadReply(c)
		return byte(rep.Code), err
	}
	zoned := "::ffff:" + netlab.WAN4 + "%x"
	for _, tt := range []struct {
		name string
		atyp byte
		addr []byte
		want socks.ReplyCode
	}{
		{"zoned name", 3, append([]byte{byte(len(zoned))}, zoned...), socks.ReplyNotAllowed},
		{"the address", 1, netip.MustParseAddr(netlab.WAN4).AsSlice(), socks.ReplyNotAllowed},
		{"unspecified", 1, []byte{0, 0, 0, 0}, socks.ReplyNotAllowed},
		{"another address", 1, netip.MustParseAddr(netlab.Proxy4).AsSlice(), socks.ReplyConnectionRefused},
	} {
		if code, err := connect(tt.atyp, tt.addr); err != nil || socks.ReplyCode(code) != tt.want {
			t.Errorf("%s: reply %v, %v; want %v", tt.name, socks.ReplyCode(code), err, tt.want)
		}
	}
	if t.Failed() {
		t.Log(gw.Output())
	}
}
