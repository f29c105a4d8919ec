package socksclient

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
)

func TestDialSOCKS5PipelineSendsGreetingAndRequestTogether(t *testing.T) {
	dst := socks.Addr{IP: mustIP("192.0.2.1"), Port: 80}
	want, _ := socks.AppendGreeting(nil, socks.MethodNoAuth)
	want, _ = socks.AppendRequest(want, socks.Request{Cmd: socks.CmdConnect, Addr: dst})
	d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
		// Nothing is answered before the whole request has arrived.
		if err := expect(c, want); err != nil {
			return fmt.Errorf("pipelined greeting and request: %w", err)
		}
		if _, err := c.Write([]byte{5, 0}); err != nil {
			return err
		}
		if _, err := c.Write(reply(socks.ReplySucceeded, socks.Addr{})); err != nil {
			return err
		}
		return echoOnce(c)
	})
	d.Pipeline = true
	c, err := d.DialContext(context.Background(), "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkEcho(t, c)
}

func TestDialSOCKS5PipelineNeverSendsCredentialsEarly(t *testing.T) {
	d, _ := fakeProxy(t, SOCKS5, func(c net.Conn) error {
		if err := expect(c, []byte{5, 1, byte(socks.MethodUserPass)}); err != nil {
			return err
		}
		if err := expectSilence(c); err != nil {
			return err
		}
		return writeLast(c, []byte{5, byte(socks.MethodNoAcceptable)})
	})
	d.Pipeline, d.Username, d.Password = true, "u", "p"
	if _, err := d.DialContext(context.Background(), "tcp", "192.0.2.1:80"); err == nil {
		t.Fatal("dial succeeded against a server accepting no method")
	}
}

// countingConn counts the reads and writes a handshake makes: each is one system call on a
// TCP connection whose data is already there.
type countingConn struct {
	net.Conn
	reads, writes atomic.Int32
}

func (c *countingConn) Read(p []byte) (int, error)  { c.reads.Add(1); return c.Conn.Read(p) }
func (c *countingConn) Write(p []byte) (int, error) { c.writes.Add(1); return c.Conn.Write(p) }

// Each message is one write, and each answer as few reads as the protocol allows without
// reading past it: a SOCKS5 reply takes two (its length is known from its fifth byte). Over
// loopback TCP, where each answer arrives whole.
func TestHandshakeIOCalls(t *testing.T) {
	tests := []struct {
		name          string
		v             Version
		pipeline      bool
		reads, writes int32
	}{
		{"socks5", SOCKS5, false, 3, 2},
		{"socks5 pipelined", SOCKS5, true, 3, 1},
		{"socks4", SOCKS4, false, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := make(chan error, 1)
			go func() {
				served <- func() error {
					c, err := ln.Accept()
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if tt.v == SOCKS4 {
						if _, err := socks.ReadRequest4(c); err != nil {
							return err
						}
						_, err = c.Write(socks.AppendReply4(nil, socks.Reply4{Code: socks.Reply4Granted}))
						return err
					}
					if _, err := socks.ReadGreeting(c); err != nil {
						return err
					}
					if _, err := c.Write([]byte{5, 0}); err != nil {
						return err
					}
					if _, err := socks.ReadRequest(c); err != nil {
						return err
					}
					_, err = c.Write(reply(socks.ReplySucceeded, socks.Addr{IP: mustIP("10.0.0.1"), Port: 1}))
					return err
				}()
			}()
			var cc *countingConn
			d := &Dialer{Version: tt.v, Address: ln.Addr().String(), Pipeline: tt.pipeline}
			d.ProxyDial = func(ctx context.Context, network, address string) (net.Conn, error) {
				var nd net.Dialer
				c, err := nd.DialContext(ctx, network, address)
				if err == nil {
					cc = &countingConn{Conn: c}
					c = cc
				}
				return c, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", "192.0.2.1:80")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := <-served; err != nil {
				t.Fatalf("server: %v", err)
			}
			if r, w := cc.reads.Load(), cc.writes.Load(); r != tt.reads || w != tt.writes {
				t.Errorf("%d reads and %d writes per handshake, want %d and %d", r, w, tt.reads, tt.writes)
			}
		})
	}
}
