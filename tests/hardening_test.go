//go:build linux

package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// hardeningExplicitConfig opens every explicit port on gw's LAN address with a 2s handshake
// timeout; flows go through upstream "main".
func hardeningExplicitConfig(upstreamURL string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen:
  http: ["lan:8080"]
  socks: ["lan:1080"]
  mixed: ["lan:7890"]
transparent: {sniff: {enabled: false}}
admin: %s
timeouts: {dial: 3s, handshake: 2s, grace: 1s}
upstreams:
  - {name: main, url: %q}
`, netlab.GWLANIf, hardeningAdmin, upstreamURL)
}

var (
	hardeningHTTP  = net.JoinHostPort(netlab.GWLAN4, "8080")
	hardeningSOCKS = net.JoinHostPort(netlab.GWLAN4, "1080")
	hardeningMixed = net.JoinHostPort(netlab.GWLAN4, "7890")
)

// 1,000 clients that send nothing or one byte a second to the explicit HTTP, SOCKS and mixed
// ports are each closed after the 2s handshake timeout, while a normal client is served at once.
func TestHardeningSlowClientsClosedAfterHandshakeTimeout(t *testing.T) {
	const clients = 1000 // over six kinds: three ports × (silent, one byte a second)
	hardeningRaiseNofile(t, 4000)
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, hardeningExplicitConfig("socks5://"+netlab.Proxy4+":1080"))
	pid := gw.Cmd.Process.Pid
	fds0, gor0 := hardeningCounts(t, tp.GW, pid)

	type kind struct {
		name, addr string
		trickle    []byte // sent one byte a second; nil: silent
	}
	httpReq := []byte("GET http://" + netlab.WAN4 + "/ HTTP/1.1\r\nHost: " + netlab.WAN4 + "\r\nX-Slow: " + strings.Repeat("a", 64))
	socksReq := []byte{5, 1, 0, 5, 1, 0, 1, 203, 0, 113, 10, 0, 80}
	var kinds []kind
	for _, k := range []struct{ name, addr string }{{"http", hardeningHTTP}, {"socks", hardeningSOCKS}, {"mixed", hardeningMixed}} {
		trickle := httpReq
		if k.name == "socks" {
			trickle = socksReq
		}
		kinds = append(kinds, kind{k.name + "/silent", k.addr, nil}, kind{k.name + "/slowloris", k.addr, trickle})
	}

	type result struct {
		kind string
		took time.Duration
		how  string
	}
	results := make(chan result, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i, k := range kinds {
		n := clients / len(kinds)
		if i < clients%len(kinds) {
			n++
		}
		conns, err := hardeningDialMany(tp.LAN, k.addr, "", n)
		if err != nil {
			t.Fatalf("%s: dial: %v", k.name, err)
		}
		for _, c := range conns {
			dialed := time.Now()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if k.trickle != nil {
					go func() {
						for _, b := range k.trickle {
							if _, err := c.Write([]byte{b}); err != nil {
								return
							}
							time.Sleep(time.Second)
						}
					}()
				}
				how := hardeningClosed(c, 15*time.Second)
				results <- result{k.name, time.Since(dialed), how}
			}()
		}
	}
	t.Logf("%d slow clients connected in %v", clients, time.Since(start).Round(time.Millisecond))

	// A normal client meanwhile, on each port kind.
	for _, args := range [][]string{
		{"-x", "http://" + hardeningHTTP},
		{"--socks5", hardeningSOCKS},
		{"-x", "http://" + hardeningMixed},
		{"--socks5", hardeningMixed},
	} {
		out, took, err := hardeningCurlTimed(tp.LAN, append(args, urlFor(netlab.WAN4, "/"))...)
		t.Logf("normal client %v while the slow ones wait: %v", args, took.Round(time.Millisecond))
		if err != nil || out != pageBody {
			t.Fatalf("normal client %v: %v: %q", args, err, out)
		}
		if took > 1500*time.Millisecond {
			t.Errorf("normal client %v took %v with slow clients connected", args, took)
		}
	}

	wg.Wait()
	close(results)
	byKind := map[string][]time.Duration{}
	for r := range results {
		if r.how == "timeout" || r.how == "data" {
			t.Errorf("%s client: %s after %v, want closed after the 2s handshake timeout", r.kind, r.how, r.took)
			continue
		}
		byKind[r.kind] = append(byKind[r.kind], r.took)
	}
	for _, k := range kinds {
		d := byKind[k.name]
		if len(d) == 0 {
			continue
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		t.Logf("%-16s %d closed, after min %v, median %v, max %v", k.name, len(d),
			d[0].Round(time.Millisecond), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
		if d[0] < 1500*time.Millisecond {
			t.Errorf("%s: a client was closed after %v, before the handshake timeout", k.name, d[0])
		}
		if d[len(d)-1] > 5*time.Second {
			t.Errorf("%s: a client was held %v; the handshake timeout is 2s", k.name, d[len(d)-1])
		}
	}
	hardeningWaitBaseline(t, tp.GW, pid, fds0, gor0, 10*time.Second, "after the slow clients")
	hardeningNoPanic(t, gw)
}

// hardeningInput is one hostile input to a listener and what must come back before the close.
type hardeningInput struct {
	name  string
	addr  string
	send  []byte
	want  func(reply []byte) bool // on everything read until the close
	wants string                  // what want accepts, for the failure message
}

func hardeningPrefix(p ...string) func([]byte) bool {
	return func(b []byte) bool {
		for _, s := range p {
			if bytes.HasPrefix(b, []byte(s)) {
				return true
			}
		}
		return false
	}
}

// Oversize or malformed input to every explicit listener gets the protocol's error and a close,
// never a panic, and socksgate keeps serving.
func TestHardeningMalformedInputGetsProtocolErrorAndClose(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, hardeningExplicitConfig("socks5://"+netlab.Proxy4+":1080"))

	big := strings.Repeat("A", 100<<10)
	s5ok := "\x05\x00"
	s5 := func(code byte) string { return s5ok + "\x05" + string([]byte{code}) }
	cases := []hardeningInput{
		{"http garbage line", hardeningHTTP, []byte("\x00\x01\x02 garbage\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http origin-form", hardeningHTTP, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http huge header", hardeningHTTP, []byte("GET http://" + netlab.WAN4 + "/ HTTP/1.1\r\nX-Big: " + big + "\r\n\r\n"), hardeningPrefix("HTTP/1.1 431"), "431"},
		{"http huge request line", hardeningHTTP, []byte("GET http://" + netlab.WAN4 + "/" + big + " HTTP/1.1\r\n\r\n"), hardeningPrefix("HTTP/1.1 431", "HTTP/1.1 414"), "431 or 414"},
		{"http many headers", hardeningHTTP, []byte("GET http://" + netlab.WAN4 + "/ HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 20000) + "\r\n"), hardeningPrefix("HTTP/1.1 431"), "431"},
		{"http bad version", hardeningHTTP, []byte("GET http://" + netlab.WAN4 + "/ HTTP/9.9\r\n\r\n"), hardeningPrefix("HTTP/1.1 505", "HTTP/1.1 400"), "505 or 400"},
		{"http2 preface", hardeningHTTP, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), hardeningPrefix("HTTP/1.1 4", "HTTP/1.1 5"), "4xx/5xx"},
		{"http connect no port", hardeningHTTP, []byte("CONNECT " + netlab.WAN4 + " HTTP/1.1\r\nHost: x\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http connect bad host", hardeningHTTP, []byte("CONNECT a\x7fb:80 HTTP/1.1\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http bad content-length", hardeningHTTP, []byte("POST http://" + netlab.WAN4 + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http double content-length", hardeningHTTP, []byte("POST http://" + netlab.WAN4 + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http bad chunk", hardeningHTTP, []byte("POST http://" + netlab.WAN4 + "/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), hardeningPrefix("HTTP/1.1 400"), "400 (the client's fault)"},
		{"http nul in header", hardeningHTTP, []byte("GET http://" + netlab.WAN4 + "/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"http unsupported scheme", hardeningHTTP, []byte("GET ftp://" + netlab.WAN4 + "/ HTTP/1.1\r\nHost: x\r\n\r\n"), hardeningPrefix("HTTP/1.1 400"), "400"},

		{"socks5 no methods", hardeningSOCKS, []byte("\x05\x00"), hardeningPrefix("\x05\xff"), "method 0xff"},
		{"socks5 only unknown methods", hardeningSOCKS, []byte("\x05\x02\x80\x81"), hardeningPrefix("\x05\xff"), "method 0xff"},
		{"socks5 bind", hardeningSOCKS, []byte("\x05\x01\x00\x05\x02\x00\x01\xcb\x00\x71\x0a\x00\x50"), hardeningPrefix(s5(7)), "reply 0x07"},
		{"socks5 unknown command", hardeningSOCKS, []byte("\x05\x01\x00\x05\xee\x00\x01\xcb\x00\x71\x0a\x00\x50"), hardeningPrefix(s5(7)), "reply 0x07"},
		{"socks5 bad address type", hardeningSOCKS, []byte("\x05\x01\x00\x05\x01\x00\x09\xcb\x00\x71\x0a\x00\x50"), hardeningPrefix(s5(8)), "reply 0x08"},
		{"socks5 empty name", hardeningSOCKS, []byte("\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50"), hardeningPrefix(s5(1), s5(4)), "failure reply"},
		{"socks5 name of NULs", hardeningSOCKS, []byte("\x05\x01\x00\x05\x01\x00\x03\x05\x00\x00\x00\x00\x00\x00\x50"), hardeningPrefix(s5(1), s5(4)), "failure reply"},
		{"socks5 request version 4", hardeningSOCKS, []byte("\x05\x01\x00\x04\x01\x00\x01\xcb\x00\x71\x0a\x00\x50"), hardeningPrefix(s5(1)), "reply 0x01"},
		{"socks5 truncated request", hardeningSOCKS, []byte("\x05\x01\x00\x05\x01\x00\x01\xcb"), hardeningPrefix(s5ok), "method reply, then close"},
		{"socks5 oversize garbage", hardeningSOCKS, append([]byte("\x05\x01\x00"), bytes.Repeat([]byte{0xff}, 1<<20)...), hardeningPrefix(s5(1)), "reply 0x01"},
		{"socks5 user/pass without users", hardeningSOCKS, []byte("\x05\x01\x02\x01\x01u\x01p"), hardeningPrefix("\x05\xff"), "method 0xff"},
		{"socks4 bind", hardeningSOCKS, []byte("\x04\x02\x00\x50\xcb\x00\x71\x0a\x00"), hardeningPrefix("\x00\x5b"), "reply 0x5b"},
		{"socks4 user id without end", hardeningSOCKS, append([]byte("\x04\x01\x00\x50\xcb\x00\x71\x0a"), bytes.Repeat([]byte("u"), 4096)...), hardeningPrefix("\x00\x5b"), "reply 0x5b"},
		{"socks4a name without end", hardeningSOCKS, append([]byte("\x04\x01\x00\x50\x00\x00\x00\x01\x00"), bytes.Repeat([]byte("n"), 4096)...), hardeningPrefix("\x00\x5b"), "reply 0x5b"},
		{"not socks", hardeningSOCKS, []byte("GET / HTTP/1.1\r\n\r\n"), func(b []byte) bool { return len(b) == 0 }, "a close"},

		{"mixed tls hello", hardeningMixed, []byte("\x16\x03\x01\x00\x05hello"), hardeningPrefix("HTTP/1.1 400"), "400"},
		{"mixed socks5 bad address type", hardeningMixed, []byte("\x05\x01\x00\x05\x01\x00\x09\x00"), hardeningPrefix(s5(8)), "reply 0x08"},
		{"mixed huge header", hardeningMixed, []byte("GET http://x/ HTTP/1.1\r\nX-Big: " + big + "\r\n\r\n"), hardeningPrefix("HTTP/1.1 431"), "431"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := tp.LAN.Dial(t.Context(), "tcp", c.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			go func() {
				// The server may answer and close before reading everything: a failed write
				// here is expected.
				conn.Write(c.send)
			}()
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			reply, err := io.ReadAll(io.LimitReader(conn, 64<<10))
			var ne net.Error
			if err != nil && errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("not closed within 5s; got %q so far", clipBytes(reply))
			}
			if !c.want(reply) {
				t.Fatalf("got %q (then %v), want %s and a close", clipBytes(reply), err, c.wants)
			}
		})
	}
	// Still serving, on every port.
	for _, args := range [][]string{{"-x", "http://" + hardeningHTTP}, {"--socks5", hardeningSOCKS}, {"--socks4", hardeningMixed}} {
		if out, err := curl(tp.LAN, append(args, urlFor(netlab.WAN4, "/"))...); err != nil || out != pageBody {
			t.Fatalf("after the hostile inputs, curl %v: %v: %q", args, err, out)
		}
	}
	t.Logf("%d hostile inputs tried", len(cases))
	hardeningNoPanic(t, gw)
}

func clipBytes(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// hardeningFakeUpstream is a misbehaving proxy: serve gets each accepted connection.
type hardeningFakeUpstream struct {
	name, scheme, port string
	serve              func(c net.Conn)
}

// hardeningReadSome reads what a client sent first (a greeting, a request header), up to n.
func hardeningReadSome(c net.Conn, n int) {
	buf := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(buf)
	c.SetReadDeadline(time.Time{})
}

// hardeningHold keeps c open and silent until the peer closes it (or 30s pass).
func hardeningHold(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c)
}

// A hostile upstream (wrong version, huge BND.ADDR, silence, a close mid-handshake, garbage, an
// endless header) fails each transparent flow through it within the configured timeouts, with
// a log line that names the upstream; socksgate keeps serving.
func TestHardeningHostileUpstreamFailsWithinTimeouts(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	socks5 := func(reply []byte, then func(net.Conn)) func(net.Conn) {
		return func(c net.Conn) {
			hardeningReadSome(c, 3) // greeting
			c.Write([]byte{5, 0})
			hardeningReadSome(c, 300) // request
			c.Write(reply)
			then(c)
		}
	}
	fakes := []hardeningFakeUpstream{
		{"wrong-version", "socks5", "1081", func(c net.Conn) { hardeningReadSome(c, 3); c.Write([]byte{4, 0}); hardeningHold(c) }},
		{"huge-bnd-addr", "socks5", "1082", socks5(append([]byte{5, 0, 0, 3, 255}, bytes.Repeat([]byte{'a'}, 10)...), hardeningHold)},
		{"never-replies", "socks5", "1083", hardeningHold},
		{"silent-after-method", "socks5", "1084", func(c net.Conn) { hardeningReadSome(c, 3); c.Write([]byte{5, 0}); hardeningHold(c) }},
		{"closes-mid-handshake", "socks5", "1085", func(c net.Conn) { hardeningReadSome(c, 3); c.Write([]byte{5}) }},
		{"bad-address-type", "socks5", "1086", socks5([]byte{5, 0, 0, 9, 1, 2, 3, 4, 0, 80}, hardeningHold)},
		{"wrong-reply-version", "socks5", "1087", socks5([]byte{1, 0, 0, 1, 1, 2, 3, 4, 0, 80}, hardeningHold)},
		{"http-garbage-status", "http", "3128", func(c net.Conn) {
			hardeningReadSome(c, 4096)
			c.Write([]byte("SSH-2.0-OpenSSH_9.2p1\r\n\r\n"))
			hardeningHold(c)
		}},
		{"http-endless-header", "http", "3129", func(c net.Conn) {
			hardeningReadSome(c, 4096)
			c.Write([]byte("HTTP/1.1 200 Connection established\r\n"))
			line := []byte("X-Pad: " + strings.Repeat("a", 100) + "\r\n")
			for {
				if _, err := c.Write(line); err != nil {
					return
				}
			}
		}},
		{"http-slow-header", "http", "3130", func(c net.Conn) {
			hardeningReadSome(c, 4096)
			c.Write([]byte("HTTP/1.1 200 OK\r\n"))
			for range 100 {
				if _, err := c.Write([]byte("X-Slow: 1\r\n")); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}},
		{"http-never-replies", "http", "3131", hardeningHold},
	}
	var ups, rules strings.Builder
	for i, f := range fakes {
		ln := tp.Proxy.Listen("tcp", net.JoinHostPort(netlab.Proxy4, f.port))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); f.serve(c) }()
			}
		}()
		fmt.Fprintf(&ups, "  - {name: %s, url: \"%s://%s:%s\"}\n", f.name, f.scheme, netlab.Proxy4, f.port)
		fmt.Fprintf(&rules, "  - {dst_ports: [%d], action: proxy, upstream: %s}\n", 8001+i, f.name)
	}
	cfg := fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
transparent: {sniff: {enabled: false}}
timeouts: {dial: 3s, handshake: 2s, grace: 1s}
upstreams:
  - {name: good, url: "socks5://%s:1080"}
%srules:
%s  - {action: proxy, upstream: good}
`, netlab.GWLANIf, netlab.Proxy4, ups.String(), rules.String())
	gw := startSocksgate(t, tp.GW, cfg)

	var wg sync.WaitGroup
	for i, f := range fakes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := net.JoinHostPort(netlab.WAN4, fmt.Sprint(8001+i))
			out, took, err := hardeningCurlTimed(tp.LAN, "--max-time", "10", "http://"+dst+"/")
			t.Logf("%-20s curl failed after %v: %s", f.name, took.Round(time.Millisecond), strings.TrimSpace(out))
			if err == nil {
				t.Errorf("%s: curl succeeded through a hostile upstream: %q", f.name, out)
			}
			if took > 3*time.Second+1500*time.Millisecond {
				t.Errorf("%s: the flow took %v to fail; timeouts are dial 3s, handshake 2s", f.name, took)
			}
			line, _ := waitLog(gw, 2*time.Second, logFields{"dst": dst})
			if !line.has(msg("flow failed").with("upstream", f.scheme+"://"+netlab.Proxy4+":"+f.port)) {
				t.Errorf("%s: want a failed-flow line naming the upstream, got %v", f.name, line)
			}
		}()
	}
	wg.Wait()
	if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("through the good upstream afterwards: %v: %q", err, out)
	}
	for _, l := range findLogs(gw.Output(), msg("flow failed")) {
		t.Logf("%s: %s", l.str("dst"), l.str("error"))
	}
	hardeningNoPanic(t, gw)
}
