package socksclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
)

// fakeProxy returns a Dialer whose ProxyDial hands the client one end of a net.Pipe and runs
// serve on the other. serve's error fails the test; the server end is closed when serve returns.
func fakeProxy(t *testing.T, v Version, serve func(c net.Conn) error) (*Dialer, *atomic.Int32) {
	t.Helper()
	var dials atomic.Int32
	done := make(chan struct{})
	var started atomic.Bool
	d := &Dialer{
		Version: v,
		Address: "192.0.2.100:1080",
		ProxyDial: func(ctx context.Context, network, address string) (net.Conn, error) {
			if dials.Add(1) > 1 {
				return nil, errors.New("fake proxy dialed twice")
			}
			cli, srv := net.Pipe()
			started.Store(true)
			go func() {
				defer close(done)
				defer srv.Close()
				if err := serve(srv); err != nil {
					t.Errorf("fake proxy: %v", err)
				}
			}()
			return cli, nil
		},
	}
	t.Cleanup(func() {
		if started.Load() {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Error("fake proxy still running")
			}
		}
	})
	return d, &dials
}

// expect reads len(want) bytes and compares them.
func expect(c net.Conn, want []byte) error {
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read %d bytes: %w", len(want), err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got % x, want % x", got, want)
	}
	return nil
}

// expectSilence checks that the client sends nothing more for a while: it must wait for the
// server's answer instead of pipelining its next message.
func expectSilence(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	n, err := c.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() && n == 0 {
		return nil
	}
	return fmt.Errorf("client pipelined (read %d bytes, %v)", n, err)
}

// writeLast writes a server's final message. The client may close as soon as it has read what
// it needs (a failure code, a bad version), and a net.Pipe write then fails: that is not an error.
func writeLast(c net.Conn, b []byte) error {
	if _, err := c.Write(b); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		return err
	}
	return nil
}

func reply(code socks.ReplyCode, bnd socks.Addr) []byte {
	b, err := socks.AppendReply(nil, socks.Reply{Code: code, Addr: bnd})
	if err != nil {
		panic(err)
	}
	return b
}

// serveNoAuth answers a no-auth greeting and returns the request it then receives.
func serveNoAuth(c net.Conn) (socks.Request, error) {
	if err := expect(c, []byte{5, 1, 0}); err != nil {
		return socks.Request{}, fmt.Errorf("greeting: %w", err)
	}
	if err := expectSilence(c); err != nil {
		return socks.Request{}, err
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return socks.Request{}, err
	}
	return socks.ReadRequest(c)
}

// echoOnce reads 4 bytes and writes them back, proving the stream is clean after the handshake.
func echoOnce(c net.Conn) error {
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read payload: %w", err)
	}
	_, err := c.Write(b[:])
	return err
}

func checkEcho(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != "ping" {
		t.Fatalf("echo = %q, %v", b, err)
	}
}

func TestDialSOCKS5SendsEachAddressType(t *testing.T) {
	tests := []struct {
		address  string
		wantType socks.AddrType
		wantAddr string
		bnd      socks.Addr
	}{
		{"192.0.2.1:80", socks.AddrTypeIPv4, "192.0.2.1:80", socks.Addr{IP: mustIP("10.0.0.1"), Port: 4000}},
		{"[::ffff:192.0.2.1]:80", socks.AddrTypeIPv4, "192.0.2.1:80", socks.Addr{}},
		{"[2001:db8::1]:443", socks.AddrTypeIPv6, "[2001:db8::1]:443", socks.Addr{IP: mustIP("2001:db8::2"), Port: 1}},
		{"example.com:8080", socks.AddrTypeDomain, "example.com:8080", socks.Addr{Name: "relay.example", Port: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.address, func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
				req, err := serveNoAuth(c)
				if err != nil {
					return err
				}
				if req.Cmd != socks.CmdConnect || req.Addr.Type() != tt.wantType || req.Addr.String() != tt.wantAddr {
					return fmt.Errorf("request %v %v (type %d), want %s type %d", req.Cmd, req.Addr, req.Addr.Type(), tt.wantAddr, tt.wantType)
				}
				if _, err := c.Write(reply(socks.ReplySucceeded, tt.bnd)); err != nil {
					return err
				}
				return echoOnce(c)
			})
			c, err := d.DialContext(context.Background(), "tcp", tt.address)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			checkEcho(t, c)
		})
	}
}

func mustIP(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestDialSOCKS5ReplyCodesAreTypedErrors(t *testing.T) {
	for code := socks.ReplyCode(1); code <= 9; code++ {
		t.Run(code.String(), func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
				if _, err := serveNoAuth(c); err != nil {
					return err
				}
				return writeLast(c, reply(code, socks.Addr{}))
			})
			_, err := d.DialContext(context.Background(), "tcp", "example.com:80")
			var re *ReplyError
			if !errors.As(err, &re) || re.Code != code || re.Version != SOCKS5 {
				t.Fatalf("err = %v, want *ReplyError with code %d", err, code)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "socks connect" || oe.Net != "tcp" ||
				oe.Addr.String() != "example.com:80" || oe.Source.String() != "192.0.2.100:1080" {
				t.Fatalf("err = %#v, want *net.OpError socks connect tcp proxy->dst", err)
			}
			if !strings.Contains(err.Error(), code.String()) {
				t.Fatalf("error %q does not name the code", err)
			}
		})
	}
}

func TestDialSOCKS5UserPass(t *testing.T) {
	const user, pass = "alice", "correct horse"
	tests := []struct {
		name    string
		status  byte
		version byte
		wantErr error
	}{
		{"accepted", 0, 1, nil},
		{"accepted, reply version 5", 0, 5, nil},
		{"rejected", 1, 1, ErrAuthFailed},
		{"rejected with 0xff", 0xff, 1, ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
				if err := expect(c, []byte{5, 1, 2}); err != nil {
					return fmt.Errorf("greeting offers only username/password: %w", err)
				}
				if err := expectSilence(c); err != nil {
					return fmt.Errorf("credentials sent before the method reply: %w", err)
				}
				if _, err := c.Write([]byte{5, 2}); err != nil {
					return err
				}
				u, p, err := socks.ReadUserPassRequest(c)
				if err != nil || u != user || p != pass {
					return fmt.Errorf("credentials %q %q, %v", u, p, err)
				}
				if err := expectSilence(c); err != nil {
					return fmt.Errorf("request sent before the auth reply: %w", err)
				}
				if _, err := c.Write([]byte{tt.version, tt.status}); err != nil {
					return err
				}
				if tt.status != 0 {
					return nil
				}
				if _, err := socks.ReadRequest(c); err != nil {
					return err
				}
				if _, err := c.Write(reply(0, socks.Addr{})); err != nil {
					return err
				}
				return echoOnce(c)
			})
			d.Username, d.Password = user, pass
			c, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				checkEcho(t, c)
				c.Close()
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), pass) {
				t.Fatalf("error %q contains the password", err)
			}
		})
	}
}

func TestDialSOCKS5NoAcceptableMethods(t *testing.T) {
	d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
		if err := expect(c, []byte{5, 1, 0}); err != nil {
			return err
		}
		_, err := c.Write([]byte{5, 0xff})
		return err
	})
	_, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if !errors.Is(err, ErrNoAcceptableMethods) {
		t.Fatalf("err = %v, want ErrNoAcceptableMethods", err)
	}
}

// TestDialSOCKS5MalformedRepliesFail feeds broken server answers; each must be an error, never a
// panic or a hang.
func TestDialSOCKS5MalformedRepliesFail(t *testing.T) {
	tests := []struct {
		name   string
		method []byte // answer to the greeting
		reply  []byte // answer to the request (when the method is accepted)
		want   error  // nil: any error
	}{
		{"method reply wrong version", []byte{4, 0}, nil, ErrProtocol},
		{"method not offered", []byte{5, 2}, nil, ErrProtocol},
		{"close after greeting", nil, nil, io.ErrUnexpectedEOF},
		{"half a method reply", []byte{5}, nil, io.ErrUnexpectedEOF},
		{"reply wrong version", []byte{5, 0}, []byte{4, 0, 0, 1, 0, 0, 0, 0, 0, 0}, ErrProtocol},
		{"reply bad atyp", []byte{5, 0}, []byte{5, 0, 0, 7, 0, 0, 0, 0, 0, 0}, ErrProtocol},
		{"reply empty name", []byte{5, 0}, []byte{5, 0, 0, 3, 0, 0, 0}, ErrProtocol},
		{"reply huge name, short data", []byte{5, 0}, append([]byte{5, 0, 0, 3, 255}, "abc"...), io.ErrUnexpectedEOF},
		{"reply short ipv4", []byte{5, 0}, []byte{5, 0, 0, 1, 1, 2}, io.ErrUnexpectedEOF},
		{"reply short ipv6", []byte{5, 0}, []byte{5, 0, 0, 4, 1, 2, 3, 4, 5, 6, 7, 8}, io.ErrUnexpectedEOF},
		{"close before reply", []byte{5, 0}, []byte{}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
				if err := expect(c, []byte{5, 1, 0}); err != nil {
					return err
				}
				if tt.method == nil {
					return nil
				}
				if _, err := c.Write(tt.method); err != nil {
					return err
				}
				if tt.reply == nil {
					return nil
				}
				if _, err := socks.ReadRequest(c); err != nil {
					return err
				}
				return writeLast(c, tt.reply)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", "192.0.2.1:80")
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) {
				t.Fatalf("err %T is not a *net.OpError", err)
			}
		})
	}
}

func TestDialHonoursContext(t *testing.T) {
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			silent := make(chan struct{})
			d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
				// Read the greeting, then never answer.
				if err := expect(c, []byte{5, 1, 0}); err != nil {
					return err
				}
				<-silent
				return nil
			})
			defer close(silent)
			ctx, cancel := tt.ctx()
			defer cancel()
			start := time.Now()
			_, err := d.DialContext(ctx, "tcp", "192.0.2.1:80")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("returned after %v", el)
			}
		})
	}
}

func TestDialClearsDeadlineAfterSuccess(t *testing.T) {
	d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
		if _, err := serveNoAuth(c); err != nil {
			return err
		}
		if _, err := c.Write(reply(0, socks.Addr{})); err != nil {
			return err
		}
		return echoOnce(c)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", "192.0.2.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	time.Sleep(400 * time.Millisecond) // past the context's deadline
	checkEcho(t, c)
}

func TestDialSOCKS4(t *testing.T) {
	tests := []struct {
		name    string
		version Version
		address string
		want    []byte // the request the server must see
		code    socks.ReplyCode
	}{
		{"socks4 ipv4", SOCKS4, "192.0.2.1:80", []byte{4, 1, 0, 80, 192, 0, 2, 1, 'b', 'o', 'b', 0}, socks.Reply4Granted},
		{"socks4a name", SOCKS4A, "ex.org:443", []byte{4, 1, 1, 187, 0, 0, 0, 1, 'b', 'o', 'b', 0, 'e', 'x', '.', 'o', 'r', 'g', 0}, socks.Reply4Granted},
		{"socks4a ipv4 literal goes as socks4", SOCKS4A, "192.0.2.1:80", []byte{4, 1, 0, 80, 192, 0, 2, 1, 'b', 'o', 'b', 0}, socks.Reply4Granted},
		{"rejected", SOCKS4, "192.0.2.1:80", nil, socks.Reply4Rejected},
		{"identd unreachable", SOCKS4, "192.0.2.1:80", nil, socks.Reply4IdentUnreachable},
		{"user id mismatch", SOCKS4A, "ex.org:80", nil, socks.Reply4IdentMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := fakeProxy(t, tt.version, func(c net.Conn) error {
				req, err := socks.ReadRequest4(c)
				if err != nil {
					return err
				}
				if tt.want != nil {
					got, _ := socks.AppendRequest4(nil, req)
					if !bytes.Equal(got, tt.want) {
						return fmt.Errorf("request % x, want % x", got, tt.want)
					}
				}
				if _, err := c.Write(socks.AppendReply4(nil, socks.Reply4{Code: tt.code})); err != nil {
					return err
				}
				if tt.code != socks.Reply4Granted {
					return nil
				}
				return echoOnce(c)
			})
			d.Username = "bob"
			c, err := d.DialContext(context.Background(), "tcp", tt.address)
			if tt.code == socks.Reply4Granted {
				if err != nil {
					t.Fatal(err)
				}
				checkEcho(t, c)
				c.Close()
				return
			}
			var re *ReplyError
			if !errors.As(err, &re) || re.Code != tt.code {
				t.Fatalf("err = %v, want *ReplyError %v", err, tt.code)
			}
		})
	}
}

func TestDialSOCKS4RefusesWhatItCannotCarry(t *testing.T) {
	tests := []struct {
		version Version
		address string
	}{
		{SOCKS4, "example.com:80"},
		{SOCKS4, "[2001:db8::1]:80"},
		{SOCKS4A, "[2001:db8::1]:80"},
	}
	for _, tt := range tests {
		t.Run(tt.version.String()+" "+tt.address, func(t *testing.T) {
			d, dials := fakeProxy(t, tt.version, func(c net.Conn) error { return nil })
			_, err := d.DialContext(context.Background(), "tcp", tt.address)
			if !errors.Is(err, ErrUnsupportedDestination) {
				t.Fatalf("err = %v, want ErrUnsupportedDestination", err)
			}
			if dials.Load() != 0 {
				t.Fatal("the proxy was dialed for a destination it cannot carry")
			}
		})
	}
}

func TestDialSOCKS4MalformedReply(t *testing.T) {
	d, _ := fakeProxy(t, SOCKS4, func(c net.Conn) error {
		if _, err := socks.ReadRequest4(c); err != nil {
			return err
		}
		return writeLast(c, []byte{5, 0x5a, 0, 0, 0, 0, 0, 0})
	})
	_, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func TestDialRejectsBadInput(t *testing.T) {
	d, dials := fakeProxy(t, SOCKS5, func(c net.Conn) error { return nil })
	for _, tc := range []struct{ network, address string }{
		{"udp", "192.0.2.1:53"},
		{"tcp", "no-port"},
		{"tcp", strings.Repeat("a", 256) + ":80"},
	} {
		if _, err := d.DialContext(context.Background(), tc.network, tc.address); err == nil {
			t.Errorf("DialContext(%q, %q) succeeded", tc.network, tc.address)
		}
	}
	if dials.Load() != 0 {
		t.Fatal("proxy dialed for bad input")
	}
}

func TestDialReportsProxyDialFailure(t *testing.T) {
	boom := errors.New("no route")
	d := &Dialer{Address: "192.0.2.100:1080", ProxyDial: func(context.Context, string, string) (net.Conn, error) {
		return nil, boom
	}}
	_, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

func TestStringNeverShowsThePassword(t *testing.T) {
	tests := []struct {
		d    Dialer
		want string
	}{
		{Dialer{Address: "10.0.0.2:1080", Username: "user", Password: "hunter2"}, "socks5://user@10.0.0.2:1080"},
		{Dialer{Version: SOCKS4A, Address: "[2001:db8::2]:1080"}, "socks4a://[2001:db8::2]:1080"},
		{Dialer{Version: SOCKS4, Address: "proxy:1080", Username: "id"}, "socks4://id@proxy:1080"},
	}
	for _, tt := range tests {
		if got := tt.d.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestFromURL(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		pass    string
		wantErr bool
	}{
		{"socks5://u:p%40ss@10.0.0.2:1080", "socks5://u@10.0.0.2:1080", "p@ss", false},
		{"socks5h://h", "socks5://h:1080", "", false},
		{"socks4a://[::1]:9050", "socks4a://[::1]:9050", "", false},
		{"socks4://id@h:1", "socks4://id@h:1", "", false},
		{"http://h:1", "", "", true},
		{"socks5://:1080", "", "", true},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		d, err := FromURL(u)
		if (err != nil) != tt.wantErr {
			t.Errorf("FromURL(%q) err = %v", tt.in, err)
			continue
		}
		if err == nil && (d.String() != tt.want || d.Password != tt.pass) {
			t.Errorf("FromURL(%q) = %s (password %q), want %s (%q)", tt.in, d, d.Password, tt.want, tt.pass)
		}
	}
}
