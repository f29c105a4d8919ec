//go:build linux

package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// slowLink is a TCP relay in the proxy namespace in front of one upstream proxy, which holds
// every chunk the proxy sends back for delay: that upstream's latency, switchable while the
// test runs. A health check through it (a CONNECT to the probe) waits for two such chunks,
// the method choice and the reply. (The lab's kernel has no sch_netem, which would do this on the link: tc here
// knows only htb and pfifo; a relay makes the same difference to the health checks.)
type slowLink struct{ delay atomic.Int64 }

func (l *slowLink) set(d time.Duration) { l.delay.Store(int64(d)) }

// startSlowLink relays listen (in proxy) to target (in proxy) with l's delay on the way back.
func startSlowLink(t *testing.T, tp *netlab.Topology, listen, target string) *slowLink {
	t.Helper()
	l := &slowLink{}
	ln := tp.Proxy.Listen("tcp", listen)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := tp.Proxy.Dial(context.Background(), "tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
				}()
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						time.Sleep(time.Duration(l.delay.Load())) // the link's latency, not a wait in the test
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			}()
		}
	}()
	return l
}

// urlTestProxy is a url-test group or member as GET /proxies/{name} has it.
type urlTestProxy struct {
	Now     string `json:"now"`
	History []struct {
		Time  time.Time `json:"time"`
		Delay int64     `json:"delay"`
	} `json:"history"`
}

// A url-test group of two dante upstreams, one behind a slow link: the group takes the faster
// one; when that one becomes the slow one the group moves to the other with its health
// checks; and when the other becomes faster again by less than the tolerance the group stays
// where it is, however many checks say so. New flows follow the group's choice (the dantes'
// logs show them). The test looks at the choices the group makes, never at the time it takes.
func TestURLTestGroupFollowsTheFasterUpstream(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	danteA := startDante(t, tp, danteOptions{Port: "1080"})
	danteB := startDante(t, tp, danteOptions{Port: "1081"})
	linkA := startSlowLink(t, tp, netlab.Proxy4+":2080", netlab.Proxy4+":1080")
	linkB := startSlowLink(t, tp, netlab.Proxy4+":2081", netlab.Proxy4+":1081")
	const slow, tolerance = 400 * time.Millisecond, 200 * time.Millisecond
	linkA.set(slow) // a, the first member and so the group's choice before any check, is slow
	stateDir := t.TempDir()
	gw := startSocksgate(t, tp.GW, upstreamsConfig(fmt.Sprintf(`state_dir: %q
admin: {listen: %q, secret: %q}
upstreams:
  - {name: a, url: "socks5://%s:2080"}
  - {name: b, url: "socks5://%s:2081"}
groups:
  - {name: fastest, policy: url-test, tolerance: %s, upstreams: [a, b], health: {interval: 1s, probe: "[%s]:80"}}
rules:
  - {name: web, upstream: fastest}
`, stateDir, clashAdmin, clashSecret, netlab.Proxy4, netlab.Proxy4, tolerance, netlab.WAN6)))
	api := newClashClient(t, tp)
	proxy := func(name string) urlTestProxy {
		var p urlTestProxy
		api.get("/proxies/"+name, &p)
		return p
	}
	// checksSince is the delays of name's health checks that began after since, in order.
	checksSince := func(name string, since time.Time) []int64 {
		var out []int64
		for _, h := range proxy(name).History {
			if h.Time.After(since) {
				out = append(out, h.Delay)
			}
		}
		return out
	}
	// served counts the sessions a dante started to the web server's IPv4 address, where lan
	// goes (the health checks go to its IPv6 one).
	served := func(p *netlab.Proc) int {
		n := 0
		for _, l := range strings.Split(p.Output(), "\n") {
			if strings.Contains(l, "tcp/connect [") && strings.Contains(l, netlab.WAN4+".80") {
				n++
			}
		}
		return n
	}
	through := func(want *netlab.Proc, other *netlab.Proc) {
		t.Helper()
		wantBefore, otherBefore := served(want), served(other)
		if out, err := curl(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
			t.Fatalf("curl: %q %v", out, err)
		}
		if !waitFor(5*time.Second, func() bool { return served(want) > wantBefore }) || served(other) != otherBefore {
			t.Fatalf("the flow did not go through the group's choice: %d→%d sessions there, %d→%d on the other",
				wantBefore, served(want), otherBefore, served(other))
		}
	}
	moves := func() int { return countLogs(gw.Output(), msg("url-test: new fastest upstream")) }
	// waitChoice polls the group's choice until it is want; it fails when the choice is
	// anything but from or want meanwhile.
	waitChoice := func(from, want string) {
		t.Helper()
		var seen []string
		ok := waitFor(30*time.Second, func() bool {
			now := proxy("fastest").Now
			if len(seen) == 0 || seen[len(seen)-1] != now {
				seen = append(seen, now)
			}
			return now == want
		})
		for _, s := range seen {
			if s != from && s != want {
				t.Fatalf("the group's choices %v: %q is neither %s nor %s", seen, s, from, want)
			}
		}
		if !ok {
			t.Fatalf("the group's choices %v, never %s; a's checks %v, b's %v\n%s", seen, want,
				proxy("a").History, proxy("b").History, clashTail(gw.Output(), 20))
		}
	}

	// b is faster: the group moves from a, its first member, to b, once.
	waitChoice("a", "b")
	through(danteB, danteA)
	waitFor(5*time.Second, func() bool { return moves() >= 1 }) // the line follows the move
	if n := moves(); n != 1 {
		t.Fatalf("%d moves logged, want 1 (a to b)", n)
	}

	// b becomes the slow one: the group moves back to a at a check, and stays there.
	changed := time.Now()
	linkB.set(slow)
	linkA.set(0)
	waitChoice("b", "a")
	through(danteA, danteB)
	if !waitFor(30*time.Second, func() bool { return len(checksSince("b", changed)) >= 2 }) {
		t.Fatal("b was not checked again")
	}
	if now := proxy("fastest").Now; now != "a" || moves() != 2 {
		t.Fatalf("after b's next checks the group takes %q with %d moves, want a and 2", now, moves())
	}

	// b becomes faster than a again, but by less than the tolerance: the group stays on a for
	// every check of both that says so.
	changed = time.Now()
	linkA.set(tolerance / 4)
	linkB.set(0)
	var choices []string // the group's choices as polled, each run of one choice once
	note := func() {
		if now := proxy("fastest").Now; len(choices) == 0 || choices[len(choices)-1] != now {
			choices = append(choices, now)
		}
	}
	if !waitFor(30*time.Second, func() bool {
		note()
		a, b := checksSince("a", changed), checksSince("b", changed)
		return len(a) >= 3 && len(b) >= 3
	}) {
		t.Fatal("the members were not checked three times each")
	}
	a, b := checksSince("a", changed), checksSince("b", changed)
	if a[len(a)-1] <= b[len(b)-1] {
		t.Fatalf("a's checks %v are not slower than b's %v: the link did not make the difference", a, b)
	}
	note()
	if len(choices) != 1 || choices[0] != "a" || moves() != 2 {
		t.Fatalf("the group's choices %v with b faster within the tolerance (a %v ms, b %v ms), %d moves; want a throughout and 2 moves",
			choices, a, b, moves())
	}
	through(danteA, danteB)
	stopSocksgate(t, tp.GW, gw)
}
