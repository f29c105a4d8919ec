//go:build linux

package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// skipOutsideCI skips the test with the reason, except under CI, where every peer is installed
// and a skip would hide a missing piece: there it fails.
func skipOutsideCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// needBin skips the test when a third-party program is not installed.
func needBin(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") != "" {
				// CI installs every peer (tests/deps.sh): a missing one is a broken CI, not a skip.
				t.Fatalf("%s is not installed; tests/deps.sh should have installed it", n)
			}
			t.Skipf("%s is not installed (make deps installs it)", n)
		}
	}
}

const pageBody = "hello from wan\n"

// serveWeb runs an HTTP server inside wan on port 80, both families: "/" answers pageBody,
// "/bytes?n=N" streams N deterministic bytes.
func serveWeb(t testing.TB, tp *netlab.Topology) {
	t.Helper()
	ln := tp.WAN.Listen("tcp", "[::]:80")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, pageBody) })
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, io.LimitReader(&pattern{}, n))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// pattern is an endless deterministic byte stream: byte k is a function of k alone.
type pattern struct{ off int64 }

func (r *pattern) Read(p []byte) (int, error) {
	for i := range p {
		k := r.off + int64(i)
		p[i] = byte(k*7 + k>>11)
	}
	r.off += int64(len(p))
	return len(p), nil
}

func patternSHA256(n int64) string {
	h := sha256.New()
	io.Copy(h, io.LimitReader(&pattern{}, n))
	return hex.EncodeToString(h.Sum(nil))
}

// curl runs curl inside ns and returns its stdout+stderr and error.
func curl(ns *netlab.NS, args ...string) (string, error) {
	return ns.Run(append([]string{"curl", "-sS", "--max-time", "15"}, args...)...)
}

func urlFor(addr string, path string) string {
	return "http://" + net.JoinHostPort(addr, "80") + path
}

// writeFile writes a temp file for this test and returns its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// withTestState gives a config without state_dir the test's own (device totals, the fake-ip
// pool), never the machine's /var/lib/socksgate.
func withTestState(t testing.TB, yaml string) string {
	if strings.Contains(yaml, "state_dir:") {
		return yaml
	}
	return yaml + "\nstate_dir: " + strconv.Quote(t.TempDir()) + "\n"
}

// startSocksgate runs the socksgate binary in gw with the given YAML config and waits until it
// says it is ready.
func startSocksgate(t testing.TB, ns *netlab.NS, yaml string) *netlab.Proc {
	t.Helper()
	p, _ := startSocksgateFile(t, ns, yaml)
	return p
}

// startSocksgateFile is startSocksgate that also returns the config file's path, for tests that
// rewrite it and reload.
func startSocksgateFile(t testing.TB, ns *netlab.NS, yaml string) (*netlab.Proc, string) {
	t.Helper()
	cfg := writeFile(t, "socksgate.yaml", withTestState(t, yaml))
	p := ns.Start(socksgateBin, "run", "-log-format", "json", "-c", cfg)
	if _, ok := waitLog(p, 15*time.Second, msg("socksgate ready")); !ok {
		t.Fatalf("socksgate did not become ready:\n%s", p.Output())
	}
	return p, cfg
}

// stopSocksgate sends SIGTERM and checks that socksgate exits cleanly and leaves no table.
func stopSocksgate(t testing.TB, ns *netlab.NS, gw *netlab.Proc) {
	t.Helper()
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("exit after SIGTERM: exited=%v err=%v\n%s", exited, err, gw.Output())
	}
	if tables := nftTables(t, ns); strings.Contains(tables, "socksgate") {
		t.Fatalf("table left after SIGTERM:\n%s", tables)
	}
}

// gatewayConfig is the usual transparent config: capture on gw's LAN interface, everything
// through upstream "main" at upstreamURL. extra is appended verbatim.
func gatewayConfig(upstreamURL string, extra string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 3s, grace: 2s}
upstreams:
  - {name: main, url: %q}
%s`, netlab.GWLANIf, upstreamURL, extra)
}

// startMicrosocks runs microsocks in the proxy namespace on port 1080, with credentials if
// user is not empty, and waits for it.
func startMicrosocks(t testing.TB, tp *netlab.Topology, user, pass string) *netlab.Proc {
	t.Helper()
	needBin(t, "microsocks")
	args := []string{"microsocks", "-i", "::", "-p", "1080"}
	if user != "" {
		args = append(args, "-u", user, "-P", pass)
	}
	p := tp.Proxy.Start(args...)
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, "1080"), 5*time.Second)
	return p
}

// nftTables lists the nftables tables in ns.
func nftTables(t testing.TB, ns *netlab.NS) string {
	t.Helper()
	out, err := ns.Run("nft", "list", "tables")
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	return out
}

// waitFor polls cond until it is true or the time is up.
func waitFor(within time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func countLines(s, substr string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// serveTLS runs an HTTPS server in wan on port 443 (both families) with a self-signed
// certificate made for this test, valid for names and wan's addresses; "/" answers pageBody.
func serveTLS(t testing.TB, tp *netlab.Topology, names ...string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.ParseIP(netlab.WAN4), net.ParseIP(netlab.WAN6)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ln := tls.NewListener(tp.WAN.Listen("tcp", "[::]:443"), &tls.Config{Certificates: []tls.Certificate{cert}})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, pageBody) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// nsHosts makes names resolve inside ns for processes started after the call (`ip netns exec`
// bind-mounts /etc/netns/NS/hosts over /etc/hosts); it is removed in cleanup.
func nsHosts(t testing.TB, ns *netlab.NS, lines string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte("127.0.0.1 localhost\n::1 localhost\n"+lines), 0o644); err != nil {
		t.Fatal(err)
	}
}
