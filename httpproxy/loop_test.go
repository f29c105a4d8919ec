package httpproxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// A request whose Via carries this process's own pseudonym has come back to it through other
// proxies: CONNECT and forwarded requests alike are refused with 403 saying so, before any
// dial, and reported as a *LoopError naming the target. Another socksgate's pseudonym (a chain
// of two) and other proxies' entries pass.
func TestServerRefusesARequestCarryingItsOwnVia(t *testing.T) {
	b := srvBackend(t)
	tun := &srvTunneler{backend: b.Listener.Addr().String()}
	var mu sync.Mutex
	var reported []error
	addr := srvStart(t, &Server{Tunneler: tun, ErrorLog: func(_ netip.AddrPort, err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}})
	loops := []string{
		"1.1 " + Via,
		"1.1 " + Via + " (socksgate)",
		"1.0 other, 1.1 tinyproxy (tinyproxy/1.11.1), 1.1 " + Via,
		"1.1 squid (squid/5.7),1.1 " + Via,
	}
	for _, via := range loops {
		for _, req := range []string{
			"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\nVia: " + via + "\r\n\r\n",
			"GET http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nVia: " + via + "\r\n\r\n",
		} {
			resp, body := srvRoundTrip(t, addr, req)
			if resp.StatusCode != 403 || !strings.Contains(body, "loop") || !strings.Contains(body, Via) {
				t.Errorf("Via %q, %s: %d %q; want 403 naming the loop", via, req[:7], resp.StatusCode, body)
			}
		}
	}
	if tun.dials != 0 {
		t.Fatalf("%d dials for looping requests", tun.dials)
	}
	mu.Lock()
	if len(reported) != 2*len(loops) {
		t.Fatalf("reported %v, want one per request", reported)
	}
	for i, err := range reported {
		var le *LoopError
		if !errors.As(err, &le) || !errors.Is(err, ErrLoop) || le.Target.Host != "origin.test" || le.Target.Port != []uint16{443, 80}[i%2] {
			t.Fatalf("reported %#v, want a LoopError for origin.test", err)
		}
	}
	mu.Unlock()

	for _, via := range []string{"1.1 socksgate-00000000", "1.1 " + Via + "0", "1.1 x" + Via, "1.1 socksgate"} {
		resp, body := srvRoundTrip(t, addr, "GET http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nVia: "+via+"\r\n\r\n")
		if resp.StatusCode != 200 || !strings.Contains(body, "Via: "+via+", 1.1 "+Via) {
			t.Errorf("Via %q: %d %q; want it forwarded with this proxy's entry added", via, resp.StatusCode, body)
		}
	}
}

// A CONNECT socksgate sends to a proxy names this process in Via, so that a chain that comes
// back to it is refused there.
func TestDialSendsItsVia(t *testing.T) {
	fp := startFakeProxy(t, reply("HTTP/1.1 200 Connection established\r\n\r\n"))
	c, err := (&Dialer{Address: fp.addr()}).DialContext(context.Background(), "tcp", "example.com:443")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-fp.req; r.Header.Get("Via") != "1.1 "+Via || !strings.HasPrefix(Via, "socksgate-") || len(Via) != len("socksgate-")+8 {
		t.Fatalf("Via %q (pseudonym %q)", r.Header.Get("Via"), Via)
	}
	var _ net.Conn = c
}
