package dns

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestExchangeUDPAndTCP(t *testing.T) {
	o := startOrigin(t, nil)
	for _, spec := range []string{o.addr.String(), "udp://" + o.addr.String(), "tcp://" + o.addr.String()} {
		x := mustExchanger(t, spec, Transport{})
		r, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA))
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "192.0.2.1" {
			t.Errorf("%s: answer %v", spec, r.Answer)
		}
		_, network := o.lastQuery()
		want := "udp"
		if strings.HasPrefix(spec, "tcp") {
			want = "tcp"
		}
		if network != want {
			t.Errorf("%s went over %s, want %s", spec, network, want)
		}
	}
}

func TestExchangePlainOverTCPOnlyWayOut(t *testing.T) {
	o := startOrigin(t, nil)
	x := mustExchanger(t, o.addr.String(), Transport{NoUDP: true})
	if _, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA)); err != nil {
		t.Fatal(err)
	}
	if _, network := o.lastQuery(); network != "tcp" {
		t.Errorf("went over %s, want tcp", network)
	}
}

// bigTXT answers TXT with about 3000 bytes: truncated over UDP, whole over TCP.
func bigTXT(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	for i := 0; i < 12; i++ {
		m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: 60},
			Txt: []string{strings.Repeat(string(rune('a'+i)), 250)}})
	}
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		size := 512
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func TestExchangeUDPFallsBackToTCPWhenTruncated(t *testing.T) {
	o := startOrigin(t, bigTXT)
	x := mustExchanger(t, o.addr.String(), Transport{})
	r, err := x.Exchange(context.Background(), query("big.example", mdns.TypeTXT))
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 12 {
		t.Errorf("truncated %v, %d answers; want the whole answer", r.Truncated, len(r.Answer))
	}
	if n := o.queries.Load(); n != 2 {
		t.Errorf("origin asked %d times, want 2 (UDP, then TCP)", n)
	}
}

// udpAssociation is a net.PacketConn standing in for a SOCKS5 UDP association: a plain UDP
// socket, whose WriteTo carries the destination; it counts its writes.
type udpAssociation struct {
	net.PacketConn
	writes *atomic.Int64
}

func (a udpAssociation) WriteTo(b []byte, addr net.Addr) (int, error) {
	a.writes.Add(1)
	return a.PacketConn.WriteTo(b, addr)
}

func TestExchangeOverPacketConn(t *testing.T) {
	o := startOrigin(t, nil)
	var writes atomic.Int64
	listen := func(ctx context.Context) (net.PacketConn, error) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		return udpAssociation{pc, &writes}, err
	}
	x := mustExchanger(t, o.addr.String(), Transport{ListenPacket: listen})
	r, err := x.Exchange(context.Background(), query("a.example", mdns.TypeAAAA))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || writes.Load() != 1 {
		t.Errorf("answer %v, %d writes through the association", r.Answer, writes.Load())
	}
}

func TestExchangePacketConnIgnoresOtherSources(t *testing.T) {
	o := startOrigin(t, nil)
	var pcs = make(chan net.PacketConn, 1)
	listen := func(ctx context.Context) (net.PacketConn, error) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err == nil {
			// Another host sends a bogus datagram first.
			other, _ := net.ListenPacket("udp", "127.0.0.1:0")
			defer other.Close()
			other.WriteTo([]byte("not dns at all"), pc.LocalAddr())
			pcs <- pc
		}
		return pc, err
	}
	x := mustExchanger(t, o.addr.String(), Transport{ListenPacket: listen})
	if _, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA)); err != nil {
		t.Fatal(err)
	}
}

// garbageOrigin answers every UDP query with what bad makes of it.
func garbageOrigin(t *testing.T, bad func(q *mdns.Msg) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			if b := bad(q); b != nil {
				pc.WriteTo(b, from)
			}
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func TestExchangeGarbageIsAnError(t *testing.T) {
	pack := func(m *mdns.Msg) []byte { b, _ := m.Pack(); return b }
	for name, bad := range map[string]func(q *mdns.Msg) []byte{
		"wrong ID": func(q *mdns.Msg) []byte {
			m := new(mdns.Msg)
			m.SetReply(q)
			m.Id++
			return pack(m)
		},
		"wrong question": func(q *mdns.Msg) []byte {
			m := new(mdns.Msg)
			m.SetReply(q)
			m.Question[0].Name = "other.example."
			return pack(m)
		},
		"not a response": func(q *mdns.Msg) []byte { return pack(q) },
		"unparsable":     func(q *mdns.Msg) []byte { b := pack(q); b[2] |= 0x80; return append(b[:12], 0xff, 0xff) },
		"short":          func(q *mdns.Msg) []byte { return []byte{1, 2, 3} },
	} {
		addr := garbageOrigin(t, bad)
		x := mustExchanger(t, "udp://"+addr.String(), Transport{Timeout: 2 * time.Second})
		_, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA))
		if !errors.Is(err, ErrGarbage) {
			t.Errorf("%s: err = %v, want ErrGarbage", name, err)
		}
	}
}

func TestExchangeStallFailsWithinTimeout(t *testing.T) {
	addr := garbageOrigin(t, func(*mdns.Msg) []byte { return nil }) // never answers
	x := mustExchanger(t, "udp://"+addr.String(), Transport{Timeout: 50 * time.Millisecond})
	_, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA))
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// testCert is a self-signed certificate for name and 127.0.0.1.
func testCert(t testing.TB, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestExchangeDoT(t *testing.T) {
	cert, pool := testCert(t, "dot.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{Listener: ln, Net: "tcp-tls", Handler: mdns.HandlerFunc(answerStatic)}
	up := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(up) }
	go srv.ActivateAndServe()
	<-up
	t.Cleanup(func() { srv.Shutdown() })

	x := mustExchanger(t, "tls://"+ln.Addr().String()+"#dot.test", Transport{TLSConfig: &tls.Config{RootCAs: pool}})
	r, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA))
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("DoT: %v %v", r, err)
	}
	// The wrong server name fails verification.
	x = mustExchanger(t, "tls://"+ln.Addr().String()+"#other.test", Transport{TLSConfig: &tls.Config{RootCAs: pool}})
	if _, err := x.Exchange(context.Background(), query("a.example", mdns.TypeA)); err == nil {
		t.Fatal("DoT with the wrong server name succeeded")
	}
}

func TestExchangeDoHPinnedAddress(t *testing.T) {
	cert, pool := testCert(t, "doh.test")
	var posts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/dns-message" || r.URL.Path != "/dns-query" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		posts.Add(1)
		b, _ := io.ReadAll(r.Body)
		q := new(mdns.Msg)
		if err := q.Unpack(b); err != nil || q.Id != 0 {
			http.Error(w, "bad message", http.StatusBadRequest)
			return
		}
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, rr(q.Question[0].Name+" 60 IN A 192.0.2.7"))
		out, _ := m.Pack()
		w.Header().Set("Content-Type", "application/dns-message")
		w.Write(out)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		return directDial(ctx, network, addr)
	}
	spec := "https://doh.test:" + itoa(port) + "/dns-query#127.0.0.1"
	x := mustExchanger(t, spec, Transport{Dial: dial, TLSConfig: &tls.Config{RootCAs: pool}})
	for i := 0; i < 2; i++ {
		q := query("a.example", mdns.TypeA)
		r, err := x.Exchange(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if r.Id != q.Id || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "192.0.2.7" {
			t.Fatalf("DoH answer: %v", r)
		}
	}
	if len(dialed) != 1 || dialed[0] != "127.0.0.1:"+itoa(port) {
		t.Errorf("dialed %v, want the pinned address once (no lookup of doh.test, one pooled connection)", dialed)
	}
	if posts.Load() != 2 {
		t.Errorf("%d POSTs", posts.Load())
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestSequenceFirstSuccess(t *testing.T) {
	fail := &exchangerFunc{name: "fail", f: func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		return nil, errors.New("down")
	}}
	servfail := &exchangerFunc{name: "servfail", f: func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetRcode(q, mdns.RcodeServerFailure)
		return m, nil
	}}
	var n atomic.Int64
	ok := staticExchanger("ok", &n)
	s := NewSequence(fail, servfail, ok, staticExchanger("never", &n))
	r, err := s.Exchange(context.Background(), query("a.example", mdns.TypeA))
	if err != nil || len(r.Answer) != 1 || n.Load() != 1 {
		t.Fatalf("sequence: %v %v, %d asked", r, err, n.Load())
	}
	if s.String() != "fail, servfail, ok, never" {
		t.Errorf("String = %q", s.String())
	}
	if _, err := NewSequence(fail, fail).Exchange(context.Background(), query("a.example", mdns.TypeA)); err == nil {
		t.Error("all failing: no error")
	}
	if NewSequence(ok) != Exchanger(ok) {
		t.Error("a sequence of one is not the exchanger itself")
	}
}
