package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// fakeProxy accepts one connection on loopback, reads the CONNECT request, hands it to answer
// and then runs answer's returned function (if any) on the connection.
type fakeProxy struct {
	ln  net.Listener
	req chan *http.Request
}

func startFakeProxy(t *testing.T, answer func(c net.Conn, r *http.Request)) *fakeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakeProxy{ln: ln, req: make(chan *http.Request, 1)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		fp.req <- r
		answer(c, r)
	}()
	return fp
}

func (fp *fakeProxy) addr() string { return fp.ln.Addr().String() }

func reply(s string) func(net.Conn, *http.Request) {
	return func(c net.Conn, _ *http.Request) {
		io.WriteString(c, s)
		io.Copy(io.Discard, c) // hold the connection until the client closes it
	}
}

func TestDialSendsConnectWithHostAndBasicAuth(t *testing.T) {
	fp := startFakeProxy(t, reply("HTTP/1.1 200 Connection established\r\n\r\n"))
	d := &Dialer{Address: fp.addr(), Username: "alice", Password: "s3cret"}
	c, err := d.DialContext(context.Background(), "tcp", "[2001:db8::1]:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-fp.req
	if r.Method != http.MethodConnect || r.RequestURI != "[2001:db8::1]:80" || r.Host != "[2001:db8::1]:80" {
		t.Errorf("request: %s %s Host %s", r.Method, r.RequestURI, r.Host)
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if got := r.Header.Get("Proxy-Authorization"); got != want {
		t.Errorf("Proxy-Authorization = %q, want %q", got, want)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("with nothing buffered the connection is %T, want *net.TCPConn (splice)", c)
	}
}

func TestDialWithoutCredentialsSendsNoAuthorization(t *testing.T) {
	fp := startFakeProxy(t, reply("HTTP/1.0 200 OK\r\n\r\n"))
	c, err := (&Dialer{Address: fp.addr()}).DialContext(context.Background(), "tcp", "example.com:443")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-fp.req; r.Header.Get("Proxy-Authorization") != "" || r.RequestURI != "example.com:443" {
		t.Errorf("request %s with headers %v", r.RequestURI, r.Header)
	}
}

func TestDialKeepsBytesSentAfterTheResponseHeader(t *testing.T) {
	fp := startFakeProxy(t, func(c net.Conn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\r\n\r\nSSH-2.0-early\r\n")
		got, _ := io.ReadAll(c) // until the client half-closes
		io.WriteString(c, "echo:"+string(got))
	})
	c, err := (&Dialer{Address: fp.addr()}).DialContext(context.Background(), "tcp", "10.0.0.1:22")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hi")
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := io.Copy(&out, c); err != nil { // through WriteTo
		t.Fatal(err)
	}
	if out.String() != "SSH-2.0-early\r\necho:hi" {
		t.Fatalf("read %q", out.String())
	}
}

func TestDialRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, resp, dst string
		code            int
		want, notWant   []string
	}{
		{"407 named", "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
			"203.0.113.10:80", 407, []string{"407", "Proxy Authentication Required", "credentials"}, nil},
		{"401 from tinyproxy names credentials", "HTTP/1.0 401 Unauthorized\r\n\r\n",
			"203.0.113.10:80", 401, []string{"401", "credentials"}, nil},
		{"403 on port 80 explains the 443-only trap", "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n",
			"203.0.113.10:80", 403, []string{"403", "forbidden", "443", "SSL_ports", "allow port 80"}, nil},
		{"405 on port 8080 explains too", "HTTP/1.1 405 Method Not Allowed\r\n\r\n",
			"example.com:8080", 405, []string{"405", "443", "allow port 8080"}, nil},
		{"403 on port 443 is plain", "HTTP/1.1 403 Forbidden\r\n\r\n",
			"example.com:443", 403, []string{"403"}, []string{"SSL_ports"}},
		{"502", "HTTP/1.1 502 Bad Gateway\r\n\r\n", "example.com:80", 502, []string{"502 Bad Gateway"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t, reply(tc.resp))
			d := &Dialer{Address: fp.addr(), Username: "u", Password: "hunter2"}
			c, err := d.DialContext(context.Background(), "tcp", tc.dst)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "http connect" {
				t.Fatalf("error %T %v is not an http connect *net.OpError", err, err)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Fatalf("error %v: no *StatusError with code %d", err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			for _, w := range append(tc.notWant, "hunter2") {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q contains %q", err, w)
				}
			}
		})
	}
}

func TestDialBrokenProxies(t *testing.T) {
	for _, tc := range []struct {
		name string
		resp func(net.Conn, *http.Request)
		want error
	}{
		{"not http", reply("\x05\x00garbage\r\n\r\n"), ErrProtocol},
		{"bad status code", reply("HTTP/1.1 2000 OK\r\n\r\n"), ErrProtocol},
		{"bad header line", reply("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"), ErrProtocol},
		{"header too large", reply("HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", MaxResponseHeader) + "\r\n\r\n"), ErrResponseTooLarge},
		{"closes mid-header", func(c net.Conn, _ *http.Request) { io.WriteString(c, "HTTP/1.1 200 OK\r\n") }, io.ErrUnexpectedEOF},
		{"closes at once", func(net.Conn, *http.Request) {}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t, tc.resp)
			c, err := (&Dialer{Address: fp.addr()}).DialContext(context.Background(), "tcp", "example.com:80")
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDialHonoursContext(t *testing.T) {
	silent := func(c net.Conn, _ *http.Request) { io.Copy(io.Discard, c) }
	t.Run("deadline", func(t *testing.T) {
		fp := startFakeProxy(t, silent)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := (&Dialer{Address: fp.addr()}).DialContext(ctx, "tcp", "example.com:80")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want deadline exceeded", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
	})
	t.Run("cancel", func(t *testing.T) {
		fp := startFakeProxy(t, silent)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := (&Dialer{Address: fp.addr()}).DialContext(ctx, "tcp", "example.com:80")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want canceled", err)
		}
	})
}

func TestDialChainsThroughProxyDial(t *testing.T) {
	fp := startFakeProxy(t, reply("HTTP/1.1 200 OK\r\n\r\n"))
	var asked string
	d := &Dialer{Address: "proxy.invalid:3128", ProxyDial: func(ctx context.Context, network, address string) (net.Conn, error) {
		asked = address
		var nd net.Dialer
		return nd.DialContext(ctx, network, fp.addr())
	}}
	c, err := d.DialContext(context.Background(), "tcp", "example.com:80")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if asked != "proxy.invalid:3128" {
		t.Fatalf("ProxyDial asked for %q", asked)
	}
}

func TestDialRefusesBadDestinationsBeforeDialing(t *testing.T) {
	d := &Dialer{Address: "127.0.0.1:1", ProxyDial: func(context.Context, string, string) (net.Conn, error) {
		t.Fatal("dialed")
		return nil, nil
	}}
	for _, dst := range []string{"example.com", "example.com:0", "example.com:http", "a\r\nX-Evil: 1:80", "a b:80", ":80"} {
		if _, err := d.DialContext(context.Background(), "tcp", dst); err == nil {
			t.Errorf("%q accepted", dst)
		}
	}
	if _, err := d.DialContext(context.Background(), "udp", "example.com:53"); err == nil {
		t.Error("udp accepted")
	}
}

func TestDialProxyUnreachableNamesTheStep(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	a := ln.Addr().String()
	ln.Close()
	_, err := (&Dialer{Address: a}).DialContext(context.Background(), "tcp", "example.com:80")
	if err == nil || !strings.Contains(err.Error(), "dial proxy") || !strings.Contains(err.Error(), a) {
		t.Fatalf("error %v", err)
	}
}

func TestStringRedactsPassword(t *testing.T) {
	d := &Dialer{Address: "10.0.0.3:3128", Username: "bob", Password: "pw"}
	if got := d.String(); got != "http://bob@10.0.0.3:3128" {
		t.Fatalf("String() = %q", got)
	}
	if got := (&Dialer{Address: "[fd00::1]:3128"}).String(); got != "http://[fd00::1]:3128" {
		t.Fatalf("String() = %q", got)
	}
}

// oneByteReader returns at most one byte per Read, like a proxy writing byte by byte.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(1, len(p))]) }

func TestReadResponseAcrossManySmallReads(t *testing.T) {
	in := "HTTP/1.1 200 OK\nVia: 1.1 p\n\ntunnel"
	resp, rest, err := ReadResponse(oneByteReader{strings.NewReader(in)})
	if err != nil || resp.Code != 200 || resp.Status != "OK" {
		t.Fatalf("%+v %v", resp, err)
	}
	if len(rest) > len("tunnel") || !strings.HasPrefix("tunnel", string(rest)) {
		t.Fatalf("rest %q", rest)
	}
}

func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\nearly bytes"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"r\"\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 403 Forbidden\n\n"))
	f.Add([]byte("HTTP/1.1 200\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 20x OK\r\n\r\n"))
	f.Add([]byte("\x05\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, rest, err := ReadResponse(bytes.NewReader(data))
		if err != nil {
			return
		}
		if resp.Code < 100 || resp.Code > 999 || (resp.Proto != "HTTP/1.1" && resp.Proto != "HTTP/1.0") {
			t.Fatalf("accepted %+v", resp)
		}
		// rest must follow a header's blank line in data.
		for k := range len(data) + 1 {
			head := data[:k]
			if (bytes.HasSuffix(head, []byte("\n\n")) || bytes.HasSuffix(head, []byte("\n\r\n"))) && bytes.HasPrefix(data[k:], rest) {
				return
			}
		}
		t.Fatalf("rest %q does not follow a header end", rest)
	})
}

// A response trickled one byte per read parses exactly as one read in full (the header-end
// search resumes where it stopped), and a 16 KiB endless header trickled that way is refused.
func TestReadResponseByteAtATime(t *testing.T) {
	for _, in := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\n",
		"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\nearly bytes",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"r\"\r\n\r\n",
		"HTTP/1.1 403 Forbidden\n\n",
		"HTTP/1.1 200 OK\n\r\nrest",
		"HTTP/1.1 200 OK\r\nX: y\r\n",
	} {
		want, wantRest, wantErr := ReadResponse(strings.NewReader(in))
		got, gotRest, gotErr := ReadResponse(iotest.OneByteReader(strings.NewReader(in)))
		if got != want || (gotErr == nil) != (wantErr == nil) {
			t.Errorf("%q: byte at a time %+v %v, at once %+v %v", in, got, gotErr, want, wantErr)
		}
		// Read one byte at a time, the rest past the header is what the last read brought.
		if wantErr == nil && !strings.HasPrefix(string(wantRest), string(gotRest)) {
			t.Errorf("%q: rest %q, at once %q", in, gotRest, wantRest)
		}
	}
	endless := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Pad: aaaaaaaaaa\r\n", 2000)
	if _, _, err := ReadResponse(iotest.OneByteReader(strings.NewReader(endless))); !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("endless header: %v, want ErrResponseTooLarge", err)
	}
}
