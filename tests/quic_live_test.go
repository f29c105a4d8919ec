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
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/socksgate/socksgate/tests/netlab"
)

// quicOrigin is a web origin in wan for quicName: HTTP/3 on UDP 443 (quic-go) and HTTPS on TCP
// 443 (h2, HTTP/1.1), with one certificate. Every request is recorded with its protocol and the
// address it came from: which one carried a page, and whether through the upstream.
type quicOrigin struct {
	spki  string         // base64 SHA-256 of the certificate's public key, for Chromium's ignore list
	roots *x509.CertPool // the certificate, for quic-go's client

	mu   sync.Mutex
	reqs []originReq
}

type originReq struct{ proto, from string }

func (o *quicOrigin) requests() []originReq {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]originReq(nil), o.reqs...)
}

func (o *quicOrigin) count(proto string) int {
	n := 0
	for _, r := range o.requests() {
		if r.proto == proto {
			n++
		}
	}
	return n
}

func serveQUICOrigin(t *testing.T, tp *netlab.Topology) *quicOrigin {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: quicName},
		DNSNames:     []string{quicName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pub)
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	o := &quicOrigin{spki: base64.StdEncoding.EncodeToString(sum[:]), roots: x509.NewCertPool()}
	o.roots.AddCert(leaf)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		o.mu.Lock()
		o.reqs = append(o.reqs, originReq{proto: r.Proto, from: host})
		o.mu.Unlock()
		w.Header().Set("Alt-Svc", `h3=":443"; ma=3600`) // what lets a browser try QUIC
		io.WriteString(w, pageBody)
	})
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	h1 := &http.Server{Handler: handler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go h1.ServeTLS(tp.WAN.Listen("tcp", "[::]:443"), "", "")
	h3 := &http3.Server{Handler: handler, TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})}
	go h3.Serve(tp.WAN.ListenPacket("udp", "[::]:443"))
	t.Cleanup(func() { h1.Close(); h3.Close() })
	return o
}

// chromium loads https://quicName/ in headless Chromium from Debian, run in lan, with the name
// mapped to wan and the origin's certificate trusted by its key; with force, QUIC is forced on
// for the origin (no TCP at all), else Chromium uses what it knows: TCP first, then, once the
// profile holds the origin's Alt-Svc, QUIC raced against TCP. It returns the page's DOM and
// Chromium's messages.
func chromium(t *testing.T, tp *netlab.Topology, o *quicOrigin, wan, profile string, force bool) (string, error) {
	t.Helper()
	args := []string{"timeout", "60", "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
		"--no-first-run", "--disable-background-networking", "--disable-component-update",
		"--user-data-dir=" + profile, "--enable-quic",
		"--host-resolver-rules=MAP " + quicName + " " + hostRule(wan),
		"--ignore-certificate-errors-spki-list=" + o.spki}
	if force {
		args = append(args, "--origin-to-force-quic-on="+quicName+":443")
	}
	out, err := tp.LAN.Run(append(args, "--dump-dom", "https://"+quicName+"/")...)
	return chromiumNoise.ReplaceAllString(out, ""), err
}

// quicGoGet fetches https://quicName/ over HTTP/3 with quic-go's client, its UDP socket opened
// in lan and the name pinned to wan, the origin's certificate verified.
func quicGoGet(tp *netlab.Topology, o *quicOrigin, wan string) (string, error) {
	var pc net.PacketConn
	if err := tp.LAN.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":0"); return }); err != nil {
		return "", err
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(wan), 443))
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{ServerName: quicName, RootCAs: o.roots},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialEarly(ctx, pc, dst, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + quicName + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.Proto != "HTTP/3.0" {
		return "", fmt.Errorf("answered over %s", resp.Proto)
	}
	return string(b), nil
}

// chromiumNoise are the lines headless Chromium prints about the D-Bus it has no use for here.
var chromiumNoise = regexp.MustCompile(`(?m)^.*(dbus|unexpected operator).*\n`)

// hostRule is an address as --host-resolver-rules takes it: IPv6 in brackets.
func hostRule(a string) string {
	if strings.Contains(a, ":") {
		return "[" + a + "]"
	}
	return a
}

// udpSessions are socksgate's session lines for UDP to dst (the address, in ip when a name
// was sniffed, else in dst) that match f.
func udpSessions(gw *netlab.Proc, dst string, f logFields) []logLine {
	var out []logLine
	for _, l := range findLogs(gw.Output(), udpEnded) {
		if (l.str("ip") == dst || l.str("dst") == dst) && l.has(f) && strings.HasPrefix(l.str("msg"), "udp session") {
			out = append(out, l)
		}
	}
	return out
}

// A real QUIC client against a real HTTP/3 server, through socksgate: Chromium (from Debian)
// in lan, quic-go's HTTP/3 server in wan, the config's rules a domain rule for the origin
// through dante and a catch-all that blocks.
//   - transparent.quic: sniff, QUIC forced on: socksgate reads the server name from Chromium's
//     Initials and the domain rule sends the session through dante (by address the catch-all
//     would block it): the page arrives over HTTP/3, at the origin from dante's address.
//   - transparent.quic: block: with QUIC forced on, Chromium's QUIC fails (nothing reaches the
//     origin, ERR_QUIC_PROTOCOL_ERROR). Unforced, once its profile knows the origin's Alt-Svc
//     (h3) it tries QUIC, which is dropped, and loads the page over TCP, where the TLS SNI
//     picks the same rule: every request at the origin is HTTP/2 from dante.
func TestQUICLiveChromium(t *testing.T) {
	needBin(t, "chromium", "timeout", "danted")
	for _, tc := range []struct{ mode, wan, via string }{
		{"sniff", netlab.WAN4, netlab.ProxyWAN4},
		{"sniff", netlab.WAN6, netlab.ProxyWAN6},
		{"block", netlab.WAN4, netlab.ProxyWAN4},
	} {
		t.Run(tc.mode+" "+tc.wan, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			o := serveQUICOrigin(t, tp)
			startDante(t, tp, danteOptions{})
			gw := startSocksgate(t, tp.GW, quicConfig(tc.mode))
			dst := net.JoinHostPort(tc.wan, "443")
			page, err := chromium(t, tp, o, tc.wan, t.TempDir(), true)
			t.Logf("chromium, QUIC forced: %v; the origin saw %v", err, o.requests())
			if tc.mode == "sniff" {
				if err != nil || !strings.Contains(page, pageBody) {
					t.Fatalf("chromium: %v\n%s\n%s", err, page, gw.Output())
				}
				if len(o.requests()) == 0 {
					t.Fatal("no request at the origin")
				}
				for _, r := range o.requests() {
					if r.proto != "HTTP/3.0" || r.from != tc.via {
						t.Errorf("origin request %+v: want HTTP/3.0 from dante (%s)", r, tc.via)
					}
				}
				byName := logFields{"rule": "quic-by-name", "dst": net.JoinHostPort(quicName, "443"), "name_from": "sniff", "outcome": "ok"}
				if !waitFor(10*time.Second, func() bool { return len(udpSessions(gw, dst, byName)) > 0 }) {
					t.Fatalf("no udp session through the domain rule for %s:\n%s", dst, gw.Output())
				}
				t.Logf("%v", udpSessions(gw, dst, byName)[0])
				return
			}

			// block, QUIC forced: it fails, and nothing reaches the origin.
			if err == nil && strings.Contains(page, pageBody) {
				t.Fatalf("the page loaded over forced QUIC with quic: block:\n%s", page)
			}
			if !strings.Contains(page, "ERR_QUIC_PROTOCOL_ERROR") {
				t.Errorf("chromium's error: %v\n%s", err, page)
			}
			if n := len(o.requests()); n != 0 {
				t.Errorf("%d requests reached the origin with quic: block", n)
			}
			blocked := logFields{"msg": "udp session blocked", "rule": "transparent.quic", "action": "block", "outcome": "blocked"}
			if !waitFor(10*time.Second, func() bool { return len(udpSessions(gw, dst, blocked)) > 0 }) {
				t.Fatalf("no blocked QUIC session for %s:\n%s", dst, gw.Output())
			}
			t.Logf("%v", udpSessions(gw, dst, blocked)[0])
			forced := map[string]bool{} // the forced run's sources: its retransmissions may end more sessions
			for _, l := range udpSessions(gw, dst, blocked) {
				forced[l.str("src")] = true
			}
			fromLater := func() []logLine {
				var out []logLine
				for _, l := range udpSessions(gw, dst, blocked) {
					if !forced[l.str("src")] {
						out = append(out, l)
					}
				}
				return out
			}

			// Unforced: the first load learns the Alt-Svc over TCP; the second tries QUIC
			// (dropped) and falls back to TCP.
			prof := t.TempDir()
			for i := 1; i <= 2; i++ {
				page, err := chromium(t, tp, o, tc.wan, prof, false)
				if err != nil || !strings.Contains(page, pageBody) {
					t.Fatalf("load %d without forced QUIC: %v\n%s\n%s", i, err, page, gw.Output())
				}
			}
			if !waitFor(10*time.Second, func() bool { return len(fromLater()) > 0 }) {
				t.Fatalf("chromium did not try QUIC on its second load (no blocked session from it):\n%s", gw.Output())
			}
			t.Logf("%v", fromLater()[0])
			for _, r := range o.requests() {
				if r.proto == "HTTP/3.0" || r.from != tc.via {
					t.Errorf("origin request %+v: want TCP (HTTP/1.1 or 2) from dante (%s)", r, tc.via)
				}
			}
			l := lastLog(gw.Output(), logFields{"msg": "flow", "rule": "quic-by-name"})
			if l == nil || !l.has(logFields{"network": "tcp", "name_from": "sniff", "dst": net.JoinHostPort(quicName, "443")}) {
				t.Errorf("no TCP flow through the domain rule: %v", l)
			}
			t.Logf("fell back to TCP: the origin saw %v", o.requests())
		})
	}
}
