//go:build linux

package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The VRRP settings of the HA pair test, the ones docs/deployment.md shows. A failover is
// bounded by them: a dead or stopped socksgate fails the track script fall times, interval
// apart, each attempt taking up to timeout, and the master then leaves at once (it sends a
// priority 0 advert, the backup takes over); a master cut off the LAN is given up by the
// backup after 3 adverts missed plus its skew, (256-priority)/256 of advert_int.
const (
	haAdvertInt     = 1 // seconds, VRRP advert_int
	haCheckInterval = 1 // seconds, vrrp_script interval
	haCheckTimeout  = 2 // seconds, vrrp_script timeout (curl gives up after 1)
	haFall, haRise  = 2, 2
)

// haBound is how long a failover, or the old master's return, may take and still pass: twice
// the slower of the two paths above plus the gratuitous ARP and neighbour advertisement that
// follow, and 5 s for a 2-CPU machine shared with other tests. The measured times are logged
// (docs/deployment.md has them); the test asserts behaviour, not speed.
var haBound = 2*time.Duration(max(haFall*(haCheckInterval+haCheckTimeout), 3*haAdvertInt+haAdvertInt))*time.Second + 5*time.Second

// haSocksgateConfig is the one config both gateways run: capture on the LAN interface, TCP
// and UDP through dante, the LAN's forwarded ICMP echo and unreachables dropped (with pass,
// the LAN host's port unreachable about a UDP reply that arrives after its socket closed, as
// the prober's do when a session moves, is routed to wan: a leak by config, as TestLeak
// shows), the admin endpoint keepalived's track script asks, the addresses VRRP moves, and
// on_crash as given.
func haSocksgateConfig(onCrash string) string {
	return fmt.Sprintf(`log: {level: info}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 3s, grace: 1s}
transparent: {udp: true, udp_idle: 5s, udp_without_support: block, icmp: block, sniff: {enabled: false}}
admin: %s
ha: {vip: [%s, %s]}
upstreams:
  - {name: dante, url: "socks5://%s:1080"}
rules:
  - {name: default, action: proxy, upstream: dante}
on_crash: %s
`, netlab.GWLANIf, hardeningAdmin, netlab.VIP4, netlab.VIP6, netlab.Proxy4, onCrash)
}

// haKeepalivedConfig is keepalived's config on one gateway: one VRRP instance on the LAN
// interface carrying the IPv4 gateway address, and the IPv6 one with it (excluded from the
// adverts, which are IPv4: it moves with the instance), tracking socksgate's /healthz. With
// nopreempt both start as BACKUP and a returning router with the higher priority leaves the
// address where it is.
func haKeepalivedConfig(curl, name string, priority int, nopreempt bool) string {
	state, np := "BACKUP", ""
	if nopreempt {
		np = "\n    nopreempt"
	} else if priority > 100 {
		state = "MASTER"
	}
	return fmt.Sprintf(`global_defs {
    router_id %s
    script_user root
    enable_script_security
}
vrrp_script socksgate {
    script "%s -fs --max-time 1 -o /dev/null http://%s/healthz"
    interval %d
    timeout %d
    fall %d
    rise %d
}
vrrp_instance LAN {
    state %s
    interface %s
    virtual_router_id 51
    priority %d
    advert_int %d%s
    virtual_ipaddress {
        %s/24 dev %s
    }
    virtual_ipaddress_excluded {
        %s/64 dev %s
    }
    track_script {
        socksgate
    }
}
`, name, curl, hardeningAdmin, haCheckInterval, haCheckTimeout, haFall, haRise,
		state, netlab.GWLANIf, priority, haAdvertInt, np,
		netlab.VIP4, netlab.GWLANIf, netlab.VIP6, netlab.GWLANIf)
}

// haGateway is one router of the pair.
type haGateway struct {
	name     string
	ns       *netlab.NS
	priority int
	cfg      string // socksgate's config file
	sg, ka   *netlab.Proc
}

type haPair struct {
	t      *testing.T
	h      *netlab.HATopology
	a, b   *haGateway
	curl   string
	watch  *leakWatch
	client *http.Client
}

func (p *haPair) gateways() []*haGateway { return []*haGateway{p.a, p.b} }

// startSocksgate (re)starts socksgate on g with its config file and waits until it is ready.
func (p *haPair) startSocksgate(g *haGateway) {
	p.t.Helper()
	g.sg = g.ns.Start(socksgateBin, "run", "-log-format", "json", "-c", g.cfg)
	if _, ok := waitLog(g.sg, 15*time.Second, msg("socksgate ready")); !ok {
		p.t.Fatalf("%s: socksgate did not become ready:\n%s", g.name, g.sg.Output())
	}
}

// startKeepalived starts keepalived in g's namespace in the foreground, VRRP only, with its
// own config and pid files, logging to its output.
func (p *haPair) startKeepalived(g *haGateway, nopreempt bool) {
	p.t.Helper()
	dir := p.t.TempDir()
	conf := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(conf, []byte(haKeepalivedConfig(p.curl, g.name, g.priority, nopreempt)), 0o644); err != nil {
		p.t.Fatal(err)
	}
	g.ka = g.ns.Start("keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
		"-f", conf, "-p", filepath.Join(dir, "keepalived.pid"), "-r", filepath.Join(dir, "vrrp.pid"))
}

// stopKeepalived stops keepalived on g with SIGTERM: it gives the address up as a router
// being shut down does.
func (p *haPair) stopKeepalived(g *haGateway) {
	p.t.Helper()
	g.ka.Signal(syscall.SIGTERM)
	if exited, _ := g.ka.Wait(10 * time.Second); !exited {
		p.t.Fatalf("%s: keepalived still running 10s after SIGTERM:\n%s", g.name, g.ka.Output())
	}
}

// holds reports whether g has the IPv4 and the IPv6 gateway address on its LAN interface.
func (p *haPair) holds(g *haGateway) (v4, v6 bool) {
	out, _ := g.ns.Run("ip", "-o", "addr", "show", "dev", netlab.GWLANIf)
	return strings.Contains(out, " "+netlab.VIP4+"/"), strings.Contains(out, " "+netlab.VIP6+"/")
}

// holder is the one gateway holding both addresses while the other holds neither, or nil
// with what each holds.
func (p *haPair) holder() (*haGateway, string) {
	var who *haGateway
	var state []string
	n := 0
	for _, g := range p.gateways() {
		v4, v6 := p.holds(g)
		state = append(state, fmt.Sprintf("%s: v4 %v v6 %v", g.name, v4, v6))
		if v4 || v6 {
			n++
			if v4 && v6 {
				who = g
			}
		}
	}
	if n != 1 {
		who = nil
	}
	return who, strings.Join(state, ", ")
}

// waitHolder waits until g alone holds the gateway addresses and returns how long that took
// from since.
func (p *haPair) waitHolder(g *haGateway, since time.Time, what string) time.Duration {
	p.t.Helper()
	var state string
	if !waitFor(haBound-time.Since(since), func() bool {
		var who *haGateway
		who, state = p.holder()
		return who == g
	}) {
		p.t.Fatalf("%s: %s is not the one gateway holding the addresses %v after it began (%s)\n%s",
			what, g.name, haBound, state, p.keepalivedLogs())
	}
	return time.Since(since)
}

func (p *haPair) keepalivedLogs() string {
	var b strings.Builder
	for _, g := range p.gateways() {
		if g.ka != nil {
			fmt.Fprintf(&b, "keepalived on %s:\n%s\n", g.name, lastLines(g.ka.Output(), 30))
		}
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// admin reads path from g's admin endpoint.
func (p *haPair) admin(g *haGateway, path string) (string, error) {
	return opsGet(g.ns, "http://"+hardeningAdmin+path)
}

// flowsTotal is the number of flows g's socksgate has carried to their end (all outcomes).
func (p *haPair) flowsTotal(g *haGateway) float64 {
	p.t.Helper()
	m, err := p.admin(g, "/metrics")
	if err != nil {
		p.t.Fatalf("%s /metrics: %v", g.name, err)
	}
	var n float64
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "socksgate_flows_total{") {
			var v float64
			fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
			n += v
		}
	}
	return n
}

// checkServing checks that both gateways' socksgate say which one serves: /healthz answers 200
// on both, "serving: ..." on serving and "standby: ..." on the other, and socksgate_serving is
// 1 and 0. down, a gateway whose socksgate does not answer, is skipped.
func (p *haPair) checkServing(serving, down *haGateway) {
	p.t.Helper()
	for _, g := range p.gateways() {
		if g == down {
			continue
		}
		want, v := "standby: holds none of "+netlab.VIP4+" "+netlab.VIP6+"\n", 0.0
		if g == serving {
			want, v = "serving: holds "+netlab.VIP4+" "+netlab.VIP6+"\n", 1
		}
		var body string
		var err error
		var m float64
		// keepalived moves the addresses one after the other: the two lines settle together.
		ok := waitFor(3*time.Second, func() bool {
			body, err = p.admin(g, "/healthz")
			if err != nil || body != "ok\n"+want {
				return false
			}
			mb, _ := p.admin(g, "/metrics")
			m = opsMetric(mb, "socksgate_serving")
			return m == v
		})
		if !ok {
			p.t.Errorf("%s: /healthz %q (%v), socksgate_serving %v; want 200 %q and %v", g.name, body, err, m, "ok\n"+want, v)
		}
	}
}

// leaks lists what reached wan from anyone but dante since the watch's last reset, split in
// two: the LAN's traffic (any packet but an ICMP error from a gateway's own address: a leak),
// and the gateways' own ICMP errors. Those are the kernel's answer to a UDP reply socksgate
// relays to a LAN host it cannot reach (address unreachable while the LAN cable is out),
// addressed to the remote the reply claims to come from; docs/deployment.md says so.
func (p *haPair) leaks(t *testing.T) (lan, own string) {
	t.Helper()
	var l, o []string
	for _, set := range []string{"seen4", "seen6"} {
		out := p.watch.ns.MustRun("nft", "list", "set", "inet", "leakwatch", set)
		_, el, ok := strings.Cut(out, "elements = {")
		if !ok {
			continue
		}
		el, _, _ = strings.Cut(el, "}")
		for _, e := range strings.Split(el, ",") {
			e = strings.Join(strings.Fields(e), " ")
			src, rest, _ := strings.Cut(e, " . ")
			switch {
			case e == "":
			case (strings.HasPrefix(rest, "icmp .") || strings.HasPrefix(rest, "ipv6-icmp .")) &&
				(src == netlab.GWAUp4 || src == netlab.GWAUp6 || src == netlab.GWBUp4 || src == netlab.GWBUp6):
				o = append(o, e)
			default:
				l = append(l, e)
			}
		}
	}
	return strings.Join(l, ", "), strings.Join(o, ", ")
}

// get fetches wan's page from the LAN host over a new connection.
func (p *haPair) get(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", urlFor(addr, "/"), nil)
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && string(b) != pageBody {
		err = fmt.Errorf("body %q", b)
	}
	return err
}

// checkCarries checks that new LAN flows, over both families, go through g and not the other.
func (p *haPair) checkCarries(g *haGateway, other *haGateway) {
	p.t.Helper()
	before := p.flowsTotal(g)
	var otherBefore float64
	if other != nil {
		otherBefore = p.flowsTotal(other)
	}
	for _, addr := range []string{netlab.WAN4, netlab.WAN6, netlab.WAN4, netlab.WAN6} {
		if err := p.get(addr); err != nil {
			p.t.Fatalf("lan -> %s with %s serving: %v", addr, g.name, err)
		}
	}
	if !waitFor(2*time.Second, func() bool { return p.flowsTotal(g) >= before+4 }) {
		p.t.Errorf("%s carried %v of 4 new flows", g.name, p.flowsTotal(g)-before)
	}
	if other != nil {
		if n := p.flowsTotal(other) - otherBefore; n != 0 {
			p.t.Errorf("%s, not serving, carried %v flows", other.name, n)
		}
	}
}

// haProber is what the LAN keeps sending while the address moves: a new TCP connection to wan
// over each family and a datagram to wan's UDP echo, every 100 ms; the leak watch counts what
// reaches wan directly.
type haProber struct {
	stop func()
}

func (p *haPair) startProber() *haProber {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		pc := p.h.LAN.ListenPacket("udp", ":0")
		defer pc.Close()
		for ctx.Err() == nil {
			for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
				dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
				if c, err := p.h.LAN.Dial(dctx, "tcp", net.JoinHostPort(wan, "80")); err == nil {
					c.Close()
				}
				dcancel()
				pc.WriteTo([]byte("probe"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(wan), 123)))
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	return &haProber{stop: func() { cancel(); wg.Wait() }}
}

// echoFlow is a LAN flow in progress: it exchanges a line with wan's echo server.
type echoFlow struct {
	c net.Conn
	n int
}

func (p *haPair) openEcho() *echoFlow {
	p.t.Helper()
	cs, err := hardeningDialMany(p.h.LAN, net.JoinHostPort(netlab.WAN4, "7000"), "", 1)
	if err != nil {
		p.t.Fatalf("echo flow: %v", err)
	}
	f := &echoFlow{c: cs[0]}
	p.t.Cleanup(func() { f.c.Close() })
	if err := f.exchange(2 * time.Second); err != nil {
		p.t.Fatalf("echo flow: %v", err)
	}
	return f
}

func (f *echoFlow) exchange(within time.Duration) error {
	f.n++
	m := fmt.Sprintf("line %d\n", f.n)
	f.c.SetDeadline(time.Now().Add(within))
	if _, err := f.c.Write([]byte(m)); err != nil {
		return err
	}
	got := make([]byte, len(m))
	if _, err := io.ReadFull(f.c, got); err != nil {
		return err
	}
	if string(got) != m {
		return fmt.Errorf("echo %q, want %q", got, m)
	}
	return nil
}

// waitEnd keeps the flow talking until it fails for good, a reset or an end of stream, not a
// read that times out (a stopped gateway's kernel still takes the bytes), and returns when
// that was, from since, and how the client saw it.
func (f *echoFlow) waitEnd(since time.Time, within time.Duration) (time.Duration, string, bool) {
	stalled := ""
	for time.Since(since) < within {
		err := f.exchange(500 * time.Millisecond)
		var ne net.Error
		switch {
		case err == nil:
			time.Sleep(100 * time.Millisecond)
		case errors.As(err, &ne) && ne.Timeout():
			if stalled == "" {
				stalled = fmt.Sprintf("stalled after %v, ", time.Since(since).Round(100*time.Millisecond))
			}
		case errors.Is(err, syscall.ECONNRESET):
			return time.Since(since), stalled + "reset", true
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return time.Since(since), stalled + "closed (EOF)", true
		default:
			return time.Since(since), stalled + err.Error(), true
		}
	}
	return time.Since(since), stalled + "still open", false
}

// The HA pair: two gateways on one LAN, each running socksgate with the same config and
// keepalived sharing the LAN's gateway addresses (IPv4 and IPv6), tracking /healthz; the LAN
// host's default routes are those addresses. When the master's socksgate is killed or
// stopped, or its LAN cable pulled, new LAN flows work through the backup within the bound
// VRRP's settings give, flows in progress on the old master end and reconnect through the new
// one, and with on_crash: closed nothing reaches wan directly meanwhile (with on_crash: open it
// does: the watch sees it). The old master's return, with preemption and without, leaves one
// gateway holding the addresses and carrying the flows, and both gateways' /healthz and
// socksgate_serving say which.
func TestHAPairFailover(t *testing.T) {
	needBin(t, "keepalived", "danted", "curl")
	curl, _ := exec.LookPath("curl")
	h := netlab.NewHATopology(t)
	tp := h.Topology(h.GWA)
	serveWeb(t, tp)
	hardeningServeEcho(t, h.WAN, "[::]:7000")
	udpEcho(t, tp, 123)
	startDante(t, tp, danteOptions{})
	p := &haPair{t: t, h: h, curl: curl, watch: leakWatchStart(t, tp),
		a:      &haGateway{name: "gwa", ns: h.GWA, priority: 150},
		b:      &haGateway{name: "gwb", ns: h.GWB, priority: 100},
		client: &http.Client{Transport: &http.Transport{DialContext: h.LAN.Dial, DisableKeepAlives: true}}}
	closed := haSocksgateConfig("closed")
	for _, g := range p.gateways() {
		g.cfg = writeFile(t, g.name+".yaml", withTestState(t, closed))
		p.startSocksgate(g)
	}
	// Neither holds the addresses yet: both are standby.
	for _, g := range p.gateways() {
		if body, err := p.admin(g, "/healthz"); err != nil || !strings.HasPrefix(body, "ok\nstandby: ") {
			t.Fatalf("%s before keepalived: /healthz %q %v", g.name, body, err)
		}
	}
	start := time.Now()
	for _, g := range p.gateways() {
		p.startKeepalived(g, false)
	}
	t.Logf("keepalived: gwa holds the addresses %v after both started", p.waitHolder(p.a, start, "start").Round(10*time.Millisecond))
	p.checkServing(p.a, nil)
	p.checkCarries(p.a, p.b)

	var report []string
	// failover fails the master (gwa) with fail and brings it back with back. gwaDown: gwa's
	// socksgate does not answer meanwhile. onCrashOpen: gwa runs with on_crash: open, and the
	// LAN's traffic is expected to reach wan directly while the address moves.
	type failure struct {
		name                        string
		fail, back                  func()
		preempt, gwaDown, crashOpen bool
	}
	failover := func(t *testing.T, f failure) {
		old := p.openEcho()
		p.watch.reset(t)
		pr := p.startProber()
		t0 := time.Now()
		f.fail()
		// New flows through the backup.
		var newFlows time.Duration
		var lastErr error
		if !waitFor(haBound, func() bool {
			if lastErr = p.get(netlab.WAN4); lastErr == nil {
				newFlows = time.Since(t0)
				return true
			}
			return false
		}) {
			pr.stop()
			t.Fatalf("no new LAN flow within %v: %v (%s)\n%s", haBound, lastErr, func() string { _, s := p.holder(); return s }(), p.keepalivedLogs())
		}
		moved := p.waitHolder(p.b, t0, f.name)
		p.checkCarries(p.b, nil)
		// The flow in progress on the old master ends, and the client, reconnecting, gets
		// through the new one.
		ended, how, ok := old.waitEnd(t0, haBound)
		if !ok {
			t.Errorf("the flow in progress through gwa did not end within %v: %s", haBound, how)
		}
		again := p.openEcho()
		if flows, err := p.admin(p.b, "/flows"); err != nil || !strings.Contains(flows, net.JoinHostPort(netlab.WAN4, "7000")) {
			t.Errorf("the reconnected flow is not on gwb: %v\n%s", err, flows)
		}
		again.c.Close()
		down := p.a
		if !f.gwaDown {
			down = nil
		}
		p.checkServing(p.b, down)
		// The old master comes back.
		t1 := time.Now()
		f.back()
		want, other := p.b, p.a
		if f.preempt {
			want, other = p.a, p.b
		}
		var returned time.Duration
		if f.preempt {
			returned = p.waitHolder(p.a, t1, f.name+", return")
		} else {
			// The address stays on gwb: give gwa's track script its rise and VRRP a few
			// adverts, watching that gwb stays the one holder throughout.
			end := time.Now().Add(time.Duration(haRise*haCheckInterval+3*haAdvertInt)*time.Second + 2*time.Second)
			for time.Now().Before(end) {
				if who, state := p.holder(); who != p.b {
					t.Fatalf("nopreempt: gwa's return moved the address (%s)\n%s", state, p.keepalivedLogs())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		pr.stop()
		leaks, own := p.leaks(t)
		if own != "" {
			t.Logf("the gateways' own ICMP errors reached wan (not the LAN's traffic): %s", own)
		}
		switch {
		case f.crashOpen && leaks == "":
			t.Errorf("on_crash: open: nothing of the LAN's reached wan directly while the address moved")
		case f.crashOpen:
			t.Logf("on_crash: open: the LAN's traffic reached wan directly while the address moved: %s", leaks)
		case leaks != "":
			t.Errorf("the LAN's traffic reached wan not through the upstream while the address moved: %s", leaks)
		}
		p.checkServing(want, nil)
		p.checkCarries(want, other)
		line := fmt.Sprintf("%s: new flows after %v, address on gwb after %v, the old flow %s after %v",
			f.name, newFlows.Round(10*time.Millisecond), moved.Round(10*time.Millisecond), how, ended.Round(10*time.Millisecond))
		if f.preempt {
			line += fmt.Sprintf("; back on gwa %v after its return", returned.Round(10*time.Millisecond))
		}
		t.Log(line)
		report = append(report, line)
	}

	t.Run("sigkill", func(t *testing.T) {
		failover(t, failure{name: "SIGKILL", fail: func() { p.a.sg.Kill() }, back: func() { p.startSocksgate(p.a) },
			preempt: true, gwaDown: true})
	})
	t.Run("sigstop", func(t *testing.T) {
		failover(t, failure{name: "SIGSTOP", fail: func() { p.a.sg.Signal(syscall.SIGSTOP) }, back: func() { p.a.sg.Signal(syscall.SIGCONT) },
			preempt: true, gwaDown: true})
	})
	t.Run("lan link down", func(t *testing.T) {
		failover(t, failure{name: "LAN link down", fail: func() { h.Unplug(p.a.ns) }, back: func() { h.Plug(p.a.ns) }, preempt: true})
	})
	// The watch sees a leak when there is one: with on_crash: open the killed socksgate takes
	// its table along, and gwa routes the LAN direct until the address moves.
	t.Run("on_crash open", func(t *testing.T) {
		stopSocksgate(t, p.a.ns, p.a.sg)
		closedCfg := p.a.cfg
		p.a.cfg = writeFile(t, "gwa-open.yaml", withTestState(t, haSocksgateConfig("open")))
		p.startSocksgate(p.a)
		p.a.cfg = closedCfg
		p.waitHolder(p.a, time.Now(), "on_crash open start")
		failover(t, failure{name: "SIGKILL, on_crash open", fail: func() { p.a.sg.Kill() }, back: func() { p.startSocksgate(p.a) },
			preempt: true, gwaDown: true, crashOpen: true})
	})
	t.Run("nopreempt", func(t *testing.T) {
		for _, g := range p.gateways() {
			p.stopKeepalived(g)
		}
		start := time.Now()
		for _, g := range p.gateways() {
			p.startKeepalived(g, true)
		}
		p.waitHolder(p.a, start, "nopreempt start")
		p.checkServing(p.a, nil)
		failover(t, failure{name: "SIGKILL, nopreempt", fail: func() { p.a.sg.Kill() }, back: func() { p.startSocksgate(p.a) },
			gwaDown: true})
	})
	for _, l := range report {
		t.Log(l)
	}
}
