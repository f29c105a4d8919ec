package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
)

// fakeUpstream answers dials with a net.Pipe end, or with err when set.
type fakeUpstream struct {
	name string

	mu     sync.Mutex
	err    error
	udpErr error
	dials  []string
	// hold makes every dial wait for its context to end, and tells each one's start on the
	// channel (buffered); inFlight counts the dials not yet returned.
	hold     chan string
	inFlight int
}

func (f *fakeUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	f.mu.Lock()
	f.dials = append(f.dials, address)
	hold, err := f.hold, f.err
	if hold != nil {
		f.inFlight++
	}
	f.mu.Unlock()
	if hold != nil {
		hold <- address
		<-ctx.Done()
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	a, b := net.Pipe()
	go func() { io.Copy(io.Discard, b); b.Close() }()
	return a, nil
}

func (f *fakeUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.udpErr != nil {
		return nil, f.udpErr
	}
	return fakePacketConn{f.name}, nil
}

func (f *fakeUpstream) String() string { return "fake://" + f.name }

func (f *fakeUpstream) set(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeUpstream) count(address string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, d := range f.dials {
		if address == "" || d == address {
			n++
		}
	}
	return n
}

type fakePacketConn struct{ from string }

func (fakePacketConn) ReadFrom([]byte) (int, net.Addr, error)    { return 0, nil, io.EOF }
func (fakePacketConn) WriteTo(p []byte, _ net.Addr) (int, error) { return len(p), nil }
func (fakePacketConn) Close() error                              { return nil }
func (fakePacketConn) LocalAddr() net.Addr                       { return nil }
func (fakePacketConn) SetDeadline(time.Time) error               { return nil }
func (fakePacketConn) SetReadDeadline(time.Time) error           { return nil }
func (fakePacketConn) SetWriteDeadline(time.Time) error          { return nil }

// Errors as the real dialers produce them.
var (
	errRefused = &net.OpError{Op: "socks connect", Err: &proxyReachError{fmt.Errorf("dial proxy: %w",
		&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED})}}
	errHostUnreachable = &net.OpError{Op: "socks connect", Err: &socksclient.ReplyError{Version: socksclient.SOCKS5, Code: socks.ReplyHostUnreachable}}
	errAuth            = &net.OpError{Op: "socks connect", Err: fmt.Errorf("%w for user \"u\"", socksclient.ErrAuthFailed)}
	err407             = &net.OpError{Op: "http connect", Err: &httpproxy.StatusError{Code: 407}}
	err403             = &net.OpError{Op: "http connect", Err: &httpproxy.StatusError{Code: 403}}
)

type groupFixture struct {
	g       *Group
	ups     []*fakeUpstream
	direct  *fakeUpstream
	logs    *logtest.Hook
	members []GroupMember
}

func newGroupFixture(t *testing.T, cfg configs.Group, names ...string) *groupFixture {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	fx := &groupFixture{direct: &fakeUpstream{name: "direct"}, logs: hook}
	for _, n := range names {
		u := &fakeUpstream{name: n}
		fx.ups = append(fx.ups, u)
		fx.members = append(fx.members, GroupMember{Name: n, Upstream: u})
	}
	if cfg.Name == "" {
		cfg.Name = "out"
	}
	fx.g = NewGroup(cfg, fx.members, fx.direct, logrus.NewEntry(logger))
	fx.g.backoffMin, fx.g.backoffMax = 5*time.Millisecond, 20*time.Millisecond
	fx.g.Start()
	t.Cleanup(func() { fx.g.Close() })
	return fx
}

// groupDialTarget is what fixture dials ask for; counting only these keeps the background
// health checks (dials to the probe) out of "who answered".
const groupDialTarget = "203.0.113.10:80"

func (fx *groupFixture) dial(t *testing.T) (string, error) {
	t.Helper()
	before := make([]int, len(fx.ups))
	for i, u := range fx.ups {
		before[i] = u.count(groupDialTarget)
	}
	dBefore := fx.direct.count(groupDialTarget)
	c, err := fx.g.DialContext(context.Background(), "tcp", groupDialTarget)
	if err != nil {
		return "", err
	}
	c.Close()
	if fx.direct.count(groupDialTarget) > dBefore {
		return "direct", nil
	}
	// The member that answered is the last one dialed.
	for i := len(fx.ups) - 1; i >= 0; i-- {
		if fx.ups[i].count(groupDialTarget) > before[i] && fx.ups[i].err == nil {
			return fx.ups[i].name, nil
		}
	}
	return "?", nil
}

func (fx *groupFixture) messages(msg string) []string {
	var out []string
	for _, e := range fx.logs.AllEntries() {
		if e.Message == msg {
			out = append(out, fmt.Sprint(e.Data["upstream"], ": ", e.Data["reason"]))
		}
	}
	return out
}

func memberUp(g *Group, name string) bool {
	for _, s := range g.Status() {
		if s.Name == name {
			return s.Up
		}
	}
	return false
}

func TestGroupFailoverUsesFirstUpMemberAndRetriesNextWithinTheFlow(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{}, "a", "b")
	if got, err := fx.dial(t); err != nil || got != "a" {
		t.Fatalf("dial went to %q, %v; want a", got, err)
	}
	fx.ups[0].set(errRefused)
	if got, err := fx.dial(t); err != nil || got != "b" {
		t.Fatalf("after a was refused the dial went to %q, %v; want b in the same flow", got, err)
	}
	if memberUp(fx.g, "a") {
		t.Fatal("a is still up after a refused connection")
	}
	n := fx.ups[0].count("")
	if got, _ := fx.dial(t); got != "b" || fx.ups[0].count("") != n {
		t.Fatalf("a down member was dialed again (%q)", got)
	}
	if down := fx.messages("upstream down"); len(down) != 1 || !strings.HasPrefix(down[0], "a: cannot reach the proxy") {
		t.Fatalf("down log lines: %q", down)
	}
}

func TestGroupDestinationRefusalKeepsMemberUpAndIsNotRetried(t *testing.T) {
	for _, err := range []error{errHostUnreachable, err403} {
		t.Run(err.Error(), func(t *testing.T) {
			fx := newGroupFixture(t, configs.Group{}, "a", "b")
			fx.ups[0].set(err)
			_, derr := fx.dial(t)
			if !errors.Is(derr, err) && !errors.As(derr, new(*net.OpError)) {
				t.Fatalf("dial error %v does not carry %v", derr, err)
			}
			if !memberUp(fx.g, "a") || fx.ups[1].count("") != 0 || len(fx.messages("upstream down")) != 0 {
				t.Fatalf("a destination refusal changed health or moved on: status %+v", fx.g.Status())
			}
		})
	}
}

func TestGroupAuthAndProtocolFailuresMarkDown(t *testing.T) {
	for _, err := range []error{errAuth, err407, fmt.Errorf("x: %w", socksclient.ErrProtocol), fmt.Errorf("read: %w", io.ErrUnexpectedEOF)} {
		t.Run(err.Error(), func(t *testing.T) {
			fx := newGroupFixture(t, configs.Group{}, "a", "b")
			fx.ups[0].set(err)
			if got, derr := fx.dial(t); derr != nil || got != "b" {
				t.Fatalf("dial %q %v", got, derr)
			}
			if memberUp(fx.g, "a") {
				t.Fatal("a still up")
			}
		})
	}
}

func TestGroupAllDown(t *testing.T) {
	t.Run("block fails promptly and never goes direct", func(t *testing.T) {
		fx := newGroupFixture(t, configs.Group{OnDown: configs.OnDownBlock}, "a", "b")
		fx.ups[0].set(errRefused)
		fx.ups[1].set(errRefused)
		for range 2 { // once while discovering, once with both known down
			start := time.Now()
			_, err := fx.dial(t)
			if !errors.Is(err, ErrGroupDown) || !strings.Contains(err.Error(), "on_down: block") {
				t.Fatalf("error %v, want ErrGroupDown", err)
			}
			if time.Since(start) > time.Second {
				t.Fatal("not prompt")
			}
		}
		if fx.direct.count("") != 0 {
			t.Fatal("a blocked group dialed direct")
		}
		if got := fx.ups[0].count("") + fx.ups[1].count(""); got != 2 {
			t.Fatalf("%d member dials, want 2 (down members are not dialed by flows)", got)
		}
	})
	t.Run("direct", func(t *testing.T) {
		fx := newGroupFixture(t, configs.Group{OnDown: configs.OnDownDirect}, "a")
		fx.ups[0].set(errRefused)
		if got, err := fx.dial(t); err != nil || got != "direct" {
			t.Fatalf("dial %q %v, want direct", got, err)
		}
	})
}

func TestGroupRoundRobinSpreadsAndSkipsDownMembers(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Policy: configs.PolicyRoundRobin}, "a", "b", "c")
	for range 6 {
		if _, err := fx.dial(t); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range fx.ups {
		if n := u.count(""); n != 2 {
			t.Fatalf("%s got %d of 6 dials", u.name, n)
		}
	}
	fx.ups[1].set(errRefused)
	seen := map[string]int{}
	for range 6 {
		got, err := fx.dial(t)
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["b"] != 0 || seen["a"] == 0 || seen["c"] == 0 {
		t.Fatalf("spread with b down: %v", seen)
	}
}

func TestGroupLeastConnectionsPicksTheLeastBusy(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Policy: configs.PolicyLeastConnections}, "a", "b")
	ctx := context.Background()
	c1, _ := fx.g.DialContext(ctx, "tcp", "x:1") // a (tie: first)
	c2, _ := fx.g.DialContext(ctx, "tcp", "x:2") // b
	c3, _ := fx.g.DialContext(ctx, "tcp", "x:3") // a or b: tie again -> a
	if fx.ups[0].count("x:1") != 1 || fx.ups[1].count("x:2") != 1 || fx.ups[0].count("x:3") != 1 {
		t.Fatalf("dials a=%v b=%v", fx.ups[0].dials, fx.ups[1].dials)
	}
	c1.Close()
	c1.Close() // counted once
	c3.Close()
	fx.g.DialContext(ctx, "tcp", "x:4")
	if fx.ups[0].count("x:4") != 1 {
		t.Fatalf("x:4 did not go to the idle member a: a=%v b=%v", fx.ups[0].dials, fx.ups[1].dials)
	}
	if _, ok := c2.(closeWriter); !ok {
		t.Fatal("the counted connection lost CloseWrite")
	}
	if st := fx.g.Status(); st[0].Active != 1 || st[1].Active != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestGroupHealthChecksApplyFallAndRiseAndLogOnce(t *testing.T) {
	const probe = "198.51.100.1:443"
	fx := newGroupFixture(t, configs.Group{Health: configs.Health{
		Probe: probe, Interval: configs.Duration(2 * time.Millisecond), Timeout: configs.Duration(time.Second), Rise: 3, Fall: 2,
	}}, "a", "b")
	testutil.WaitUntil(t, "first probes", func() bool { return fx.ups[0].count(probe) >= 2 })
	fx.ups[0].set(errHostUnreachable) // the probe target is unreachable through a: a fails its checks
	testutil.WaitUntil(t, "a down", func() bool { return !memberUp(fx.g, "a") })
	if got, err := fx.dial(t); err != nil || got != "b" {
		t.Fatalf("with a down the dial went to %q, %v", got, err)
	}
	fx.ups[0].set(nil)
	testutil.WaitUntil(t, "a up again", func() bool { return memberUp(fx.g, "a") })
	n := fx.ups[0].count(probe) // more checks pass: nothing more is logged
	testutil.WaitUntil(t, "more passing checks", func() bool { return fx.ups[0].count(probe) >= n+5 })
	down, up := fx.messages("upstream down"), fx.messages("upstream up")
	if len(down) != 1 || !strings.Contains(down[0], "2 health check(s) in a row failed") {
		t.Fatalf("down lines %q", down)
	}
	if len(up) != 1 || !strings.Contains(up[0], "3 health check(s) in a row passed") {
		t.Fatalf("up lines %q", up)
	}
	if got, err := fx.dial(t); err != nil || got != "a" {
		t.Fatalf("after recovery the dial went to %q %v", got, err)
	}
}

func TestGroupLiveFailureIsRetriedByTheHealthChecker(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Health: configs.Health{
		Probe: "p:1", Interval: configs.Duration(2 * time.Millisecond), Timeout: configs.Duration(time.Second), Rise: 2, Fall: 5,
	}}, "a", "b")
	fx.ups[0].set(errRefused)
	if got, _ := fx.dial(t); got != "b" {
		t.Fatalf("dial went to %q", got)
	}
	fx.ups[0].set(nil)
	testutil.WaitUntil(t, "a back up", func() bool { return memberUp(fx.g, "a") })
}

func TestGroupWithoutIntervalRetriesDownMembersWithBackoff(t *testing.T) {
	cfg := configs.Group{Name: "out", Health: configs.Health{Probe: "p:1", Rise: 1, Fall: 1}}
	// No checks while up: a checker, had Start begun one, would have checked once by the time
	// Close has waited for it (it checks before it looks at the group's context).
	idle := &fakeUpstream{name: "a"}
	g := NewGroup(cfg, []GroupMember{{Name: "a", Upstream: idle}}, &fakeUpstream{name: "direct"}, nil)
	g.Start()
	g.Close()
	if n := idle.count("p:1"); n != 0 {
		t.Fatalf("%d checks with interval 0 while up", n)
	}
	fx := newGroupFixture(t, cfg, "a", "b")
	fx.ups[0].set(errRefused)
	fx.dial(t)
	testutil.WaitUntil(t, "retries", func() bool { return fx.ups[0].count("") >= 3 })
	fx.ups[0].set(nil)
	testutil.WaitUntil(t, "a up", func() bool { return memberUp(fx.g, "a") })
	if up := fx.messages("upstream up"); len(up) != 1 || !strings.Contains(up[0], "retry succeeded") {
		t.Fatalf("up lines %q", up)
	}
}

// Close ends the health checks: one in flight is cancelled and waited for, and none starts
// after. The probe holds every check until its context ends (the check timeout is far away),
// so the checker is inside a check when Close comes, and cannot have started another.
func TestGroupCloseStopsBackgroundWork(t *testing.T) {
	a := &fakeUpstream{name: "a", hold: make(chan string, 16)}
	g := NewGroup(configs.Group{Name: "out", Health: configs.Health{
		Probe: "p:1", Interval: configs.Duration(time.Millisecond), Timeout: configs.Duration(time.Hour), Rise: 1, Fall: 1,
	}}, []GroupMember{{Name: "a", Upstream: a}}, &fakeUpstream{name: "direct"}, nil)
	g.Start()
	if got := <-a.hold; got != "p:1" {
		t.Fatalf("first check dialled %q", got)
	}
	g.Close()
	a.mu.Lock()
	inFlight, checks := a.inFlight, len(a.dials)
	a.mu.Unlock()
	if inFlight != 0 {
		t.Fatal("Close returned with a health check still in flight")
	}
	if checks != 1 || len(a.hold) != 0 {
		t.Fatalf("%d checks, %d started after the first: want the one Close cancelled", checks, len(a.hold))
	}
	if g.goBackground(func() { t.Error("background work started after Close") }) {
		t.Fatal("the closed group accepts background work")
	}
	a.mu.Lock()
	a.hold = nil
	a.mu.Unlock()
	if c, err := g.DialContext(context.Background(), "tcp", groupDialTarget); err != nil {
		t.Fatalf("dial after Close: %v", err)
	} else {
		c.Close()
	}
}

func TestGroupCancelledFlowDoesNotMarkDown(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{}, "a", "b")
	fx.ups[0].set(errRefused)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := fx.g.DialContext(ctx, "tcp", "x:1"); err == nil {
		t.Fatal("dial succeeded")
	}
	if !memberUp(fx.g, "a") || fx.ups[1].count("") != 0 {
		t.Fatal("a cancelled flow judged the member or moved on")
	}
}

func TestGroupListenPacketUsesFirstUpMemberWithUDP(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{}, "http", "socks", "socks2")
	fx.ups[0].udpErr = fmt.Errorf("x: %w", ErrUDPUnsupported)
	pc, err := fx.g.ListenPacket(context.Background())
	if err != nil || pc.(fakePacketConn).from != "socks" {
		t.Fatalf("%v %v", pc, err)
	}
	fx.ups[1].udpErr = errRefused
	pc, err = fx.g.ListenPacket(context.Background())
	if err != nil || pc.(fakePacketConn).from != "socks2" || memberUp(fx.g, "socks") {
		t.Fatalf("%v %v", pc, err)
	}

	only := newGroupFixture(t, configs.Group{}, "http")
	only.ups[0].udpErr = fmt.Errorf("x: %w", ErrUDPUnsupported)
	if _, err := only.g.ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) {
		t.Fatalf("error %v, want ErrUDPUnsupported", err)
	}
}

func TestProxyFaultClassification(t *testing.T) {
	for _, tc := range []struct {
		err   error
		fault bool
	}{
		{errRefused, true},
		{errAuth, true},
		{&net.OpError{Err: socksclient.ErrNoAcceptableMethods}, true},
		{err407, true},
		{&net.OpError{Err: &httpproxy.StatusError{Code: 401}}, true},
		{&net.OpError{Err: fmt.Errorf("%w: bad", httpproxy.ErrProtocol)}, true},
		{&net.OpError{Err: syscall.ECONNRESET}, true},
		{errHostUnreachable, false},
		{&socksclient.ReplyError{Version: socksclient.SOCKS4, Code: 0x5b}, false},
		{err403, false},
		{&net.OpError{Err: &httpproxy.StatusError{Code: 502}}, false},
		{&net.OpError{Err: socksclient.ErrUnsupportedDestination}, false},
		{context.DeadlineExceeded, false},
	} {
		if _, got := proxyFault(tc.err); got != tc.fault {
			t.Errorf("proxyFault(%v) = %v, want %v", tc.err, got, tc.fault)
		}
	}
}

func TestNewUpstreamsBuildsHTTPChainsAndGroups(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	cfg := &configs.Config{
		Upstreams: []configs.Upstream{
			{Name: "corp", URL: mustURL("http://u:secret@127.0.0.1:1")},
			{Name: "outer", URL: mustURL("socks5://127.0.0.1:2"), Via: "corp"},
			{Name: "back", URL: mustURL("socks4://127.0.0.1:3")},
		},
		Groups: []configs.Group{{Name: "out", Policy: configs.PolicyFailover, OnDown: configs.OnDownBlock,
			Upstreams: []string{"outer", "back"}, Health: configs.Health{Rise: 1, Fall: 1}}},
	}
	ups, stop, err := NewUpstreams(cfg, Direct{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if s := ups["corp"].String(); s != "http://u@127.0.0.1:1" {
		t.Errorf("corp is %q", s)
	}
	if _, err := ups["corp"].ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) {
		t.Errorf("http ListenPacket: %v", err)
	}
	g, ok := ups["out"].(*Group)
	if !ok || g.String() != "group:out" || len(g.Status()) != 2 {
		t.Fatalf("out is %T %v", ups["out"], ups["out"])
	}
	// The chain reaches outer through corp: with corp unreachable the error is corp's.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = ups["outer"].DialContext(ctx, "tcp", "203.0.113.10:80")
	if err == nil || !strings.Contains(err.Error(), "http connect") || !strings.Contains(err.Error(), "socks connect") {
		t.Fatalf("chain error %v", err)
	}
	if _, fault := proxyFault(err); !fault {
		t.Fatal("an unreachable first hop is not a proxy fault of the chain")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatal("password in error")
	}
}

// A connection through a group names the member that carried it (the gateway puts it in the
// flow's decision, so its log line and the live flow list say which one).
func TestGroupNamesTheMemberOfTheConnection(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{}, "a", "b")
	fx.ups[0].set(errRefused)
	c, err := fx.g.DialContext(context.Background(), "tcp", groupDialTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, ok := c.(interface{ Member() string })
	if !ok || m.Member() != "b" {
		t.Fatalf("connection %T does not name member b", c)
	}
}

// A member that passes the retry's check but fails every flow (a proxy that refuses our
// credentials takes connections fine) is retried with a backoff that keeps growing across
// those flaps, not every backoffMin for ever.
func TestGroupFlappingMemberBacksOffAcrossRetries(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Health: configs.Health{Rise: 1, Fall: 1}}, "a")
	fx.g.backoffMin, fx.g.backoffMax = 20*time.Millisecond, 160*time.Millisecond
	m := fx.g.members[0]
	var ups []time.Time
	for range 5 {
		fx.g.markDown(m, "authentication failed")
		testutil.WaitUntil(t, "a up again", func() bool { return memberUp(fx.g, "a") })
		ups = append(ups, time.Now())
	}
	// Waits of 20, 40, 80, 160, 160 ms: the last gaps are well above backoffMin.
	if gap := ups[4].Sub(ups[3]); gap < 120*time.Millisecond {
		t.Fatalf("a member failing right after each retry came back after %v; the backoff did not grow (%v)", gap, ups)
	}
}

// A select group sends every flow to the chosen member (the first until one is chosen), and
// while that one is down the group is down: no other member takes its flows.
func TestGroupSelectUsesTheChosenMemberOnly(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Policy: configs.PolicySelect, Health: configs.Health{Rise: 1, Fall: 1}}, "a", "b")
	if got, err := fx.dial(t); err != nil || got != "a" || fx.g.Now() != "a" {
		t.Fatalf("before a choice: dial %q %v, now %q; want a", got, err, fx.g.Now())
	}
	if err := fx.g.Select("b"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got, err := fx.dial(t); err != nil || got != "b" {
			t.Fatalf("after choosing b: dial %q %v", got, err)
		}
	}
	if fx.g.Now() != "b" {
		t.Fatalf("now %q, want b", fx.g.Now())
	}
	if err := fx.g.Select("c"); err == nil || fx.g.Now() != "b" {
		t.Fatalf("choosing a non-member: %v, now %q", err, fx.g.Now())
	}
	fx.ups[1].set(errRefused)
	if _, err := fx.dial(t); !errors.Is(err, ErrGroupDown) {
		t.Fatalf("chosen member down: %v, want the group down (on_down: block)", err)
	}
	if n := fx.ups[0].count(groupDialTarget); n != 1 {
		t.Fatalf("a was dialled %d times, want 1 (before the choice only)", n)
	}
	var st []string
	for _, m := range fx.g.Status() {
		if m.Current {
			st = append(st, m.Name)
		}
	}
	if len(st) != 1 || st[0] != "b" {
		t.Fatalf("current in Status: %v", st)
	}

	other := newGroupFixture(t, configs.Group{}, "a")
	if err := other.g.Select("a"); !errors.Is(err, ErrNotSelect) {
		t.Fatalf("Select on a failover group: %v", err)
	}
}

// A url-test group takes the member whose health checks are fastest, and moves only to one
// faster by more than the tolerance; a member that goes down is left at once.
func TestGroupURLTestPicksTheFastestWithinTolerance(t *testing.T) {
	fx := newGroupFixture(t, configs.Group{Policy: configs.PolicyURLTest, Tolerance: configs.Duration(50 * time.Millisecond)}, "a", "b", "c")
	g := fx.g
	m := func(name string) *member {
		for _, m := range g.members {
			if m.Name == name {
				return m
			}
		}
		t.Fatalf("no member %s", name)
		return nil
	}
	check := func(name string, ms int) {
		g.measured(m(name), time.Now(), time.Duration(ms)*time.Millisecond, nil)
	}
	if g.Now() != "a" {
		t.Fatalf("before any check: %q, want the first", g.Now())
	}
	check("a", 100)
	check("b", 80) // 20ms faster: within the tolerance
	check("c", 300)
	if g.Now() != "a" {
		t.Fatalf("within tolerance: moved to %q", g.Now())
	}
	check("b", 30) // 70ms faster
	if got, err := fx.dial(t); err != nil || got != "b" || g.Now() != "b" {
		t.Fatalf("b 70ms faster: dial %q %v, now %q", got, err, g.Now())
	}
	check("a", 10) // 20ms faster than b: stays
	if g.Now() != "b" {
		t.Fatalf("flapped to %q", g.Now())
	}
	g.measured(m("b"), time.Now(), 0, errors.New("probe failed"))
	fx.ups[1].set(errRefused)
	g.markDown(m("b"), "test")
	if got, err := fx.dial(t); err != nil || got != "a" || g.Now() != "a" {
		t.Fatalf("b down: dial %q %v, now %q; want a (the fastest up)", got, err, g.Now())
	}
	var hist []Delay
	for _, s := range g.Status() {
		if s.Name == "b" {
			hist = s.Delays
		}
	}
	if len(hist) != 3 || hist[0].Took != 80*time.Millisecond || hist[2].Took != 0 {
		t.Fatalf("b's history %v, want 80ms, 30ms, failed", hist)
	}
}

// The history keeps the last historyLen delays, oldest first.
func TestMemberHistoryKeepsTheLast(t *testing.T) {
	var m member
	for i := 1; i <= historyLen+3; i++ {
		m.record(Delay{Took: time.Duration(i)})
	}
	h := m.history()
	if len(h) != historyLen || h[0].Took != 4 || h[historyLen-1].Took != historyLen+3 {
		t.Fatalf("history %v", h)
	}
}
