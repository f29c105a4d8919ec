package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// sniffTestHello is the first flight of a real crypto/tls client asking for serverName.
func sniffTestHello(t *testing.T, serverName string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 64<<10)
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := s.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return buf[:n]
}

func sniffTestGateway() *Gateway {
	return &Gateway{Sniff: NewSniffing(configs.Sniff{
		Enabled: true, Ports: []configs.PortRange{{From: 80, To: 80}, {From: 443, To: 443}},
		Timeout: configs.Duration(300 * time.Millisecond),
	})}
}

func TestSniffName(t *testing.T) {
	hello := sniffTestHello(t, "name.test")
	cases := []struct {
		name     string
		port     uint16
		send     func(c net.Conn)
		wantHost string
		wantN    int
		maxWait  time.Duration
		minWait  time.Duration
	}{
		{"tls in one segment", 443, func(c net.Conn) { c.Write(hello) }, "name.test", len(hello), 250 * time.Millisecond, 0},
		{"tls split across segments", 443, func(c net.Conn) {
			c.Write(hello[:3])
			time.Sleep(30 * time.Millisecond)
			c.Write(hello[3:100])
			time.Sleep(30 * time.Millisecond)
			c.Write(hello[100:])
		}, "name.test", len(hello), 280 * time.Millisecond, 0},
		{"http host", 80, func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")) }, "web.test", 34, 250 * time.Millisecond, 0},
		{"not tls nor http gives up at once", 443, func(c net.Conn) { c.Write([]byte("SSH-2.0-x\r\n")) }, "", 11, 250 * time.Millisecond, 0},
		{"silent client waits the timeout, no longer", 443, func(net.Conn) {}, "", 0, 800 * time.Millisecond, 250 * time.Millisecond},
		{"port not sniffed", 25, func(c net.Conn) { c.Write(hello) }, "", 0, 100 * time.Millisecond, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := testutil.TCPPair(t)
			go tc.send(client)
			f := route.Flow{Network: route.TCP, Dst: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), tc.port)}
			start := time.Now()
			got := sniffed(sniffTestGateway().sniffName(server, &f))
			took := time.Since(start)
			if f.Host != tc.wantHost || len(got) != tc.wantN {
				t.Fatalf("host %q and %d bytes, want %q and %d", f.Host, len(got), tc.wantHost, tc.wantN)
			}
			if took > tc.maxWait || took < tc.minWait {
				t.Fatalf("took %v, want between %v and %v", took, tc.minWait, tc.maxWait)
			}
			// The deadline is gone: a later read waits for data rather than failing.
			client.Write([]byte("x"))
			server.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := server.Read(make([]byte, 1)); err != nil {
				t.Fatalf("read after sniffing: %v", err)
			}
		})
	}
}

// The sniffed bytes reach the remote first and unchanged, followed by the rest of the stream;
// a direct flow with a sniffed name is dialed to its address, not the name.
func TestHandleReplaysSniffedBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	}()
	g := sniffTestGateway()
	g.Router = fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: upstream.Direct{}, Rule: "d"}
	client, server := testutil.TCPPair(t)
	dst := netip.MustParseAddrPort(ln.Addr().String())
	hello := sniffTestHello(t, "no-such-name.invalid")
	go func() {
		client.Write(hello[:10])
		time.Sleep(20 * time.Millisecond)
		client.Write(hello[10:])
		time.Sleep(20 * time.Millisecond)
		client.Write([]byte("after"))
		client.CloseWrite()
	}()
	f := route.Flow{Network: route.TCP, Dst: netip.AddrPortFrom(dst.Addr(), 443), Inbound: route.Redirect}
	replay := sniffed(g.sniffName(server, &f))
	if f.Host != "no-such-name.invalid" {
		t.Fatalf("host %q", f.Host)
	}
	f.Dst = dst // the test server's real port; the sniffed port was 443
	done := make(chan struct{})
	go func() { g.handle(context.Background(), server, f, nil, replay); close(done) }()
	select {
	case b := <-got:
		if want := append(bytes.Clone(hello), "after"...); !bytes.Equal(b, want) {
			t.Fatalf("remote got %d bytes, want %d (the hello and \"after\")", len(b), len(want))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("remote got nothing")
	}
	client.Close()
	<-done
}

// recordingUpstream records the addresses it is asked to dial and fails them.
type recordingUpstream struct{ dialed chan string }

func (u recordingUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	u.dialed <- address
	return nil, errors.New("recorded")
}
func (recordingUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, upstream.ErrUDPUnsupported
}
func (recordingUpstream) String() string { return "recording" }

// byNameRouter sends the names in direct to up as direct, everything else through proxy.
type byNameRouter struct {
	direct    string
	up, proxy upstream.Upstream
}

func (r byNameRouter) Route(_ context.Context, f route.Flow) route.Decision {
	if f.Host == r.direct {
		return route.Decision{Action: route.ActionDirect, Upstream: r.up, Rule: "name-direct"}
	}
	return route.Decision{Action: route.ActionProxy, Upstream: r.proxy, Rule: "proxy"}
}

// A sniffed name that alone makes a flow direct sends it to that name, not to the address its
// client chose: a made-up SNI cannot carry a flow direct to an arbitrary address. When the
// address alone goes direct too, the address is dialled as before.
func TestDirectByNameOnlyDialsTheName(t *testing.T) {
	up := recordingUpstream{make(chan string, 1)}
	g := &Gateway{Router: byNameRouter{direct: "bank.test", up: up, proxy: stubUpstream{"proxy"}}}
	f := route.Flow{Network: route.TCP, Dst: netip.MustParseAddrPort("198.51.100.9:443"), Host: "bank.test", Inbound: route.Redirect}
	g.Dial(context.Background(), f)
	if got := <-up.dialed; got != "bank.test:443" {
		t.Fatalf("dialled %s, want the name (the address alone is proxied)", got)
	}
	g.Router = fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: up, Rule: "all-direct"}
	g.Dial(context.Background(), f)
	if got := <-up.dialed; got != "198.51.100.9:443" {
		t.Fatalf("dialled %s, want the client's address (the address alone goes direct)", got)
	}
}

// A name sniffed from a captured flow is a claim, used for routing: a proxy upstream is asked
// for the address the client chose (curl -4, a hosts-file entry, a pinned IP), and for the
// name only with sniff.override. A name the client gave itself (SOCKS5 domain) is always sent.
func TestSniffedNameGoesUpstreamOnlyWithOverride(t *testing.T) {
	up := recordingUpstream{make(chan string, 1)}
	f := route.Flow{Network: route.TCP, Dst: netip.MustParseAddrPort("198.51.100.9:80"), Host: "wan.test", From: route.NameSniff, Inbound: route.Redirect}
	for _, tt := range []struct {
		override bool
		f        route.Flow
		want     string
	}{
		{false, f, "198.51.100.9:80"},
		{true, f, "wan.test:80"},
		{false, route.Flow{Network: route.TCP, Host: "wan.test", Port: 80, Inbound: route.SOCKS}, "wan.test:80"},
	} {
		g := &Gateway{Router: fixedRouter{Action: route.ActionProxy, Upstream: up, Rule: "all"}, Sniff: &Sniffing{Override: tt.override}}
		g.Dial(context.Background(), tt.f)
		if got := <-up.dialed; got != tt.want {
			t.Errorf("override %v, flow %+v: upstream asked for %s, want %s", tt.override, tt.f, got, tt.want)
		}
	}
}
