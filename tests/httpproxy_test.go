//go:build linux

package tests

import (
	"net/http"
	"strings"
	"testing"

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
