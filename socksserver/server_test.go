package socksserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
)

// fakeTunneler records targets; Tunnel answers with err and, on success, echoes the client.
type fakeTunneler struct {
	mu      sync.Mutex
	targets []Target
	err     error
	sent    [][]byte // datagrams the UDP session was asked to send
	sentTo  []Target // and their targets
}

func (f *fakeTunneler) Tunnel(ctx context.Context, c net.Conn, t Target, reply func(error) error) {
	defer c.Close()
	f.mu.Lock()
	f.targets = append(f.targets, t)
	err := f.err
	f.mu.Unlock()
	if reply(err) != nil || err != nil {
		return
	}
	io.Copy(c, c)
}

func (f *fakeTunneler) OpenUDP(ctx context.Context, src netip.AddrPort, deliver func([]byte, socks.Addr)) (UDPSession, error) {
	return &echoSession{f: f, deliver: deliver}, nil
}

// echoSession sends every datagram straight back, as if from its destination.
type echoSession struct {
	f       *fakeTunneler
	deliver func([]byte, socks.Addr)
}

func (s *echoSession) Send(ctx context.Context, p []byte, t Target) error {
	s.f.mu.Lock()
	s.f.sent = append(s.f.sent, append([]byte(nil), p...))
	s.f.sentTo = append(s.f.sentTo, t)
	s.f.mu.Unlock()
	from := socks.Addr{Name: t.Host, IP: t.Addr.Addr(), Port: t.Port}
	s.deliver(p, from)
	return nil
}

func (s *echoSession) Close() error { return nil }

func (f *fakeTunneler) last() Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.targets) == 0 {
		return Target{}
	}
	return f.targets[len(f.targets)-1]
}

// serve runs s on a loopback listener and returns its address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.ServeConn(context.Background(), c)
		}
	}()
	return ln.Addr().String()
}

func TestConnectEveryVersionAndAddressType(t *testing.T) {
	ft := &fakeTunneler{}
	addr := serve(t, &Server{Tunneler: ft})
	tests := []struct {
		name    string
		version socksclient.Version
		dst     string
		want    Target
	}{
		{"socks5 ipv4", socksclient.SOCKS5, "192.0.2.1:80", Target{Addr: netip.MustParseAddrPort("192.0.2.1:80"), Port: 80}},
		{"socks5 ipv6", socksclient.SOCKS5, "[2001:db8::1]:443", Target{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Port: 443}},
		{"socks5 name", socksclient.SOCKS5, "example.com:8080", Target{Host: "example.com", Port: 8080}},
		{"socks4", socksclient.SOCKS4, "192.0.2.9:22", Target{Addr: netip.MustParseAddrPort("192.0.2.9:22"), Port: 22}},
		{"socks4a name", socksclient.SOCKS4A, "web.test:80", Target{Host: "web.test", Port: 80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &socksclient.Dialer{Version: tt.version, Address: addr}
			c, err := d.DialContext(context.Background(), "tcp", tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo: %q %v", buf, err)
			}
			got := ft.last()
			got.Src = netip.AddrPort{}
			if got != tt.want {
				t.Fatalf("target %+v, want %+v", got, tt.want)
			}
		})
	}
}

// Bytes a client sends right behind its request reach the flow first, in order.
func TestConnectKeepsOptimisticData(t *testing.T) {
	ft := &fakeTunneler{}
	addr := serve(t, &Server{Tunneler: ft})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req, _ := socks.AppendRequest4(nil, socks.Request4{Cmd: socks.CmdConnect, IP: netip.MustParseAddr("192.0.2.1"), Port: 80})
	c.Write(append(req, "early"...))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	rep, err := socks.ReadReply4(c)
	if err != nil || rep.Code != socks.Reply4Granted {
		t.Fatalf("reply %+v %v", rep, err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "early" {
		t.Fatalf("echo %q %v", buf, err)
	}
}

func TestUsernamePassword(t *testing.T) {
	ft := &fakeTunneler{}
	auth := func(u, p string) bool { return u == "alice" && p == "pw" }
	addr := serve(t, &Server{Tunneler: ft, Authenticate: auth})
	dial := func(v socksclient.Version, user, pass string) error {
		d := &socksclient.Dialer{Version: v, Address: addr, Username: user, Password: pass}
		c, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(socksclient.SOCKS5, "alice", "pw"); err != nil {
		t.Fatalf("right credentials: %v", err)
	}
	if err := dial(socksclient.SOCKS5, "alice", "nope"); !errors.Is(err, socksclient.ErrAuthFailed) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := dial(socksclient.SOCKS5, "", ""); !errors.Is(err, socksclient.ErrNoAcceptableMethods) {
		t.Fatalf("no credentials: %v", err)
	}
	var re *socksclient.ReplyError
	if err := dial(socksclient.SOCKS4, "alice", ""); !errors.As(err, &re) || re.Code != socks.Reply4Rejected {
		t.Fatalf("socks4 with users set: %v", err)
	}
}

// The user a client authenticated as goes with each of its targets, CONNECT and UDP
// datagrams alike, for the rules' user matcher.
func TestTargetsCarryTheAuthenticatedUser(t *testing.T) {
	ft := &fakeTunneler{}
	auth := func(u, p string) bool { return (u == "alice" || u == "bob") && p == "pw" }
	addr := serve(t, &Server{Tunneler: ft, Authenticate: auth})
	for _, user := range []string{"alice", "bob"} {
		d := &socksclient.Dialer{Version: socksclient.SOCKS5, Address: addr, Username: user, Password: "pw"}
		c, err := d.DialContext(context.Background(), "tcp", "example.com:80")
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := ft.last(); got.User != user || got.Host != "example.com" {
			t.Errorf("target %+v, want user %s", got, user)
		}
		pc, err := d.ListenPacket(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.WriteTo([]byte("q"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		if _, _, err := pc.ReadFrom(buf); err != nil {
			t.Fatal(err)
		}
		pc.Close()
		ft.mu.Lock()
		last := ft.sentTo[len(ft.sentTo)-1]
		ft.mu.Unlock()
		if last.User != user {
			t.Errorf("datagram target %+v, want user %s", last, user)
		}
	}
	// Without authentication there is no user.
	ft2 := &fakeTunneler{}
	d := &socksclient.Dialer{Version: socksclient.SOCKS5, Address: serve(t, &Server{Tunneler: ft2})}
	if c, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80"); err == nil {
		c.Close()
	}
	if got := ft2.last(); got.User != "" || !got.Addr.IsValid() {
		t.Errorf("unauthenticated target %+v", got)
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name    string
		srv     *Server
		version socksclient.Version
		want    socks.ReplyCode
	}{
		{"blocked by rule", &Server{Tunneler: &fakeTunneler{err: fmt.Errorf("x: %w", ErrNotAllowed)}}, socksclient.SOCKS5, socks.ReplyNotAllowed},
		{"blocked by rule, socks4", &Server{Tunneler: &fakeTunneler{err: ErrNotAllowed}}, socksclient.SOCKS4, socks.Reply4Rejected},
		{"refused upstream", &Server{Tunneler: &fakeTunneler{err: syscall.ECONNREFUSED}}, socksclient.SOCKS5, socks.ReplyConnectionRefused},
		{"acl", &Server{Tunneler: &fakeTunneler{}, Allow: func(netip.Addr) bool { return false }}, socksclient.SOCKS5, socks.ReplyNotAllowed},
		{"acl, socks4", &Server{Tunneler: &fakeTunneler{}, Allow: func(netip.Addr) bool { return false }}, socksclient.SOCKS4, socks.Reply4Rejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &socksclient.Dialer{Version: tt.version, Address: serve(t, tt.srv)}
			_, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
			var re *socksclient.ReplyError
			if !errors.As(err, &re) || re.Code != tt.want {
				t.Fatalf("err %v, want reply %v", err, tt.want)
			}
		})
	}
}

func TestBindIsNotSupported(t *testing.T) {
	addr := serve(t, &Server{Tunneler: &fakeTunneler{}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5, 1, 0})
	socks.ReadMethodSelection(c)
	req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdBind, Addr: socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1}})
	c.Write(req)
	rep, err := socks.ReadReply(c)
	if err != nil || rep.Code != socks.ReplyCommandNotSupported {
		t.Fatalf("reply %+v %v", rep, err)
	}
}

func TestReplyCodeMapping(t *testing.T) {
	tests := []struct {
		err  error
		want socks.ReplyCode
	}{
		{nil, socks.ReplySucceeded},
		{fmt.Errorf("rule x: %w", ErrNotAllowed), socks.ReplyNotAllowed},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, socks.ReplyConnectionRefused},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}, socks.ReplyNetworkUnreachable},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, socks.ReplyHostUnreachable},
		{context.DeadlineExceeded, socks.ReplyHostUnreachable},
		{&net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, socks.ReplyHostUnreachable},
		{&net.OpError{Op: "socks connect", Err: &socksclient.ReplyError{Version: socksclient.SOCKS5, Code: socks.ReplyTTLExpired}}, socks.ReplyTTLExpired},
		{&socksclient.ReplyError{Version: socksclient.SOCKS4, Code: socks.Reply4Rejected}, socks.ReplyGeneralFailure},
		{errors.New("anything"), socks.ReplyGeneralFailure},
	}
	for _, tt := range tests {
		if got := ReplyCode(tt.err); got != tt.want {
			t.Errorf("ReplyCode(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// A client that sends nothing, or too little, is closed after the handshake timeout.
func TestHandshakeTimeout(t *testing.T) {
	var reported sync.WaitGroup
	reported.Add(2)
	addr := serve(t, &Server{Tunneler: &fakeTunneler{}, HandshakeTimeout: 200 * time.Millisecond,
		ErrorLog: func(netip.AddrPort, error) { reported.Done() }})
	for _, sent := range [][]byte{nil, {5, 1}} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(sent)
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("closed after %v", d)
		}
	}
	reported.Wait()
}

// UDP ASSOCIATE: datagrams from the client come back with the SOCKS5 header of their source;
// fragments and datagrams from another port than the one declared are dropped and counted;
// the association ends with its control connection.
func TestUDPAssociate(t *testing.T) {
	ft := &fakeTunneler{}
	s := &Server{Tunneler: ft}
	addr := serve(t, s)
	client, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	stranger, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer stranger.Close()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{5, 1, 0})
	socks.ReadMethodSelection(c)
	declared := socks.AddrFromAddrPort(client.LocalAddr().(*net.UDPAddr).AddrPort())
	req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: declared})
	c.Write(req)
	rep, err := socks.ReadReply(c)
	if err != nil || rep.Code != socks.ReplySucceeded {
		t.Fatalf("reply %+v %v", rep, err)
	}
	relay, _ := rep.Addr.AddrPort()
	if relay.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("relay on %v, want the control connection's local address", relay)
	}
	to := net.UDPAddrFromAddrPort(relay)
	dst := socks.Addr{Name: "dns.test", Port: 53}
	frag, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Frag: 1, Addr: dst})
	client.WriteTo(append(frag, "frag"...), to)
	whole, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: dst})
	stranger.WriteTo(append(whole, "stranger"...), to)
	payload := bytes.Repeat([]byte{0xab}, 512)
	client.WriteTo(append(whole, payload...), to)

	buf := make([]byte, 2048)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := client.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	h, hl, err := socks.ParseUDPHeader(buf[:n])
	if err != nil || h.Addr != dst || !bytes.Equal(buf[hl:n], payload) {
		t.Fatalf("reply from %v, %d bytes, %v", h.Addr, n-hl, err)
	}
	st := s.Stats()
	if st.Fragmented != 1 || st.Foreign != 1 {
		t.Fatalf("stats %+v, want one fragment and one foreign datagram dropped", st)
	}
	ft.mu.Lock()
	if len(ft.sent) != 1 {
		t.Fatalf("%d datagrams sent upstream, want 1", len(ft.sent))
	}
	ft.mu.Unlock()

	c.Close()
	time.Sleep(100 * time.Millisecond)
	client.WriteTo(append(whole, "late"...), to)
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := client.ReadFrom(buf); err == nil {
		t.Fatal("the relay still answers after the control connection closed")
	}
}

// A malformed greeting, request or SOCKS4 request gets the protocol's failure reply before the
// close; a truncated one (EOF) just the close.
func TestMalformedRequestsGetFailureReply(t *testing.T) {
	addr := serve(t, &Server{Tunneler: &fakeTunneler{}, HandshakeTimeout: 2 * time.Second})
	long := bytes.Repeat([]byte("x"), 300)
	tests := []struct {
		name       string
		send, want []byte
	}{
		{"greeting without methods", []byte{5, 0}, []byte{5, 0xff}},
		{"request version 4", []byte{5, 1, 0, 4, 1, 0, 1, 192, 0, 2, 1, 0, 80}, []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"request empty name", []byte{5, 1, 0, 5, 1, 0, 3, 0, 0, 80}, []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks4 user id too long", append([]byte{4, 1, 0, 80, 192, 0, 2, 1}, long...), []byte{0, 0x5b, 0, 0, 0, 0, 0, 0}},
		{"socks4a name too long", append([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, long...), []byte{0, 0x5b, 0, 0, 0, 0, 0, 0}},
		{"truncated request", []byte{5, 1, 0, 5, 1, 0, 1, 192}, []byte{5, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("got % x (%v), want % x then a close", got, err, tt.want)
			}
		})
	}
}

// An association is bound to one client socket: the port the client declared, or, when it
// declared port 0 (it does not know it yet), the port of its first datagram. Datagrams from
// another port of the same host are dropped and counted as foreign, and never steal the
// replies (dante gives them to the first socket too).
func TestUDPAssociationBindsOneClientPort(t *testing.T) {
	for _, declare := range []string{"zero", "port"} {
		t.Run(declare, func(t *testing.T) {
			ft := &fakeTunneler{}
			s := &Server{Tunneler: ft}
			addr := serve(t, s)
			first, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			second, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer second.Close()

			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte{5, 1, 0})
			socks.ReadMethodSelection(c)
			declared := socks.Addr{IP: netip.IPv4Unspecified()}
			if declare == "port" {
				declared = socks.AddrFromAddrPort(first.LocalAddr().(*net.UDPAddr).AddrPort())
			}
			req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: declared})
			c.Write(req)
			rep, err := socks.ReadReply(c)
			if err != nil || rep.Code != socks.ReplySucceeded {
				t.Fatalf("reply %+v %v", rep, err)
			}
			relay, _ := rep.Addr.AddrPort()
			to := net.UDPAddrFromAddrPort(relay)
			hdr, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: socks.Addr{Name: "echo.test", Port: 7}})
			buf := make([]byte, 2048)
			read := func(pc net.PacketConn, wait time.Duration) (string, error) {
				pc.SetReadDeadline(time.Now().Add(wait))
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return "", err
				}
				_, hl, err := socks.ParseUDPHeader(buf[:n])
				if err != nil {
					return "", err
				}
				return string(buf[hl:n]), nil
			}

			first.WriteTo(append(hdr, "one"...), to)
			if got, err := read(first, 5*time.Second); got != "one" {
				t.Fatalf("first socket got %q, %v; want its echo", got, err)
			}
			second.WriteTo(append(hdr, "intruder"...), to)
			first.WriteTo(append(hdr, "two"...), to)
			if got, err := read(first, 5*time.Second); got != "two" {
				t.Fatalf("first socket got %q, %v; want its second echo", got, err)
			}
			// The relay read the second socket's datagram before the first socket's "two",
			// and the fake session answers at once: had it been relayed, its echo would
			// already wait in the second socket.
			if got, err := read(second, 100*time.Millisecond); err == nil {
				t.Fatalf("the second socket of the client's host got %q", got)
			}
			if st := s.Stats(); st.Foreign != 1 {
				t.Fatalf("stats %+v, want the second socket's datagram counted foreign", st)
			}
			ft.mu.Lock()
			defer ft.mu.Unlock()
			if len(ft.sent) != 2 {
				t.Fatalf("%d datagrams sent on, want the first socket's 2", len(ft.sent))
			}
		})
	}
}

// Servers given the same UDPCounters count into them: the counts survive a server's
// replacement (a reload), and Stats of each reads them.
func TestUDPCountersSharedAcrossServers(t *testing.T) {
	counters := &UDPCounters{}
	var servers []*Server
	for range 2 {
		s := &Server{Tunneler: &fakeTunneler{}, Counters: counters}
		servers = append(servers, s)
		c, err := net.Dial("tcp", serve(t, s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{5, 1, 0})
		socks.ReadMethodSelection(c)
		req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: socks.Addr{IP: netip.IPv4Unspecified()}})
		c.Write(req)
		rep, err := socks.ReadReply(c)
		if err != nil || rep.Code != socks.ReplySucceeded {
			t.Fatalf("reply %+v %v", rep, err)
		}
		relay, _ := rep.Addr.AddrPort()
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		dst := socks.Addr{Name: "echo.test", Port: 7}
		frag, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Frag: 1, Addr: dst})
		pc.WriteTo(append(frag, "frag"...), net.UDPAddrFromAddrPort(relay))
		pc.WriteTo([]byte{0, 0}, net.UDPAddrFromAddrPort(relay)) // malformed
		whole, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: dst})
		pc.WriteTo(append(whole, "whole"...), net.UDPAddrFromAddrPort(relay))
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := pc.ReadFrom(make([]byte, 512)); err != nil { // read after the two drops
			t.Fatal(err)
		}
	}
	want := Stats{Fragmented: 2, Malformed: 2}
	if got := counters.Load(); got != want {
		t.Fatalf("shared counters %+v, want %+v", got, want)
	}
	for i, s := range servers {
		if got := s.Stats(); got != want {
			t.Fatalf("server %d: Stats %+v, want %+v", i, got, want)
		}
	}
}

// A SOCKS5 client that does not authenticate is reported as an authentication failure with
// its reason: the methods it offered when none is acceptable, the username (never the
// password) when the credentials are wrong.
func TestAuthFailuresAreReportedWithTheirReason(t *testing.T) {
	const secret = "Sekr1t-pass"
	tests := []struct {
		name    string
		auth    bool
		send    []byte
		want    []string // in the error's text
		offered []socks.Method
	}{
		{"no acceptable method, users set", true, []byte{5, 2, 0, 1},
			[]string{"no acceptable method", "no authentication required, GSSAPI", "want username/password"},
			[]socks.Method{socks.MethodNoAuth, socks.MethodGSSAPI}},
		{"no acceptable method, no users", false, []byte{5, 1, 2},
			[]string{"no acceptable method", "offered: username/password", "want no authentication required"},
			[]socks.Method{socks.MethodUserPass}},
		{"wrong password", true, append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', byte(len(secret))}, secret...),
			[]string{"wrong username or password", `user "alice"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := make(chan error, 1)
			s := &Server{Tunneler: &fakeTunneler{}, ErrorLog: func(_ netip.AddrPort, err error) { errs <- err }}
			if tt.auth {
				s.Authenticate = func(u, p string) bool { return u == "alice" && p == "pw" }
			}
			c, err := net.Dial("tcp", serve(t, s))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			var err2 error
			select {
			case err2 = <-errs:
			case <-time.After(10 * time.Second):
				t.Fatal("nothing reported")
			}
			var ae *AuthError
			if !errors.Is(err2, ErrAuthFailed) || !errors.As(err2, &ae) {
				t.Fatalf("reported %v (%T), want an *AuthError matching ErrAuthFailed", err2, err2)
			}
			for _, w := range tt.want {
				if !strings.Contains(err2.Error(), w) {
					t.Errorf("%q lacks %q", err2, w)
				}
			}
			if strings.Contains(err2.Error(), secret) || strings.Contains(fmt.Sprintf("%+v", ae), secret) {
				t.Errorf("the password is in %q", err2)
			}
			if !slices.Equal(ae.Offered, tt.offered) {
				t.Errorf("offered %v, want %v", ae.Offered, tt.offered)
			}
		})
	}
}

// A destination that names no remote host is refused before it reaches the Tunneler: the
// unspecified address (a dial to it reaches this host), port 0, and an IP literal with a zone
// sent as a name (SOCKS cannot carry a zone; as a name it would escape the rules' address
// matchers, and Go's dialer still connects to the address).
func TestConnectRefusesDestinationsNamingNoRemote(t *testing.T) {
	tests := []struct {
		name string
		req  []byte
		want []byte // the reply
	}{
		{"socks5 0.0.0.0", []byte{5, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 80}, []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks5 ::", append(append([]byte{5, 1, 0, 5, 1, 0, 4}, make([]byte, 16)...), 0, 80), []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks5 port 0", []byte{5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 1, 0, 0}, []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks5 name port 0", []byte{5, 1, 0, 5, 1, 0, 3, 3, 'a', '.', 'b', 0, 0}, []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks5 name 0.0.0.0", append(append([]byte{5, 1, 0, 5, 1, 0, 3, 7}, "0.0.0.0"...), 0, 80), []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks5 zoned mapped name", append(append([]byte{5, 1, 0, 5, 1, 0, 3, 20}, "::ffff:192.0.2.1%eth"...), 0, 80), []byte{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"socks4 0.0.0.0", []byte{4, 1, 0, 80, 0, 0, 0, 0, 0}, []byte{0, 0x5b, 0, 0, 0, 0, 0, 0}},
		{"socks4 port 0", []byte{4, 1, 0, 0, 192, 0, 2, 1, 0}, []byte{0, 0x5b, 0, 0, 0, 0, 0, 0}},
		{"socks4a zoned name", append(append([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, "fe80::1%lo"...), 0), []byte{0, 0x5b, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ft := &fakeTunneler{}
			errs := make(chan error, 1)
			addr := serve(t, &Server{Tunneler: ft, ErrorLog: func(_ netip.AddrPort, err error) { errs <- err }})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.req)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, len(tt.want))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, tt.want) {
				t.Fatalf("got % x (%v), want % x", got, err, tt.want)
			}
			select {
			case err := <-errs:
				if !errors.Is(err, ErrBadDestination) {
					t.Fatalf("reported %v, want ErrBadDestination", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("nothing reported")
			}
			if got := ft.last(); got != (Target{}) {
				t.Fatalf("the Tunneler was handed %v", got)
			}
		})
	}
}

// A datagram to a destination naming no remote host is dropped as malformed; the association
// goes on.
func TestUDPDropsDatagramsToNoRemote(t *testing.T) {
	ft := &fakeTunneler{}
	s := &Server{Tunneler: ft}
	c, err := net.Dial("tcp", serve(t, s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5, 1, 0})
	socks.ReadMethodSelection(c)
	req, _ := socks.AppendRequest(nil, socks.Request{Cmd: socks.CmdUDPAssociate, Addr: socks.Addr{IP: netip.IPv4Unspecified()}})
	c.Write(req)
	rep, err := socks.ReadReply(c)
	if err != nil || rep.Code != socks.ReplySucceeded {
		t.Fatalf("reply %+v %v", rep, err)
	}
	relay, _ := rep.Addr.AddrPort()
	to := net.UDPAddrFromAddrPort(relay)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, dst := range []socks.Addr{
		{IP: netip.IPv4Unspecified(), Port: 53},
		{IP: netip.IPv6Unspecified(), Port: 53},
		{IP: netip.MustParseAddr("192.0.2.1"), Port: 0},
		{Name: "::ffff:192.0.2.1%eth0", Port: 53},
	} {
		b, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: dst})
		pc.WriteTo(append(b, "x"...), to)
	}
	b, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}})
	pc.WriteTo(append(b, "ok"...), to)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, hl, err := socks.ParseUDPHeader(buf[:n]); err != nil || string(buf[hl:n]) != "ok" {
		t.Fatalf("first echo %q, %v; want only the valid datagram's", buf[:n], err)
	}
	if st := s.Stats(); st.Malformed != 4 {
		t.Fatalf("stats %+v, want 4 malformed", st)
	}
}

// A client that trickles its request, one byte well within the handshake timeout after
// another, is still cut off when the timeout ends: the deadline covers the whole handshake,
// not each read.
func TestHandshakeTimeoutCoversATricklingClient(t *testing.T) {
	errs := make(chan error, 1)
	addr := serve(t, &Server{Tunneler: &fakeTunneler{}, HandshakeTimeout: 300 * time.Millisecond,
		ErrorLog: func(_ netip.AddrPort, err error) { errs <- err }})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A SOCKS4 request whose user id, 255 bytes one every 20 ms, takes about 5 s to send;
	// a per-read deadline would let all of it in.
	c.Write([]byte{4, 1, 0, 80, 192, 0, 2, 1})
	go func() {
		for range 255 {
			if _, err := c.Write([]byte{'x'}); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Write([]byte{0})
	}()
	select {
	case err := <-errs:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("reported %v, want the handshake deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the trickling client was never cut off")
	}
}
