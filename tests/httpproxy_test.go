//go:build linux

package tests

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// An origin that refuses an upload with an early final response (413, no 100 Continue): curl,
// which sends Expect: 100-continue and here waits up to a minute for an answer before sending
// its body, gets the 413 at once through the HTTP proxy port.
func TestHTTPProxyRelaysEarlyFinalResponseToExpectContinue(t *testing.T) {
	tp := netlab.NewTopology(t)
	ln := tp.WAN.Listen("tcp", "[::]:80")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") != "100-continue" {
			http.Error(w, "no Expect: 100-continue came", http.StatusBadRequest)
			return
		}
		http.Error(w, "too large", http.StatusRequestEntityTooLarge) // the body unread
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: direct}", ""))
	upload := writeFile(t, "upload", strings.Repeat("x", 8<<20))
	out, err := curl(tp.LAN, "-x", explicitHTTP4, "--expect100-timeout", "60", "--data-binary", "@"+upload,
		"-o", "/dev/null", "-w", "%{http_code}", urlFor(netlab.WAN4, "/upload"))
	if err != nil || out != "413" {
		t.Fatalf("curl: %v, status %q: want the origin's 413 before any body was sent", err, out)
	}
}

// libcurl with --proxy-anyauth asks without credentials first, as browsers do: that normal
// login logs no warning (the 407 challenge is a debug line); a wrong password is a warning that
// says why, without the password.
func TestHTTPProxyLoginChallengeIsNoWarning(t *testing.T) {
	const user, pass = "alice", "Login-s3cret"
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: direct}",
		"  users: [{username: "+user+", password: "+pass+"}]"))
	web := urlFor(netlab.WAN4, "/")
	if out, err := curl(tp.LAN, "--proxy-anyauth", "--proxy-user", user+":"+pass, "-x", explicitHTTP4, web); err != nil || out != pageBody {
		t.Fatalf("curl --proxy-anyauth: %v: %q", err, out)
	}
	if _, ok := waitLog(gw, 5*time.Second, msg("flow").with("inbound", "http")); !ok {
		t.Fatalf("no flow line:\n%s", gw.Output())
	}
	if !hasLog(gw.Output(), logFields{"level": "debug", "inbound": "http", "msg": "~407 challenge"}) {
		t.Errorf("the challenge is not in the debug log:\n%s", gw.Output())
	}
	if line := lastLog(gw.Output(), logFields{"inbound": "http", "level": "warning"}); line != nil {
		t.Fatalf("a normal login logged a warning: %v", line)
	}
	curl(tp.LAN, "--proxy-user", user+":wrong-"+pass, "-x", explicitHTTP4, web)
	if !waitFor(5*time.Second, func() bool {
		line := lastLog(gw.Output(), logFields{"level": "warning"})
		return line.has(logFields{"inbound": "http", "error": `~wrong user name or password (user "alice")`})
	}) {
		t.Fatalf("a wrong password is no warning with its reason:\n%s", gw.Output())
	}
	if strings.Contains(gw.Output(), pass) {
		t.Fatalf("a password in the log:\n%s", gw.Output())
	}
}

// An origin that sends bytes on an idle keep-alive connection makes net/http's Transport log a
// line through the standard log package: it reaches socksgate's log as a formatted warning,
// not as a bare line on stderr.
func TestHTTPProxyTransportLogReachesTheLog(t *testing.T) {
	tp := netlab.NewTopology(t)
	ln := tp.WAN.Listen("tcp", "[::]:80")
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nunasked")
		<-done
	}()
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {action: direct}", ""))
	if out, err := curl(tp.LAN, "-x", explicitHTTP4, urlFor(netlab.WAN4, "/")); err != nil || out != "ok" {
		t.Fatalf("curl: %v: %q", err, out)
	}
	// A line that bypassed the logger would be plain text, no record.
	line, ok := waitLog(gw, 5*time.Second, logFields{"msg": "~Unsolicited response"})
	if !ok {
		t.Fatalf("the Transport logged nothing through the logger:\n%s", gw.Output())
	}
	if !line.has(logFields{"level": "warning", "from": "go log"}) {
		t.Fatalf("the Transport's line is no warning from the go log: %v", line)
	}
}
