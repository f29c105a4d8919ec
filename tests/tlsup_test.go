//go:build linux

package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// tlsupCert is a certificate and its key in PEM files, and its key's pin (sha256//BASE64).
type tlsupCert struct{ cert, key, pin string }

// tlsupPKI is a CA (its certificate in ca) and the certificates it signed, in a directory
// others may read (squid drops to its own user).
type tlsupPKI struct {
	dir, ca string
	key     *ecdsa.PrivateKey
	cert    *x509.Certificate
}

func tlsupNewPKI(t testing.TB, name string) *tlsupPKI {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgt-pki-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &tlsupPKI{dir: dir, ca: filepath.Join(dir, "ca.pem"), key: key, cert: cert}
	tlsupWritePEM(t, p.ca, "CERTIFICATE", der)
	return p
}

func tlsupWritePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// issue signs a server certificate for name and the proxy's address.
func (p *tlsupPKI) issue(t testing.TB, file, name string) tlsupCert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.ParseIP(netlab.Proxy4)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := tlsupCert{cert: filepath.Join(p.dir, file+".pem"), key: filepath.Join(p.dir, file+".key")}
	tlsupWritePEM(t, c.cert, "CERTIFICATE", der)
	tlsupWritePEM(t, c.key, "PRIVATE KEY", kder)
	leaf, _ := x509.ParseCertificate(der)
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	c.pin = "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
	return c
}

// tlsupSquidPort is squid's https_port (HTTP CONNECT over TLS).
const tlsupSquidPort = "3129"

// tlsupStartSquid runs squid-openssl in the proxy namespace with an https_port on
// 10.0.2.2:3129 serving c, CONNECT allowed to any port from anywhere (a chained hop's
// connection comes from the proxy host's wan address). It returns squid's directory
// (access.log).
func tlsupStartSquid(t testing.TB, tp *netlab.Topology, c tlsupCert) string {
	t.Helper()
	needBin(t, "squid")
	if out, _ := tp.Proxy.Run("squid", "-v"); !strings.Contains(out, "--with-openssl") {
		if os.Getenv("CI") != "" {
			t.Fatalf("squid is not built with OpenSSL (https_port needs it); tests/deps.sh installs squid-openssl")
		}
		t.Skip("squid is not built with OpenSSL (https_port needs it); make deps installs squid-openssl")
	}
	dir, err := os.MkdirTemp("", "sgt-squid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777) // squid drops to the proxy user
	conf := filepath.Join(dir, "squid.conf")
	text := fmt.Sprintf(`https_port %s:%s tls-cert=%s tls-key=%s
pid_filename %s/squid.pid
cache_log %s/cache.log
access_log stdio:%s/access.log
cache deny all
cache_mem 8 MB
coredump_dir %s
shutdown_lifetime 0 seconds
http_access allow all
`, netlab.Proxy4, tlsupSquidPort, c.cert, c.key, dir, dir, dir, dir)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p := tp.Proxy.Start("squid", "-N", "-f", conf)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Logf("squid cache.log:\n%s\nsquid output:\n%s", b, p.Output())
		}
	})
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, tlsupSquidPort), 20*time.Second)
	return dir
}

// tlsupSquidConnects counts the CONNECTs to dst in squid's access log.
func tlsupSquidConnects(dir, dst string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
	return strings.Count(string(b), "CONNECT "+dst)
}

// tlsupStunnelPort is where stunnel takes TLS for dante.
const tlsupStunnelPort = "1443"

// tlsupStartStunnel runs stunnel4 in the proxy namespace: TLS on 10.0.2.2:1443, serving c,
// carried to dante on 10.0.2.2:1080. Its log (which says of each handshake whether it resumed
// a session) is the Proc's output.
func tlsupStartStunnel(t testing.TB, tp *netlab.Topology, c tlsupCert) *netlab.Proc {
	t.Helper()
	needBin(t, "stunnel4")
	conf := writeFile(t, "stunnel.conf", fmt.Sprintf(`foreground = yes
syslog = no
pid =
debug = info
[socks]
accept = %s:%s
connect = %s:1080
cert = %s
key = %s
`, netlab.Proxy4, tlsupStunnelPort, netlab.Proxy4, c.cert, c.key))
	p := tp.Proxy.Start("stunnel4", conf)
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, tlsupStunnelPort), 10*time.Second)
	return p
}

// tlsupConfig captures the LAN (transparent holds more keys of that section) and opens the
// explicit ports on it, with the given upstreams (and rules, groups) YAML.
func tlsupConfig(transparent, body string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: ["lan:8080"], socks: ["lan:1080"]}
transparent: {sniff: {enabled: false}%s}
timeouts: {dial: 3s, grace: 1s}
%s`, netlab.GWLANIf, transparent, body)
}

// tlsupFlows returns socksgate's ended flows to the wan server, waiting until there are n.
func tlsupFlows(t testing.TB, gw *netlab.Proc, n int) []logLine {
	t.Helper()
	end := flowEnded.with("dst", netlab.WAN4+":80")
	if !waitFor(3*time.Second, func() bool { return countLogs(gw.Output(), end) >= n }) {
		t.Fatalf("%d flow lines, want %d:\n%s", countLogs(gw.Output(), end), n, gw.Output())
	}
	return findLogs(gw.Output(), end)
}

// HTTP CONNECT over TLS to squid (https_port, a CA made here): plain curl from the LAN through
// the transparent gateway, and curl through the explicit HTTP and SOCKS ports, reach the
// server; squid's log shows each CONNECT; the first flow makes a full handshake and the others
// resume its session (socksgate's flow lines), which squid takes.
func TestTLSUpstreamSquidHTTPS(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	pki := tlsupNewPKI(t, "lab CA")
	dir := tlsupStartSquid(t, tp, pki.issue(t, "squid", "proxy.lab"))
	url := "https://" + netlab.Proxy4 + ":" + tlsupSquidPort
	gw := startSocksgate(t, tp.GW, tlsupConfig("", fmt.Sprintf(`upstreams:
  - {name: main, url: %q, tls: {server_name: proxy.lab, ca: %s}}
rules: [{upstream: main}]
`, url, pki.ca)))
	page := urlFor(netlab.WAN4, "/")
	for i, args := range [][]string{
		{page}, {page}, {page},
		{"-x", explicitHTTP4, page},
		{"--socks5", explicitSOCKS4, page},
	} {
		out, err := curl(tp.LAN, args...)
		if err != nil || out != pageBody {
			t.Fatalf("curl %d %v: %v: %q\n%s", i, args, err, out, gw.Output())
		}
	}
	flows := tlsupFlows(t, gw, 5)
	for i, l := range flows {
		want := logFields{"upstream": url, "outcome": "ok", "tls": "resumed"}
		if i == 0 {
			want["tls"] = "full"
		}
		if !l.has(want) {
			t.Errorf("flow %d: %v, want %v", i, l, want)
		}
	}
	if !waitFor(3*time.Second, func() bool { return tlsupSquidConnects(dir, netlab.WAN4+":80") >= 5 }) {
		b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
		t.Fatalf("squid's access log does not show 5 CONNECTs:\n%s", b)
	}
}

// SOCKS5 over TLS to stunnel in front of dante: curl from the LAN reaches the server through
// both; stunnel says later handshakes reused the session; UDP routed there meets
// udp_without_support (block: dropped, with the reason in the log), as for any upstream
// without UDP.
func TestTLSUpstreamStunnelDante(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	hits := udpEcho(t, tp, 7007)
	pki := tlsupNewPKI(t, "lab CA")
	dante := startDante(t, tp, danteOptions{})
	stunnel := tlsupStartStunnel(t, tp, pki.issue(t, "stunnel", "socks.lab"))
	url := "socks5+tls://" + netlab.Proxy4 + ":" + tlsupStunnelPort
	gw := startSocksgate(t, tp.GW, tlsupConfig(", udp: true, udp_port: 12346, udp_idle: 1s", fmt.Sprintf(`upstreams:
  - {name: main, url: %q, tls: {server_name: socks.lab, ca: %s}}
rules: [{upstream: main}]
`, url, pki.ca)))
	for i := range 3 {
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl %d: %v: %q\n%s\nstunnel:\n%s", i, err, out, gw.Output(), stunnel.Output())
		}
	}
	flows := tlsupFlows(t, gw, 3)
	if !flows[0].has(logFields{"upstream": url, "tls": "full"}) || !flows[1].has(logFields{"tls": "resumed"}) || !flows[2].has(logFields{"tls": "resumed"}) {
		t.Errorf("flow lines:\n%v\n%v\n%v", flows[0], flows[1], flows[2])
	}
	// The server's side: stunnel resumed at least the two later flows' sessions (socksgate's
	// pipelining probe, in the background at the first flow, may make a full handshake too).
	if !waitFor(2*time.Second, func() bool { return strings.Count(stunnel.Output(), "previous session reused") >= 2 }) {
		t.Errorf("stunnel's log shows %d resumed sessions, want 2 or more:\n%s", strings.Count(stunnel.Output(), "previous session reused"), stunnel.Output())
	}
	if !waitFor(2*time.Second, func() bool { return upstreamsDanteSawFrom(dante.Output(), netlab.Proxy4, netlab.WAN4) }) {
		t.Fatalf("dante's log does not show a session from stunnel to the server:\n%s", dante.Output())
	}

	client := tp.LAN.ListenPacket("udp", ":0")
	if got, _, err := udpExchange(client, netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7007), "x", 2, 500*time.Millisecond); err == nil {
		t.Fatalf("UDP went through socks5+tls: %q", got)
	}
	if hits.Load() != 0 {
		t.Fatal("the echo received datagrams routed to socks5+tls under udp_without_support: block")
	}
	if _, ok := waitLog(gw, 5*time.Second, logFields{"msg": "udp session failed", "upstream": url, "error": "~SOCKS5 over TLS: upstream does not carry UDP"}); !ok {
		t.Fatalf("no line naming why UDP was dropped:\n%s", gw.Output())
	}
	gw.Kill()

	// udp_without_support: direct sends it out of gw instead.
	gw = startSocksgate(t, tp.GW, tlsupConfig(", udp: true, udp_port: 12346, udp_idle: 1s, udp_without_support: direct", fmt.Sprintf(`upstreams:
  - {name: main, url: %q, tls: {server_name: socks.lab, ca: %s}}
rules: [{upstream: main}]
`, url, pki.ca)))
	dst := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7007)
	if got, from, err := udpExchange(client, dst, "direct", 3, time.Second); err != nil || got != "direct" || from != dst {
		t.Fatalf("UDP under udp_without_support: direct: %q from %s, %v\n%s", got, from, err, gw.Output())
	}
}

// A proxy whose certificate comes from another CA, a pin that does not match and a server name
// the certificate is not valid for each fail the flow, with a line that names the upstream and
// the reason.
func TestTLSUpstreamRefusesTheWrongProxy(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	pki, other := tlsupNewPKI(t, "lab CA"), tlsupNewPKI(t, "other CA")
	good := pki.issue(t, "squid", "proxy.lab")
	tlsupStartSquid(t, tp, good)
	url := "https://" + netlab.Proxy4 + ":" + tlsupSquidPort
	wrongPin := other.issue(t, "unused", "proxy.lab").pin
	for _, tc := range []struct{ name, tls, reason string }{
		{"other CA", "{server_name: proxy.lab, ca: " + other.ca + "}", "certificate signed by unknown authority"},
		{"wrong pin", "{server_name: proxy.lab, ca: " + pki.ca + ", pin_sha256: [" + wrongPin + "]}", "matches no tls.pin_sha256"},
		{"wrong server name", "{server_name: wrong.lab, ca: " + pki.ca + "}", "certificate is valid for proxy.lab, not wrong.lab"},
		{"system roots", "{server_name: proxy.lab}", "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startSocksgate(t, tp.GW, tlsupConfig("", fmt.Sprintf("upstreams:\n  - {name: main, url: %q, tls: %s}\nrules: [{upstream: main}]\n", url, tc.tls)))
			if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err == nil && out == pageBody {
				t.Fatalf("the page came through a proxy that should not be trusted")
			}
			l, ok := waitLog(gw, 3*time.Second, msg("flow failed").with("upstream", url))
			if !ok || !l.has(logFields{"error": "~tls handshake with the proxy " + netlab.Proxy4 + ":" + tlsupSquidPort}) || !strings.Contains(l.str("error"), tc.reason) {
				t.Fatalf("flow failed line %v, want the upstream and %q:\n%s", l, tc.reason, gw.Output())
			}
			gw.Kill()
		})
	}
	t.Run("pin alone, insecure", func(t *testing.T) {
		gw := startSocksgate(t, tp.GW, tlsupConfig("", fmt.Sprintf("upstreams:\n  - {name: main, url: %q, tls: {insecure: true, pin_sha256: [%s]}}\nrules: [{upstream: main}]\n", url, good.pin)))
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl: %v: %q\n%s", err, out, gw.Output())
		}
	})
}

// A TLS hop inside a chain: https to squid via dante. The TLS runs through dante's tunnel (its
// log shows the session to squid's https_port), end to end with squid, and resumes there too.
// In a failover group beside an upstream with a wrong pin, health checks through TLS take that
// one down with the reason and the flows go through the chain.
func TestTLSUpstreamInAChainAndAGroup(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	pki, other := tlsupNewPKI(t, "lab CA"), tlsupNewPKI(t, "other CA")
	dir := tlsupStartSquid(t, tp, pki.issue(t, "squid", "proxy.lab"))
	dante := startDante(t, tp, danteOptions{})
	squid := "https://" + netlab.Proxy4 + ":" + tlsupSquidPort
	gw := startSocksgate(t, tp.GW, tlsupConfig("", fmt.Sprintf(`upstreams:
  - {name: pinned, url: %q, tls: {ca: %s, pin_sha256: [%s]}}
  - {name: chained, url: %q, via: edge, tls: {server_name: proxy.lab, ca: %s}}
  - {name: edge, url: "socks5://%s:1080"}
groups:
  - {name: out, upstreams: [pinned, chained], health: {interval: 500ms, timeout: 2s, rise: 1, fall: 1}}
rules: [{upstream: out}]
`, squid, pki.ca, other.issue(t, "unused", "proxy.lab").pin, squid, pki.ca, netlab.Proxy4)))
	down, ok := waitLog(gw, 5*time.Second, msg("upstream down").with("upstream", "pinned"))
	if !ok || !down.has(logFields{"reason": "~matches no tls.pin_sha256"}) {
		t.Fatalf("no upstream down line for the wrong pin: %v\n%s", down, gw.Output())
	}
	for i := range 3 {
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl %d: %v: %q\n%s", i, err, out, gw.Output())
		}
	}
	chainName := squid + " via socks5://" + netlab.Proxy4 + ":1080"
	for i, l := range tlsupFlows(t, gw, 3) {
		if !l.has(logFields{"upstream": "group:out", "member": "chained", "tls": "~"}) {
			t.Errorf("flow %d: %v, want member chained (%s)", i, l, chainName)
		}
		if i > 0 && l.str("tls") != "resumed" {
			t.Errorf("flow %d through the chain did not resume: %v", i, l)
		}
	}
	if !waitFor(2*time.Second, func() bool { return upstreamsDanteSawFrom(dante.Output(), netlab.GWUp4, netlab.Proxy4) }) {
		t.Fatalf("dante's log does not show the hop to squid:\n%s", dante.Output())
	}
	if tlsupSquidConnects(dir, netlab.WAN4+":80") < 3 {
		b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
		t.Fatalf("squid's access log does not show the CONNECTs:\n%s", b)
	}
}

// A client's half-close crosses the TLS as close_notify (tls.Conn's CloseWrite): a server that
// answers only after the end of the request still answers, through stunnel and dante. (Squid
// is not tried: it ends a tunnel at the client's half-close, over http:// as over https://.)
func TestTLSUpstreamHalfClose(t *testing.T) {
	tp := netlab.NewTopology(t)
	ln := tp.WAN.Listen("tcp", net.JoinHostPort(netlab.WAN4, "9"))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "got %d", len(b))
			}()
		}
	}()
	pki := tlsupNewPKI(t, "lab CA")
	startDante(t, tp, danteOptions{})
	tlsupStartStunnel(t, tp, pki.issue(t, "stunnel", "proxy.lab"))
	for _, url := range []string{"socks5+tls://" + netlab.Proxy4 + ":" + tlsupStunnelPort} {
		t.Run(url, func(t *testing.T) {
			gw := startSocksgate(t, tp.GW, tlsupConfig("", fmt.Sprintf("upstreams:\n  - {name: main, url: %q, tls: {server_name: proxy.lab, ca: %s}}\nrules: [{upstream: main}]\n", url, pki.ca)))
			defer gw.Kill()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := tp.LAN.Dial(ctx, "tcp", net.JoinHostPort(netlab.WAN4, "9"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("hello, half-closed"))
			c.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(c)
			if string(b) != "got 18" {
				t.Fatalf("answer %q, %v\n%s", b, err, gw.Output())
			}
		})
	}
}
