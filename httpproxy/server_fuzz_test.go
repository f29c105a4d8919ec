package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// FuzzRequestTarget runs the server's request reading (net/http's reader with the header cap)
// and this package's own parsing of what it returns: the CONNECT authority, the absolute URI's
// host and the Basic credentials. None may panic, and a target that parses is well formed.
func FuzzRequestTarget(f *testing.F) {
	for _, s := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
		"CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n",
		"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Basic YWxpY2U6cHc=\r\n\r\n",
		"GET http://192.0.2.1:8080/ HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT :0 HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	src := netip.MustParseAddrPort("192.0.2.9:1234")
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := http.ReadRequest(bufio.NewReader(io.LimitReader(bytes.NewReader(in), DefaultMaxHeaderBytes)))
		if err != nil {
			return
		}
		proxyBasicAuth(r.Header.Get("Proxy-Authorization"))
		hostport := r.URL.Host
		if r.Method == http.MethodConnect {
			tg, err := requestTarget(src, r)
			if err != nil {
				return
			}
			if tg.Port == 0 || (tg.Host == "") == !tg.Addr.IsValid() {
				t.Fatalf("malformed target %+v from %q", tg, in)
			}
			return
		}
		if hostport != "" {
			if _, _, err := net.SplitHostPort(hostport); err != nil {
				hostport = net.JoinHostPort(r.URL.Hostname(), "80")
			}
			parseTarget(src, hostport)
		}
	})
}

// FuzzServeConn feeds arbitrary bytes to a whole server connection: it answers or closes, never
// panics, and never dials for a request it could not parse.
func FuzzServeConn(f *testing.F) {
	f.Add([]byte("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"))
	f.Add([]byte("CONNECT origin.test:443 HTTP/1.1\r\n\r\nxyz"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add([]byte("POST http://o/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\n"))
	f.Add([]byte("POST http://o/ HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://o/ HTTP/1.0\r\n\r\n"))
	f.Add([]byte("TRACE http://o/ HTTP/1.1\r\nHost: o\r\nMax-Forwards: 0\r\nCookie: x\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: o\r\n\r\n"))
	f.Add([]byte("GET http://o/ HTTP/1.1\r\n\r\n"))
	s := &Server{Tunneler: &srvTunneler{err: ErrNotAllowed}, HandshakeTimeout: 100 * time.Millisecond}
	f.Cleanup(func() { s.CloseGrace(time.Second) })
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		s.ServeConn(context.Background(), server)
		go func() { client.Write(in) }()
		client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		io.Copy(io.Discard, client)
		client.Close()
	})
}

// FuzzFraming runs the framing scan over arbitrary client bytes: it never panics, and the
// verdicts do not depend on how the bytes were split into reads.
func FuzzFraming(f *testing.F) {
	for _, s := range []string{
		"POST http://o/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET http://o/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nPOST http://o/b HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\nGET http://o/c HTTP/1.0\r\nTransfer-Encoding: x\r\n\r\n",
		"\r\n\r\nPOST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\n\r\nabcGET http://o/ HTTP/1.0\r\nTE: x\r\n\r\n",
		"POST http://o/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"CONNECT o:443 HTTP/1.1\r\n\r\nGET http://o/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		var whole, split framing
		whole.feed(in)
		n := int(step%16) + 1
		for p := in; len(p) > 0; {
			k := min(n, len(p))
			split.feed(p[:k])
			p = p[k:]
		}
		var a, b []bool
		for len(whole.verdicts) > 0 || len(split.verdicts) > 0 {
			a, b = append(a, whole.take()), append(b, split.take())
		}
		if fmt.Sprint(a) != fmt.Sprint(b) || whole.state != split.state {
			t.Fatalf("verdicts %v (state %d) in one read, %v (state %d) in reads of %d", a, whole.state, b, split.state, n)
		}
	})
}
