package httpproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// srvTunneler dials a fixed backend for every target and records the targets.
type srvTunneler struct {
	backend string
	err     error
	mu      sync.Mutex
	targets []Target
	dials   int
}

func (f *srvTunneler) record(t Target) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets = append(f.targets, t)
	f.dials++
	return f.err
}

func (f *srvTunneler) Tunnel(ctx context.Context, c net.Conn, t Target, reply func(error) error) {
	defer c.Close()
	if err := f.record(t); err != nil {
		reply(err)
		return
	}
	if reply(nil) != nil {
		return
	}
	io.Copy(c, c) // echo
}

func (f *srvTunneler) Dial(ctx context.Context, t Target) (net.Conn, error) {
	if err := f.record(t); err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", f.backend)
}

// srvStart runs s on a loopback listener and returns its address.
func srvStart(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); s.CloseGrace(time.Second) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.ServeConn(context.Background(), c)
		}
	}()
	return ln.Addr().String()
}

// srvBackend is an origin server that answers with the request headers it saw.
func srvBackend(t *testing.T) *httptest.Server {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End-To-End", "kept")
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "method=%s uri=%s host=%s body=%d\n", r.Method, r.RequestURI, r.Host, len(body))
		r.Header.Write(w)
	}))
	t.Cleanup(b.Close)
	return b
}

// srvRoundTrip writes raw to the proxy and reads one response.
func srvRoundTrip(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, raw)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestForwardHeaderHygiene(t *testing.T) {
	b := srvBackend(t)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	resp, body := srvRoundTrip(t, addr, "GET http://origin.test/p?q=1 HTTP/1.1\r\nHost: origin.test\r\n"+
		"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nProxy-Connection: keep-alive\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nKeep-Alive: 300\r\nTE: gzip\r\nUpgrade: foo/1\r\n"+
		"Trailer: X-T\r\nVia: 1.0 other\r\nX-End-To-End: yes\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	for _, h := range []string{"X-Hop", "Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "Te", "Upgrade", "Trailer"} {
		if strings.Contains(body, h+":") {
			t.Errorf("origin received hop-by-hop header %s:\n%s", h, body)
		}
	}
	for _, want := range []string{"uri=/p?q=1", "host=origin.test", "X-End-To-End: yes", "Via: 1.0 other, 1.1 " + Via} {
		if !strings.Contains(body, want) {
			t.Errorf("origin did not get %q:\n%s", want, body)
		}
	}
	if resp.Header.Get("X-Resp-Hop") != "" || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("hop-by-hop response headers reached the client: %v", resp.Header)
	}
	if resp.Header.Get("X-End-To-End") != "kept" || resp.Header.Get("Via") != "1.1 "+Via {
		t.Errorf("response headers: %v", resp.Header)
	}
}

// Two requests and a chunked upload on one client connection: one upstream connection, kept.
func TestForwardKeepAliveAndChunkedBody(t *testing.T) {
	b := srvBackend(t)
	ft := &srvTunneler{backend: b.Listener.Addr().String()}
	addr := srvStart(t, &Server{Tunneler: ft})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i, raw := range []string{
		"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n",
		"POST http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	} {
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		if i == 1 && !strings.Contains(string(body), "body=11") {
			t.Fatalf("chunked body not forwarded whole: %s", body)
		}
	}
	if ft.dials != 1 {
		t.Fatalf("%d upstream dials for two requests on one connection, want 1", ft.dials)
	}
	if got := ft.targets[0]; got.Host != "origin.test" || got.Port != 80 {
		t.Fatalf("target %+v", got)
	}
}

// An HTTP/1.0 client gets a response it can read without chunking.
func TestForwardHTTP10Client(t *testing.T) {
	b := srvBackend(t)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	resp, body := srvRoundTrip(t, addr, "GET http://192.0.2.1:8000/x HTTP/1.0\r\n\r\n")
	if resp.StatusCode != 200 || resp.ProtoMinor != 0 && len(resp.TransferEncoding) > 0 || !strings.Contains(body, "Via: 1.0 "+Via) {
		t.Fatalf("%s %v: %s", resp.Status, resp.TransferEncoding, body)
	}
}

// CONNECT: the 200 comes first, and bytes the client sent right behind its request reach the
// tunnel first.
func TestConnectForwardsEarlyBytes(t *testing.T) {
	ft := &srvTunneler{}
	addr := srvStart(t, &Server{Tunneler: ft})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\nearly-bytes")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	buf := make([]byte, len("early-bytes"))
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "early-bytes" {
		t.Fatalf("echo %q %v", buf, err)
	}
	if got := ft.targets[0]; got.Addr != netip.MustParseAddrPort("[2001:db8::1]:443") || got.Host != "" {
		t.Fatalf("target %+v", got)
	}
}

func TestAuthentication(t *testing.T) {
	b := srvBackend(t)
	auth := Credentials(map[string]string{"alice": "pw", "bob": "other"})
	var mu sync.Mutex
	var reported []error
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}, Authenticate: auth,
		ErrorLog: func(_ netip.AddrPort, err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	basic := func(up string) string {
		return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(up)) + "\r\n"
	}
	// What is reported: nothing for a success; ErrAuthRequired (the challenge of a normal
	// login, which browsers and libcurl start without credentials) apart from ErrAuthFailed,
	// which says why and never shows the password.
	tests := []struct {
		name, header string
		want         int
		report       error
		reason       string
	}{
		{"right", basic("alice:pw"), 200, nil, ""},
		{"second user", basic("bob:other"), 200, nil, ""},
		{"wrong password", basic("alice:other"), 407, ErrAuthFailed, `wrong user name or password (user "alice")`},
		{"password of another user", basic("bob:pw"), 407, ErrAuthFailed, `(user "bob")`},
		{"no colon", basic("alice"), 407, ErrAuthFailed, "no colon"},
		{"not base64", "Proxy-Authorization: Basic !!!\r\n", 407, ErrAuthFailed, "not base64"},
		{"not basic", "Proxy-Authorization: Bearer x\r\n", 407, ErrAuthFailed, `scheme "Bearer"`},
		{"none", "", 407, ErrAuthRequired, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				mu.Lock()
				defer mu.Unlock()
				got := reported
				reported = nil
				if tt.report == nil {
					if len(got) > 0 {
						t.Fatalf("a success reported %v", got)
					}
					return
				}
				if len(got) != 2 {
					t.Fatalf("reported %v, want one for each request", got)
				}
				for _, err := range got {
					if !errors.Is(err, tt.report) || errors.Is(err, ErrAuthRequired) && errors.Is(err, ErrAuthFailed) ||
						!strings.Contains(err.Error(), tt.reason) {
						t.Fatalf("reported %q, want %q with %q", err, tt.report, tt.reason)
					}
					if strings.Contains(err.Error(), "other") || strings.Contains(err.Error(), "pw") {
						t.Fatalf("a password in a report: %q", err)
					}
				}
			}()
			for _, req := range []string{
				"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n" + tt.header + "\r\n",
				"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n" + tt.header + "\r\n",
			} {
				resp, body := srvRoundTrip(t, addr, req)
				if resp.StatusCode != tt.want {
					t.Fatalf("%q: status %d, want %d: %s", req[:7], resp.StatusCode, tt.want, body)
				}
				if tt.want == 407 && resp.Header.Get("Proxy-Authenticate") != `Basic realm="socksgate"` {
					t.Fatalf("407 without Proxy-Authenticate: %v", resp.Header)
				}
				if strings.Contains(body, "Proxy-Authorization") {
					t.Fatalf("credentials forwarded: %s", body)
				}
			}
		})
	}
}

func TestErrorStatuses(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
		once string // said once in the body
	}{
		{"blocked", fmt.Errorf("rule x: %w", ErrNotAllowed), 403, ""},
		{"timeout", fmt.Errorf("dial: %w", context.DeadlineExceeded), 504, "deadline exceeded"},
		{"net timeout", &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, 504, "timeout"},
		{"refused", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, 502, "connection refused"},
		{"refused, said otherwise", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), 502, "connection refused"},
		{"upstream refusal", &net.OpError{Op: "http connect", Err: &StatusError{Code: 403, Status: "Forbidden"}}, 502, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := srvStart(t, &Server{Tunneler: &srvTunneler{err: tt.err}})
			for _, req := range []string{
				"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
				"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n",
			} {
				resp, body := srvRoundTrip(t, addr, req)
				if resp.StatusCode != tt.want {
					t.Fatalf("%q: status %d, want %d: %s", req[:7], resp.StatusCode, tt.want, body)
				}
				if tt.want == 502 && !strings.Contains(body, tt.err.Error()) {
					t.Fatalf("502 body does not give the reason %q: %s", tt.err, body)
				}
				if tt.once != "" && strings.Count(body, tt.once) != 1 {
					t.Fatalf("the body should say %q once: %q", tt.once, body)
				}
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{}, MaxHeaderBytes: 1024})
	tests := []struct {
		name, raw string
		want      int
		body      string
	}{
		{"origin form", "GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 400, "absolute-URI"},
		{"garbage", "HELLO\r\n\r\n", 400, "malformed request"},
		{"no host", "GET http://origin.test/ HTTP/1.1\r\n\r\n", 400, "malformed request: missing required Host header"},
		{"connect without port", "CONNECT origin.test HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, "host:port"},
		{"unsupported scheme", "GET ftp://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, "scheme"},
		{"unsupported transfer encoding", "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "transfer encoding"},
		{"unsupported version", "GET http://origin.test/ HTTP/2.5\r\nHost: origin.test\r\n\r\n", 505, "HTTP version"},
		{"header too large", "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", 431, "larger than 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := srvRoundTrip(t, addr, tt.raw)
			// Every answer socksgate gives says it is socksgate's, net/http's own included.
			if resp.StatusCode != tt.want || !strings.HasPrefix(body, "socksgate: ") || !strings.Contains(body, tt.body) {
				t.Fatalf("status %d, want %d; body %q", resp.StatusCode, tt.want, body)
			}
		})
	}
}

// A client that sends its header too slowly is cut off after the handshake timeout.
func TestSlowClientIsClosed(t *testing.T) {
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{}, HandshakeTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	go func() {
		for _, b := range []byte("GET http://origin.test/ HTTP/1.1\r\nHost: x\r\n") {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("slow client kept for %v", d)
	}
}

func TestACLRefusal(t *testing.T) {
	var refused []error
	var mu sync.Mutex
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{}, Allow: func(netip.Addr) bool { return false },
		ErrorLog: func(_ netip.AddrPort, err error) { mu.Lock(); refused = append(refused, err); mu.Unlock() }})
	resp, _ := srvRoundTrip(t, addr, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	if resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The refusal is reported around the time the 403 is written: wait for it, don't race it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(refused)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 1 || !errors.Is(refused[0], ErrRefusedSource) {
		t.Fatalf("reported %v", refused)
	}
}

func TestCredentials(t *testing.T) {
	check := Credentials(map[string]string{"alice": "pw"})
	for _, c := range []struct {
		u, p string
		ok   bool
	}{{"alice", "pw", true}, {"alice", "pw2", false}, {"alic", "pw", false}, {"", "", false}} {
		if check(c.u, c.p) != c.ok {
			t.Errorf("%q/%q: %v", c.u, c.p, !c.ok)
		}
	}
	if Credentials(nil)("", "") {
		t.Error("empty user list accepts the empty credentials")
	}
}

// A client that stops in the middle of a forwarded request's body is closed after the idle
// timeout (the header timeout no longer applies once the headers are in).
func TestSlowBodyIsClosed(t *testing.T) {
	b := srvBackend(t)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}, IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n\r\nab")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c) // whatever comes back, the connection must end
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a client silent mid-body was kept for %v", d)
	}
}

// A response without a Content-Type reaches the client without one: the proxy does not add a
// sniffed type; one the origin set is kept.
func TestForwardKeepsAbsentContentType(t *testing.T) {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/typed" {
			w.Header().Set("Content-Type", "application/javascript")
		} else {
			w.Header()["Content-Type"] = nil
		}
		io.WriteString(w, "<html><script>alert(1)</script></html>")
		if r.URL.Query().Has("chunked") {
			w.(http.Flusher).Flush() // no Content-Length: the body goes chunked
			io.WriteString(w, " and more")
		}
	}))
	t.Cleanup(b.Close)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	// Whether net/http would sniff depends on a race (ReverseProxy flushes the headers on a
	// timer that may or may not beat the first body write), so ask a number of times.
	for i := range 100 {
		path := []string{"/untyped", "/untyped?chunked"}[i%2]
		resp, body := srvRoundTrip(t, addr, "GET http://origin.test"+path+" HTTP/1.1\r\nHost: origin.test\r\n\r\n")
		if ct, ok := resp.Header["Content-Type"]; ok || !strings.Contains(body, "<script>") {
			t.Fatalf("%s, request %d: untyped response came with Content-Type %q (body %q)", path, i, ct, body)
		}
	}
	resp, _ := srvRoundTrip(t, addr, "GET http://origin.test/typed HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	if ct := resp.Header.Get("Content-Type"); ct != "application/javascript" {
		t.Fatalf("typed response: Content-Type %q", ct)
	}
}

// A client that goes away while its forwarded request waits for the origin gets the connection
// closed, never an empty 200 that would pass for the origin's success.
func TestForwardAbortedRequestGetsNoAnswer(t *testing.T) {
	release := make(chan struct{})
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "late")
	}))
	t.Cleanup(func() { close(release); b.Close() })
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://origin.test/slow HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	c.(*net.TCPConn).CloseWrite() // the client is done sending: net/http cancels the request
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if len(got) > 0 {
		t.Fatalf("an aborted request was answered: %q", got)
	}
}

// A forwarded request with a body gets all of a response that streams for longer than the idle
// timeout after the upload ended: the body's read deadline goes with the body.
func TestForwardLongResponseAfterABody(t *testing.T) {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		for i := range 10 {
			fmt.Fprintf(w, "line %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	t.Cleanup(b.Close)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}, IdleTimeout: 300 * time.Millisecond})
	resp, body := srvRoundTrip(t, addr, "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\nhello")
	if resp.StatusCode != 200 || strings.Count(body, "line ") != 10 {
		t.Fatalf("status %d, body %q: the response was cut", resp.StatusCode, body)
	}
}

// The race behind TestForwardLongResponseAfterABody's rare cut, made certain: the Transport
// reads a forwarded body once more after its end, and by then net/http may have closed it
// (once the response's header is out). That read must end the body as before, not fail it:
// a failure closes the origin connection, cutting the response it streams.
func TestIdleBodyReadAfterItsEnd(t *testing.T) {
	body := &closingBody{r: strings.NewReader("hello")}
	ib := &idleBody{ReadCloser: body, rc: http.NewResponseController(httptest.NewRecorder()), idle: time.Second}
	if b, err := io.ReadAll(io.LimitReader(ib, 5)); err != nil || string(b) != "hello" {
		t.Fatalf("body %q, %v", b, err)
	}
	if n, err := ib.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: %d, %v; want 0, EOF", n, err)
	}
	body.Close() // net/http, as the response's header goes out
	if n, err := ib.Read(make([]byte, 512)); n != 0 || err != io.EOF {
		t.Fatalf("read after net/http closed the ended body: %d, %v; want 0, EOF", n, err)
	}
	if err := ib.failure(); err != nil {
		t.Fatalf("failure() = %v after a body read whole", err)
	}
}

// closingBody fails reads once closed, as net/http's request body does.
type closingBody struct {
	r      io.Reader
	closed bool
}

func (b *closingBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.r.Read(p)
}

func (b *closingBody) Close() error { b.closed = true; return nil }

// An origin that fails in the middle of a chunked response: the client sees the response
// broken off (the proxy aborts it), not a clean end that would pass for the whole body.
func TestForwardCutResponseStaysCut(t *testing.T) {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\npart1\n\r\n")
		brw.Flush()
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // a reset, mid-body
	}))
	t.Cleanup(b.Close)
	var mu sync.Mutex
	var reported []error
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()},
		ErrorLog: func(_ netip.AddrPort, err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a response the origin broke off arrived whole: %q", body)
	}
	// ReverseProxy's log line about it reaches ErrorLog, marked as net/http's.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		var got error
		all := fmt.Sprint(reported)
		for _, err := range reported {
			if strings.Contains(err.Error(), "body copy") {
				got = err
			}
		}
		mu.Unlock()
		if got != nil {
			if !errors.Is(got, ErrServerLog) {
				t.Fatalf("reported %q, not as ErrServerLog", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ReverseProxy's line was not reported: %s", all)
		}
	}
}

// oneAtATime is a Tunneler whose Dial allows one upstream connection at a time, as a flow limit
// of one would.
type oneAtATime struct {
	srvTunneler
	live atomic.Int32
}

type countedConn struct {
	net.Conn
	once sync.Once
	live *atomic.Int32
}

func (c *countedConn) Close() error { c.once.Do(func() { c.live.Add(-1) }); return c.Conn.Close() }

func (o *oneAtATime) Dial(ctx context.Context, t Target) (net.Conn, error) {
	if o.live.Add(1) > 1 {
		o.live.Add(-1)
		return nil, fmt.Errorf("%w: flow limit", ErrBusy)
	}
	c, err := o.srvTunneler.Dial(ctx, t)
	if err != nil {
		o.live.Add(-1)
		return nil, err
	}
	return &countedConn{Conn: c, live: &o.live}, nil
}

// A keep-alive client asking two hosts one after the other under a bound of one upstream
// connection: its idle connection to the first gives way to the second (it would otherwise be
// refused while nothing is in flight); a refusal that stands is a 503.
func TestForwardIdleConnectionsGiveWayToABound(t *testing.T) {
	b := srvBackend(t)
	tun := &oneAtATime{srvTunneler: srvTunneler{backend: b.Listener.Addr().String()}}
	addr := srvStart(t, &Server{Tunneler: tun})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, host := range []string{"one.test", "two.test"} {
		io.WriteString(c, "GET http://"+host+"/ HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s; the idle connection to the first host kept the slot", host, resp.Status)
		}
	}
	// Someone else's connection holds the slot: the refusal stands, as a 503.
	tun.live.Add(1)
	defer tun.live.Add(-1)
	resp, _ := srvRoundTrip(t, addr, "GET http://three.test/ HTTP/1.1\r\nHost: three.test\r\n\r\n")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a standing refusal: %s, want 503", resp.Status)
	}
}

// An origin whose response header is larger than the cap gets the client a 502 that says so,
// and the proxy stops reading at the cap (Go's default would read 10 MiB of it first).
func TestForwardResponseHeaderTooLarge(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
		io.Copy(c, io.LimitReader(neverEnding('a'), 11<<20))
	}()
	tun := &countingTunneler{srvTunneler: srvTunneler{backend: ln.Addr().String()}}
	addr := srvStart(t, &Server{Tunneler: tun})
	resp, body := srvRoundTrip(t, addr, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway || !strings.HasPrefix(body, "socksgate: ") || !strings.Contains(body, "response header") {
		t.Fatalf("status %d, body %q; want 502 naming the response header", resp.StatusCode, body)

	}
	if n := tun.read.Load(); n > 1<<20 {
		t.Fatalf("the proxy read %d bytes of the origin's header", n)
	}
}

// countingTunneler counts the bytes read from its upstream connections.
type countingTunneler struct {
	srvTunneler
	read atomic.Int64
}

type readCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c readCounter) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (ct *countingTunneler) Dial(ctx context.Context, t Target) (net.Conn, error) {
	c, err := ct.srvTunneler.Dial(ctx, t)
	if err != nil {
		return nil, err
	}
	return readCounter{c, &ct.read}, nil
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// A request body the client framed wrongly is the client's fault: 400, not a 502 that blames the
// origin.
func TestForwardMalformedChunkedBody(t *testing.T) {
	b := srvBackend(t)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	for _, body := range []string{"Z\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n", "fffffffffffffffff\r\n"} {
		resp, got := srvRoundTrip(t, addr, "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(got, "socksgate: ") || !strings.Contains(got, "request body") {
			t.Errorf("body %q: status %d, body %q; want 400 naming the request body", body, resp.StatusCode, got)
		}
	}
}

// An origin that refuses an Expect: 100-continue upload with a final response (413, no 100
// Continue) has it relayed at once: the client need not send its body first; the connection
// then closes.
func TestForwardEarlyFinalResponseToExpectContinue(t *testing.T) {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge) // without reading the body
	}))
	t.Cleanup(b.Close)
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{backend: b.Listener.Addr().String()}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "PUT http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no response before the body was sent: %v", err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want the origin's 413 (a 100 Continue would ask for the body)", resp.StatusCode)
	}
	if !resp.Close {
		t.Fatal("the connection is kept, though the body the client may still send would be read as its next request")
	}
}

// A request that is no proxy request (origin form: a browser pointed at the port as at a web
// server) is told what the port is, before any credentials are asked for.
func TestOriginFormBeforeAuthentication(t *testing.T) {
	addr := srvStart(t, &Server{Tunneler: &srvTunneler{}, Authenticate: Credentials(map[string]string{"alice": "pw"})})
	resp, body := srvRoundTrip(t, addr, "GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(body, "socksgate: ") || !strings.Contains(body, "HTTP proxy") {
		t.Fatalf("status %d, body %q: want 400 saying the port is an HTTP proxy", resp.StatusCode, body)
	}
}

// TRACE and OPTIONS whose Max-Forwards is 0 are answered by the proxy (TRACE with the request
// echoed, credentials masked, as squid does); a higher Max-Forwards is decremented on the way.
// "OPTIONS *" is about the proxy too, and needs credentials like any request.
func TestMaxForwardsAndOptionsAsterisk(t *testing.T) {
	b := srvBackend(t)
	tun := &srvTunneler{backend: b.Listener.Addr().String()}
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pw-secret")) + "\r\n"
	addr := srvStart(t, &Server{Tunneler: tun, Authenticate: Credentials(map[string]string{"alice": "pw-secret"})})

	resp, body := srvRoundTrip(t, addr, "TRACE http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 0\r\n"+auth+"Cookie: c=secret\r\nX-Test: 1\r\n\r\n")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "message/http" ||
		!strings.HasPrefix(body, "TRACE http://origin.test/x HTTP/1.1\r\n") || !strings.Contains(body, "X-Test: 1\r\n") {
		t.Fatalf("TRACE, Max-Forwards 0: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if strings.Contains(body, "secret") || strings.Contains(body, base64.StdEncoding.EncodeToString([]byte("alice:pw-secret"))) {
		t.Fatalf("TRACE echoed credentials: %q", body)
	}
	resp, body = srvRoundTrip(t, addr, "OPTIONS http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 0\r\n"+auth+"\r\n")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Allow"), "GET") || body != "" {
		t.Fatalf("OPTIONS, Max-Forwards 0: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if tun.dials != 0 {
		t.Fatalf("%d dials: a request Max-Forwards ends at the proxy went on", tun.dials)
	}
	for _, m := range []string{"TRACE", "OPTIONS"} {
		resp, body = srvRoundTrip(t, addr, m+" http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 3\r\n"+auth+"\r\n")
		if resp.StatusCode != 200 || !strings.Contains(body, "method="+m) || !strings.Contains(body, "Max-Forwards: 2\r\n") {
			t.Fatalf("%s, Max-Forwards 3: %d %q: want it forwarded with 2", m, resp.StatusCode, body)
		}
	}
	resp, _ = srvRoundTrip(t, addr, "OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n")
	if resp.StatusCode != http.StatusProxyAuthRequired {
		t.Fatalf("OPTIONS * without credentials: %d, want 407", resp.StatusCode)
	}
	resp, _ = srvRoundTrip(t, addr, "OPTIONS * HTTP/1.1\r\nHost: gw\r\n"+auth+"\r\n")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Allow"), "CONNECT") {
		t.Fatalf("OPTIONS * with credentials: %d %v", resp.StatusCode, resp.Header)
	}
}

// An HTTP/1.0 request with Transfer-Encoding has faulty framing (RFC 9112, section 6.1): 400 and
// close, never forwarded with its chunked body read as the next request. HTTP/1.0 requests
// without it, before and after chunked HTTP/1.1 uploads on the same connection, are forwarded.
func TestHTTP10TransferEncodingIsRefused(t *testing.T) {
	b := srvBackend(t)
	tun := &srvTunneler{backend: b.Listener.Addr().String()}
	addr := srvStart(t, &Server{Tunneler: tun})
	const smuggled = "GET http://smuggled.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
	for _, te := range []string{"chunked", "chunked\r\nContent-Length: 5"} {
		resp, body := srvRoundTrip(t, addr, "POST http://origin.test/ HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: "+te+"\r\n\r\n"+
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled))
		if resp.StatusCode != http.StatusBadRequest || !resp.Close || !strings.HasPrefix(body, "socksgate: ") || !strings.Contains(body, "Transfer-Encoding") {
			t.Fatalf("TE %q: %d close=%v %q: want 400 and close", te, resp.StatusCode, resp.Close, body)
		}
	}
	if tun.dials != 0 {
		t.Fatalf("forwarded: %+v", tun.targets)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET http://origin.test/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"+
		"POST http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"+
		"POST http://origin.test/c HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"+
		"POST http://origin.test/d HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"200 uri=/a host=origin.test body=0", "200 uri=/b host=origin.test body=3",
		"200 uri=/c host=origin.test body=2", "400 Transfer-Encoding"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("want %q: %v", want, err)
		}
		body, _ := io.ReadAll(resp.Body)
		code, rest, _ := strings.Cut(want, " ")
		if strconv.Itoa(resp.StatusCode) != code || !strings.Contains(string(body), rest) {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	}
}

// The user a request authenticated as goes with its target, CONNECT and forwarded alike; on
// one client connection, requests of two users never share an upstream connection (the rules
// may send them different ways).
func TestTargetsCarryTheAuthenticatedUser(t *testing.T) {
	b := srvBackend(t)
	tun := &srvTunneler{backend: b.Listener.Addr().String()}
	addr := srvStart(t, &Server{Tunneler: tun, Authenticate: Credentials(map[string]string{"alice": "a", "bob": "b"})})
	basic := func(u, p string) string {
		return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) + "\r\n"
	}
	last := func() Target {
		tun.mu.Lock()
		defer tun.mu.Unlock()
		return tun.targets[len(tun.targets)-1]
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	get := func(user, pass string) {
		t.Helper()
		io.WriteString(c, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n"+basic(user, pass)+"\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET as %s: %v %v", user, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("alice", "a")
	if got := last(); got.User != "alice" || got.Host != "origin.test" {
		t.Fatalf("forwarded target %+v, want user alice", got)
	}
	get("alice", "a") // the same upstream connection: no new dial
	get("bob", "b")   // another user: its own dial
	tun.mu.Lock()
	dials := tun.dials
	tun.mu.Unlock()
	if got := last(); dials != 2 || got.User != "bob" {
		t.Fatalf("%d dials, last target %+v: want 2, the second for bob", dials, got)
	}
	resp, _ := srvRoundTrip(t, addr, "CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n"+basic("bob", "b")+"\r\n")
	if resp.StatusCode != 200 || last().User != "bob" || last().Port != 443 {
		t.Fatalf("CONNECT: %d, target %+v", resp.StatusCode, last())
	}
	// Without Authenticate there is no user.
	tun2 := &srvTunneler{backend: b.Listener.Addr().String()}
	addr2 := srvStart(t, &Server{Tunneler: tun2})
	if resp, _ := srvRoundTrip(t, addr2, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"); resp.StatusCode != 200 || tun2.targets[0].User != "" {
		t.Fatalf("unauthenticated: %d %+v", resp.StatusCode, tun2.targets)
	}
}
