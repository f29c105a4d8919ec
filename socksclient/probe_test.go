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
