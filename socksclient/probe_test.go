package socksclient

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
)

// The probe's bytes: a no-auth greeting and a CONNECT to 0.0.0.0:0, in one write.
func probeBytes() []byte {
	b, _ := socks.AppendGreeting(nil, socks.MethodNoAuth)
	b, _ = socks.AppendRequest(b, socks.Request{Cmd: socks.CmdConnect, Addr: probeTarget})
	return b
}

func TestProbePipelining(t *testing.T) {
	tests := []struct {
		name    string
		serve   func(c net.Conn) error
		want    bool
		wantErr bool
	}{
		{"answers the request, even with a refusal", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			if _, err := c.Write([]byte{5, 0}); err != nil {
				return err
			}
			return writeLast(c, reply(socks.ReplyConnectionRefused, socks.Addr{}))
		}, true, false},
		{"answers the greeting only, then waits (microsocks)", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			if _, err := c.Write([]byte{5, 0}); err != nil {
				return err
			}
			var b [1]byte
			c.Read(b[:]) // until the prober gives up and closes
			return nil
		}, false, false},
		{"closes after the greeting", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			return writeLast(c, []byte{5, 0})
		}, false, false},
		{"answers the request with garbage", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			return writeLast(c, []byte{5, 0, 4, 0, 0, 9, 9, 9, 9, 9})
		}, false, false},
		{"refuses the method: not asked", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			return writeLast(c, []byte{5, byte(socks.MethodNoAcceptable)})
		}, false, true},
		{"not a SOCKS5 server: not asked", func(c net.Conn) error {
			if err := expect(c, probeBytes()); err != nil {
				return err
			}
			return writeLast(c, []byte("HTTP/1.0 400 Bad Request\r\n\r\n"))
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, tt.serve)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			got, err := d.ProbePipelining(ctx)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Fatalf("ProbePipelining = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestProbePipeliningOnlyWhereItApplies(t *testing.T) {
	for _, d := range []*Dialer{
		{Version: SOCKS4}, {Version: SOCKS4A}, {Version: SOCKS5, Username: "u", Password: "p"},
	} {
		d.ProxyDial = func(context.Context, string, string) (net.Conn, error) {
			t.Fatalf("%v dialed the proxy to probe", d)
			return nil, nil
		}
		if ok, err := d.ProbePipelining(context.Background()); ok || err != nil {
			t.Fatalf("%v: ProbePipelining = %v, %v; want false, nil", d, ok, err)
		}
	}
}

func TestProbePipeliningUnreachableProxy(t *testing.T) {
	refused := errors.New("connection refused")
	d := &Dialer{Version: SOCKS5, Address: "192.0.2.1:1080", ProxyDial: func(context.Context, string, string) (net.Conn, error) {
		return nil, refused
	}}
	if ok, err := d.ProbePipelining(context.Background()); ok || !errors.Is(err, refused) {
		t.Fatalf("ProbePipelining = %v, %v; want false, the dial error", ok, err)
	}
}

// A pipelined request answered only up to the greeting is ErrPipelinedUnanswered, whether the
// server then closes or stays silent until the dial's deadline; a refusal, or the same silence
// without pipelining, is not.
func TestDialReportsPipelinedRequestUnanswered(t *testing.T) {
	silent := func(c net.Conn) error {
		var b [512]byte
		if _, err := c.Read(b[:]); err != nil {
			return err
		}
		if _, err := c.Write([]byte{5, 0}); err != nil {
			return err
		}
		c.Read(b[:]) // until the client gives up
		return nil
	}
	closes := func(c net.Conn) error {
		var b [512]byte
		if _, err := c.Read(b[:]); err != nil {
			return err
		}
		return writeLast(c, []byte{5, 0})
	}
	refuses := func(c net.Conn) error {
		var b [512]byte
		if _, err := c.Read(b[:]); err != nil {
			return err
		}
		return writeLast(c, append([]byte{5, 0}, reply(socks.ReplyConnectionRefused, socks.Addr{})...))
	}
	tests := []struct {
		name     string
		pipeline bool
		serve    func(net.Conn) error
		want     bool
	}{
		{"pipelined, silent", true, silent, true},
		{"pipelined, closes", true, closes, true},
		{"pipelined, refused", true, refuses, false},
		{"not pipelined, closes", false, func(c net.Conn) error {
			if err := expect(c, []byte{5, 1, 0}); err != nil {
				return err
			}
			return writeLast(c, []byte{5, 0})
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := fakeProxy(t, SOCKS5, tt.serve)
			d.Pipeline = tt.pipeline
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := d.DialContext(ctx, "tcp", "192.0.2.1:80")
			if err == nil {
				t.Fatal("dial succeeded")
			}
			if got := errors.Is(err, ErrPipelinedUnanswered); got != tt.want {
				t.Fatalf("errors.Is(%v, ErrPipelinedUnanswered) = %v, want %v", err, got, tt.want)
			}
		})
	}
}
