package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
)

// pipelineProxy is a SOCKS5 server (no authentication, CONNECT answered with success and an
// echo) that counts the requests that arrived before it answered the greeting. readsAhead false
// makes it behave like microsocks: it reads the greeting with one read and drops what came
// with it, so a pipelined request is never answered.
type pipelineProxy struct {
	addr       string
	pipelined  atomic.Int32
	readsAhead atomic.Bool
}

func startPipelineProxy(t *testing.T, readsAhead bool) *pipelineProxy {
	t.Helper()
	p := &pipelineProxy{}
	p.readsAhead.Store(readsAhead)
	p.addr = testutil.ServeLoopback(t, func(c net.Conn) { p.serve(c, p.readsAhead.Load()) }).String()
	return p
}

func (p *pipelineProxy) serve(c net.Conn, readsAhead bool) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if !readsAhead {
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		c.Write([]byte{5, 0})
		if n > 3 { // the request came with the greeting and is gone: wait, as microsocks does
			io.Copy(io.Discard, c)
			return
		}
	} else {
		if _, err := socks.ReadGreeting(r); err != nil {
			return
		}
		// A request already here was sent before the client could see the method choice.
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := r.Peek(1); err == nil {
			p.pipelined.Add(1)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{5, 0})
	}
	req, err := socks.ReadRequest(r)
	if err != nil {
		return
	}
	code := socks.ReplySucceeded
	if !req.Addr.IP.IsValid() || req.Addr.IP.IsUnspecified() {
		code = socks.ReplyConnectionRefused
	}
	rep, _ := socks.AppendReply(nil, socks.Reply{Code: code})
	c.Write(rep)
	if code == socks.ReplySucceeded {
		io.Copy(c, r)
	}
}

func TestSocksUpstreamLearnsPipelining(t *testing.T) {
	tests := []struct {
		name          string
		readsAhead    bool
		want          int32
		wantPipelined int32
	}{
		{"a proxy that reads ahead (dante)", true, pipelineYes, 2}, // the probe and the second dial
		{"a proxy that does not (microsocks)", false, pipelineNo, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPipelineProxy(t, tt.readsAhead)
			u, err := newUpstream(&configs.Upstream{Name: "p", URL: &url.URL{Scheme: "socks5", Host: p.addr}}, Direct{}, Direct{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := u.(*socksUpstream)
			s.probeTimeout = 300 * time.Millisecond
			dial := func() {
				t.Helper()
				c, err := s.DialContext(t.Context(), "tcp", "192.0.2.1:80")
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
			}
			dial() // starts the probe; waits for the method choice itself
			deadline := time.Now().Add(3 * time.Second)
			for s.pipeline.Load() != tt.want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := s.pipeline.Load(); got != tt.want {
				t.Fatalf("pipelining state %d, want %d", got, tt.want)
			}
			dial()
			if got := p.pipelined.Load(); got != tt.wantPipelined {
				t.Fatalf("%d requests came with their greeting, want %d", got, tt.wantPipelined)
			}
		})
	}
}

func TestSocksUpstreamRetriesAFailedProbeLater(t *testing.T) {
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nothing listens: dials and the probe are refused
	u, err := newUpstream(&configs.Upstream{Name: "p", URL: &url.URL{Scheme: "socks5", Host: addr}}, Direct{}, Direct{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := u.(*socksUpstream)
	s.retry = time.Hour
	if _, err := s.DialContext(t.Context(), "tcp", "192.0.2.1:80"); err == nil {
		t.Fatal("dial through a proxy that is not there succeeded")
	}
	deadline := time.Now().Add(3 * time.Second)
	for (s.nextProbe.Load() == 0 || s.pipeline.Load() != pipelineUnknown) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.pipeline.Load() != pipelineUnknown || time.Until(time.Unix(0, s.nextProbe.Load())) < 50*time.Minute {
		t.Fatalf("after a failed probe: state %d, next probe in %v; want unknown, in about an hour",
			s.pipeline.Load(), time.Until(time.Unix(0, s.nextProbe.Load())))
	}
	// A probe started now would be Probing when the dial returns (the state changes before
	// the probe's goroutine starts), or, if it already failed, would have moved nextProbe.
	next := s.nextProbe.Load()
	s.DialContext(t.Context(), "tcp", "192.0.2.1:80")
	if s.pipeline.Load() != pipelineUnknown || s.nextProbe.Load() != next {
		t.Fatal("a dial before the retry time started another probe")
	}
}

func TestSocksUpstreamNeverProbesWithCredentialsOrSOCKS4(t *testing.T) {
	for _, raw := range []string{"socks5://u:p@127.0.0.1:1", "socks4://127.0.0.1:1", "socks4a://127.0.0.1:1"} {
		uu, _ := url.Parse(raw)
		u, err := newUpstream(&configs.Upstream{Name: "p", URL: uu}, Direct{}, Direct{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if s := u.(*socksUpstream); s.dp != nil {
			t.Fatalf("%s: has a pipelining dialer", uu.Redacted())
		}
	}
}

// A proxy that stops reading ahead after the probe said it does (replaced behind the same
// address) costs one flow: its unanswered pipelined request makes the upstream ask again.
func TestSocksUpstreamNoticesAProxyThatStopsReadingAhead(t *testing.T) {
	p := startPipelineProxy(t, true)
	u, err := newUpstream(&configs.Upstream{Name: "p", URL: &url.URL{Scheme: "socks5", Host: p.addr}}, Direct{}, Direct{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := u.(*socksUpstream)
	s.probeTimeout = 300 * time.Millisecond
	dial := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		c, err := s.DialContext(ctx, "tcp", "192.0.2.1:80")
		if err == nil {
			c.Close()
		}
		return err
	}
	await := func(want int32) {
		t.Helper()
		for end := time.Now().Add(3 * time.Second); s.pipeline.Load() != want && time.Now().Before(end); {
			time.Sleep(10 * time.Millisecond)
		}
		if got := s.pipeline.Load(); got != want {
			t.Fatalf("pipelining state %d, want %d", got, want)
		}
	}
	if err := dial(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	await(pipelineYes)
	p.readsAhead.Store(false)
	if err := dial(300 * time.Millisecond); !errors.Is(err, socksclient.ErrPipelinedUnanswered) {
		t.Fatalf("pipelined dial to a proxy that no longer reads ahead: %v, want ErrPipelinedUnanswered", err)
	}
	await(pipelineNo)
	if err := dial(5 * time.Second); err != nil {
		t.Fatalf("dial after the proxy was found out: %v", err)
	}
}

// NewUpstreamsIdle builds the groups without starting their health checks: explain routes
// through them and must dial nothing.
func TestNewUpstreamsIdleStartsNoHealthCheck(t *testing.T) {
	cfg := &configs.Config{
		Upstreams: []configs.Upstream{{Name: "a", URL: &url.URL{Scheme: "socks5", Host: "192.0.2.1:1080"}}},
		Groups:    []configs.Group{{Name: "g", Upstreams: []string{"a"}, Health: configs.Health{Interval: configs.Duration(time.Millisecond)}}},
	}
	ups, err := NewUpstreamsIdle(cfg, Direct{})
	if err != nil {
		t.Fatal(err)
	}
	g, ok := ups["g"].(*Group)
	if !ok {
		t.Fatalf("ups[g] is %T, want *Group", ups["g"])
	}
	fresh := false
	g.started.Do(func() { fresh = true })
	if !fresh {
		t.Error("the group's health checks were started")
	}
	if st := g.Status(); len(st) != 1 || !st[0].Up {
		t.Errorf("member status %+v, want one member up", st)
	}
}
