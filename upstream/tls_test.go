package upstream

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
)

// testPKI is a CA and a proxy certificate it signed, for "proxy.test" and 127.0.0.1.
type testPKI struct {
	caFile string // the CA certificate, PEM
	leaf   tls.Certificate
	pin    configs.Pin // of the leaf's key
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "proxy.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"proxy.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(leafDER)
	p := &testPKI{caFile: filepath.Join(t.TempDir(), "ca.pem"), pin: configs.PinOf(leaf)}
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	p.leaf = tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key, Leaf: leaf}
	return p
}

// tlsProxy is an HTTP CONNECT or SOCKS5 proxy over TLS whose tunnels echo, counting the
// handshakes it completed and how many of them resumed a session.
type tlsProxy struct {
	addr              string
	full, resumed     atomic.Int32
	versions          atomic.Int32 // the version of the last handshake
	connects, answers atomic.Int32
}

func startTLSProxy(t testing.TB, pki *testPKI, socks bool, maxVersion uint16) *tlsProxy {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.leaf}, MaxVersion: maxVersion}
	p := &tlsProxy{}
	p.addr = testutil.ServeLoopback(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			return
		}
		cs := tc.ConnectionState()
		p.versions.Store(int32(cs.Version))
		if cs.DidResume {
			p.resumed.Add(1)
		} else {
			p.full.Add(1)
		}
		if socks {
			(&pipelineProxy{}).serve(tc, true)
			return
		}
		serveConnect(tc, p, nil)
	}).String()
	return p
}

// serveConnect answers one CONNECT with 200, then echoes, or with forward set, relays to what
// forward dials.
func serveConnect(c net.Conn, p *tlsProxy, forward func(target string) (net.Conn, error)) {
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "CONNECT ") {
		return
	}
	if p != nil {
		p.connects.Add(1)
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if l == "\r\n" {
			break
		}
	}
	if forward == nil {
		c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		io.Copy(c, r)
		return
	}
	up, err := forward(strings.Fields(line)[1])
	if err != nil {
		c.Write([]byte("HTTP/1.1 502 Bad Gateway\r\n\r\n"))
		return
	}
	defer up.Close()
	c.SetDeadline(time.Time{})
	c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	go io.Copy(up, r)
	io.Copy(c, up)
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// echoThrough dials through u and checks that the tunnel echoes; it returns the TLS state of
// the connection to the proxy.
func echoThrough(t testing.TB, u Upstream) tls.ConnectionState {
	t.Helper()
	c, err := u.DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo: %q, %v", b, err)
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		t.Fatalf("connection is %T, want *tls.Conn", c)
	}
	return tc.ConnectionState()
}

func tlsUpstream(t testing.TB, raw string, tc *configs.UpstreamTLS) Upstream {
	t.Helper()
	u, err := newUpstream(&configs.Upstream{Name: "p", URL: mustURL(t, raw), TLS: tc}, Direct{}, Direct{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// The second flow through a TLS upstream resumes the first one's session (TLS 1.3 and 1.2),
// for HTTP CONNECT and SOCKS5 alike; a server that offers less than TLS 1.2 is refused.
func TestTLSUpstreamResumesSessions(t *testing.T) {
	pki := newTestPKI(t)
	for _, tt := range []struct {
		name    string
		socks   bool
		version uint16
	}{
		{"https TLS 1.3", false, tls.VersionTLS13},
		{"https TLS 1.2", false, tls.VersionTLS12},
		{"socks5+tls TLS 1.3", true, tls.VersionTLS13},
		{"socks5+tls TLS 1.2", true, tls.VersionTLS12},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startTLSProxy(t, pki, tt.socks, tt.version)
			scheme := "https://"
			if tt.socks {
				scheme = "socks5+tls://"
			}
			u := tlsUpstream(t, scheme+p.addr, &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile})
			if s, ok := u.(*socksUpstream); ok {
				s.dp = nil // no pipelining probe: its handshake, in the background, would race the first flow's
			}
			if !strings.HasPrefix(u.String(), scheme) {
				t.Errorf("String() = %q", u.String())
			}
			first := echoThrough(t, u)
			second := echoThrough(t, u)
			third := echoThrough(t, u)
			if first.DidResume || !second.DidResume || !third.DidResume {
				t.Fatalf("DidResume: %v %v %v, want false true true", first.DidResume, second.DidResume, third.DidResume)
			}
			if first.Version != tt.version {
				t.Errorf("version %x, want %x", first.Version, tt.version)
			}
			if p.full.Load() != 1 || p.resumed.Load() != 2 {
				t.Errorf("the proxy saw %d full and %d resumed handshakes, want 1 and 2", p.full.Load(), p.resumed.Load())
			}
		})
	}
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		p := startTLSProxy(t, pki, false, tls.VersionTLS11)
		u := tlsUpstream(t, "https://"+p.addr, &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile})
		if _, err := u.DialContext(t.Context(), "tcp", "192.0.2.1:80"); err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("dial to a TLS 1.1 proxy: %v", err)
		}
	})
}

// A wrong CA, a wrong pin or a wrong name fails the dial with an error that says which and is
// a proxy fault for a group (the member goes down); a pin alone (insecure) trusts the proxy.
func TestTLSUpstreamVerification(t *testing.T) {
	pki, other := newTestPKI(t), newTestPKI(t)
	p := startTLSProxy(t, pki, false, 0)
	wrongPin := other.pin
	for _, tt := range []struct {
		name string
		tls  *configs.UpstreamTLS
		want string // in the error; "" the dial works
	}{
		{"right CA and name", &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile}, ""},
		{"IP literal checked against the IP SAN", &configs.UpstreamTLS{CA: pki.caFile}, ""},
		{"other CA", &configs.UpstreamTLS{ServerName: "proxy.test", CA: other.caFile}, "certificate signed by unknown authority"},
		{"system roots", nil, "certificate signed by unknown authority"},
		{"wrong name", &configs.UpstreamTLS{ServerName: "other.test", CA: pki.caFile}, "certificate is valid for proxy.test, not other.test"},
		{"right pin", &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile, PinSHA256: []configs.Pin{wrongPin, pki.pin}}, ""},
		{"wrong pin", &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile, PinSHA256: []configs.Pin{wrongPin}}, "matches no tls.pin_sha256"},
		{"pin alone (insecure)", &configs.UpstreamTLS{Insecure: true, PinSHA256: []configs.Pin{pki.pin}}, ""},
		{"wrong pin alone (insecure)", &configs.UpstreamTLS{Insecure: true, PinSHA256: []configs.Pin{wrongPin}}, "matches no tls.pin_sha256"},
		{"insecure, wrong name", &configs.UpstreamTLS{Insecure: true, ServerName: "other.test"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := tlsUpstream(t, "https://"+p.addr, tt.tls)
			if tt.want == "" {
				echoThrough(t, u)
				echoThrough(t, u) // resumed: the pin is checked again, and holds
				return
			}
			_, err := u.DialContext(t.Context(), "tcp", "192.0.2.1:80")
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "tls handshake with the proxy "+p.addr) {
				t.Fatalf("dial: %v, want an error about %q", err, tt.want)
			}
			if reason, fault := proxyFault(err); !fault || !strings.HasPrefix(reason, "tls: ") {
				t.Errorf("proxyFault = %q, %v; want a tls fault", reason, fault)
			}
		})
	}
}

// A wrong pin found at a resumed handshake still fails: a proxy whose key changed under a
// session made before the change is not trusted on the strength of that session.
func TestTLSUpstreamPinCheckedOnResumption(t *testing.T) {
	pki := newTestPKI(t)
	p := startTLSProxy(t, pki, false, 0)
	pins := []configs.Pin{pki.pin}
	u := tlsUpstream(t, "https://"+p.addr, &configs.UpstreamTLS{CA: pki.caFile, PinSHA256: pins})
	echoThrough(t, u)
	pins[0][0] ^= 1 // the pin the upstream holds (the slice is shared)
	if _, err := u.DialContext(t.Context(), "tcp", "192.0.2.1:80"); err == nil || !strings.Contains(err.Error(), "matches no tls.pin_sha256") {
		t.Fatalf("resumed dial with a wrong pin: %v", err)
	}
}

// A TLS hop inside a chain: https through a plain HTTP CONNECT proxy. The TLS runs through the
// first proxy's tunnel to the second, and resumes there too.
func TestTLSUpstreamInAChain(t *testing.T) {
	pki := newTestPKI(t)
	p := startTLSProxy(t, pki, false, 0)
	var forwarded atomic.Int32
	front := testutil.ServeLoopback(t, func(c net.Conn) {
		defer c.Close()
		serveConnect(c, nil, func(target string) (net.Conn, error) {
			forwarded.Add(1)
			if target != p.addr {
				return nil, errors.New("unexpected target " + target)
			}
			return net.Dial("tcp", target)
		})
	})
	cfg := &configs.Config{Upstreams: []configs.Upstream{
		{Name: "front", URL: mustURL(t, "http://"+front.String())},
		{Name: "tls", URL: mustURL(t, "https://"+p.addr), Via: "front", TLS: &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile}},
	}}
	ups, err := NewUpstreamsIdle(cfg, Direct{})
	if err != nil {
		t.Fatal(err)
	}
	u := ups["tls"]
	if want := "https://" + p.addr + " via http://" + front.String(); u.String() != want {
		t.Errorf("String() = %q, want %q", u.String(), want)
	}
	if echoThrough(t, u).DidResume || !echoThrough(t, u).DidResume {
		t.Error("the second flow through the chain did not resume")
	}
	if forwarded.Load() != 2 || p.connects.Load() != 2 {
		t.Errorf("front forwarded %d, the TLS proxy saw %d CONNECTs; want 2 and 2", forwarded.Load(), p.connects.Load())
	}
}

// socks5+tls carries no UDP: a UDP flow meets what the config says for upstreams without UDP,
// and a group's UDP skips such a member.
func TestSOCKS5OverTLSCarriesNoUDP(t *testing.T) {
	u := tlsUpstream(t, "socks5+tls://127.0.0.1:1", nil)
	if _, err := u.ListenPacket(t.Context()); !errors.Is(err, ErrUDPUnsupported) {
		t.Fatalf("ListenPacket: %v, want ErrUDPUnsupported", err)
	}
	g := NewGroup(configs.Group{Name: "g"}, []GroupMember{{Name: "p", Upstream: u}}, nil, nil)
	if _, err := g.ListenPacket(t.Context()); !errors.Is(err, ErrUDPUnsupported) {
		t.Fatalf("group ListenPacket: %v, want ErrUDPUnsupported", err)
	}
}

// A group's health check without a probe is a TLS handshake with the proxy: a proxy whose
// certificate does not verify is down, with the reason.
func TestTLSUpstreamHealthCheck(t *testing.T) {
	pki, other := newTestPKI(t), newTestPKI(t)
	p := startTLSProxy(t, pki, false, 0)
	good := tlsUpstream(t, "https://"+p.addr, &configs.UpstreamTLS{CA: pki.caFile})
	bad := tlsUpstream(t, "https://"+p.addr, &configs.UpstreamTLS{CA: other.caFile})
	g := NewGroup(configs.Group{Name: "g", Health: configs.Health{Timeout: configs.Duration(5 * time.Second)}},
		[]GroupMember{{Name: "good", Upstream: good}, {Name: "bad", Upstream: bad}}, nil, nil)
	defer g.Close()
	if err := g.check(g.members[0]); err != nil {
		t.Errorf("check of the good member: %v", err)
	}
	err := g.check(g.members[1])
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("check of the bad member: %v", err)
	}
	// A flow through the group moves past the bad member and marks it down.
	g2 := NewGroup(configs.Group{Name: "g2"}, []GroupMember{{Name: "bad", Upstream: bad}, {Name: "good", Upstream: good}}, nil, nil)
	defer g2.Close()
	c, err := g2.DialContext(t.Context(), "tcp", "192.0.2.1:80")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	st := g2.Status()
	if st[0].Up || !strings.HasPrefix(st[0].Reason, "tls: ") || !st[1].Up {
		t.Errorf("status %+v, want bad down with a tls reason", st)
	}
}

// BenchmarkTLSUpstreamResumption is the cost of a flow's dial through an https upstream on
// loopback (the proxy in the same process: its work counts too), with the session resumed (the
// upstream's cache) and with a full handshake each time (no cache), side by side, over TLS 1.3
// and 1.2. A TLS 1.3 resumption still makes a key exchange (Go offers only psk_dhe_ke); it
// saves the certificate's transfer, signature and chain verification. A TLS 1.2 one saves the
// key exchange too, and a round trip.
func BenchmarkTLSUpstreamResumption(b *testing.B) {
	pki := newTestPKI(b)
	for _, v := range []struct {
		name string
		max  uint16
	}{{"tls1.3", tls.VersionTLS13}, {"tls1.2", tls.VersionTLS12}} {
		p := startTLSProxy(b, pki, false, v.max)
		for _, resume := range []bool{true, false} {
			name := v.name + "/resumed"
			if !resume {
				name = v.name + "/full"
			}
			b.Run(name, func(b *testing.B) {
				u := tlsUpstream(b, "https://"+p.addr, &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile})
				if !resume {
					u.(*httpUpstream).d.ProxyDial = noResumption(b, pki, p.addr)
				}
				echoThrough(b, u)
				for b.Loop() {
					if st := echoThrough(b, u); st.DidResume != resume {
						b.Fatalf("DidResume %v", st.DidResume)
					}
				}
			})
		}
	}
}

// noResumption is the TLS hop of an upstream without a session cache.
func noResumption(b *testing.B, pki *testPKI, addr string) func(context.Context, string, string) (net.Conn, error) {
	c := &configs.Upstream{URL: mustURL(b, "https://"+addr), TLS: &configs.UpstreamTLS{ServerName: "proxy.test", CA: pki.caFile}}
	d, err := newTLSDialer(c, Direct{}.DialContext)
	if err != nil {
		b.Fatal(err)
	}
	d.cfg.ClientSessionCache = nil
	return d.DialContext
}

// TLSResumed finds the TLS under a group's connection, and says nothing of a plain one.
func TestTLSResumedThroughAGroup(t *testing.T) {
	pki := newTestPKI(t)
	p := startTLSProxy(t, pki, false, 0)
	u := tlsUpstream(t, "https://"+p.addr, &configs.UpstreamTLS{CA: pki.caFile})
	g := NewGroup(configs.Group{Name: "g"}, []GroupMember{{Name: "p", Upstream: u}}, nil, nil)
	defer g.Close()
	for i, want := range []bool{false, true} {
		c, err := g.DialContext(t.Context(), "tcp", "192.0.2.1:80")
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x")) // the CONNECT answer was read: the ticket is in
		c.Read(make([]byte, 1))
		resumed, ok := TLSResumed(c)
		c.Close()
		if !ok || resumed != want {
			t.Errorf("flow %d: TLSResumed = %v, %v; want %v, true", i, resumed, ok, want)
		}
	}
	a, b := testutil.TCPPair(t)
	defer b.Close()
	if _, ok := TLSResumed((&OwnConns{}).track(a)); ok {
		t.Error("a plain connection is TLS")
	}
}
