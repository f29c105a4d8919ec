//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
	"github.com/socksgate/socksgate/tests/netlab"
)

// The UDP part (BENCH_PARTS=udp): a datagram server in wan (udpServer, in this process) and
// a client in lan (BENCH_HELPER=udp, this binary) measure, for each contender in turn:
//
//   - sequential round trips: one 64-byte datagram out, its echo back, COUNT times; round
//     trips/s and percentiles;
//   - bulk: datagrams of udpBulkSize bytes paced at rising rates for a few seconds, lan → wan
//     (the server counts) and wan → lan (the server sends, the client counts); received
//     Mbit/s, loss and RFC 3550 jitter. iperf3 -u cannot speak SOCKS5 UDP, so the explicit
//     contender could not be measured with it; the same paced sender is used for all;
//   - the gateway's CPU per million datagrams carried (over the bulk runs);
//   - memory per live UDP session: N sessions from N client sockets, one echo each, held.
//
// redsocks' redudp relays to one fixed destination (dest_ip, dest_port in its config) and is
// reached through a REDIRECT of that destination: it can carry every test here, since they
// all talk to one server port.

const (
	udpPort     = "7000" // the datagram server in wan
	redudpPort  = "12347"
	udpSmall    = 64
	udpBulkSize = 1200
)

// udpParams are the sizes of the UDP part.
type udpParams struct {
	rounds   int
	rtts     int       // sequential round trips per contender and round
	rates    []float64 // bulk rates, Mbit/s
	bulkSecs float64
	sessions int // live sessions held for the memory figure
}

func udpBenchParams(p params) udpParams {
	u := udpParams{rounds: 3, rtts: 3000, rates: []float64{50, 100, 200, 400, 800}, bulkSecs: 3, sessions: 10000}
	if p.quick {
		u = udpParams{rounds: 1, rtts: 1000, rates: []float64{50, 200}, bulkSecs: 1, sessions: 500}
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_UDP_SESSIONS")); err == nil && v >= 0 {
		u.sessions = v
	}
	if v := os.Getenv("BENCH_UDP_RATES"); v != "" {
		u.rates = nil
		for _, f := range strings.Split(v, ",") { // "none": round trips only
			if r, err := strconv.ParseFloat(f, 64); err == nil {
				u.rates = append(u.rates, r)
			}
		}
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && v > 0 {
		u.rounds = v
	}
	return u
}

// udpBulk is one bulk run's outcome.
type udpBulk struct {
	sentMbps, recvMbps float64
	sent, recv         float64 // datagrams
	loss               float64 // fraction
	jitterMs           float64
	err                string
}

// udpResult is one contender's UDP figures over the rounds.
type udpResult struct {
	rtps, p50, p99 []float64            // round trips/s, µs
	bulk           map[string][]udpBulk // by udpBulkKey
	cpuSecs        float64              // gateway CPU during bulk runs
	cpuSys         float64              // of it, in the kernel
	dgrams         float64              // datagrams carried during them (received, both ways)
	rttErr         string
	sess           udpSessions
}

type udpSessions struct {
	n, held int
	rssKiB  float64 // per session
	// From the gateway's own /metrics (socksgate only): where the RSS goes.
	heapKiB, stackKiB, goroutines float64 // per session
	fds                           float64 // per session
	slabKiB                       float64 // per session, machine-wide kernel slab
	note                          string
	measured                      bool
}

func udpBulkKey(dir string, rate float64) string {
	return dir + " " + strconv.FormatFloat(rate, 'f', -1, 64)
}

// udpContenders are the contenders of the UDP part: the TCP part's, with UDP capture on for
// socksgate and redsocks' redudp in place of its TCP redirector.
func udpContenders(t *testing.T, tp *netlab.Topology, bin string) []contender {
	sg := func(bin, action string) func(t *testing.T) (int, func()) {
		return func(t *testing.T) (int, func()) {
			return startUDPSocksgate(t, tp, bin, action)
		}
	}
	cs := []contender{
		{name: "routing", start: func(t *testing.T) (int, func()) {
			labFilter(tp, "open")
			return 0, func() { labFilter(tp, "closed") }
		}},
		{name: "explicit", explicit: true, start: func(t *testing.T) (int, func()) {
			labFilter(tp, "proxy")
			return 0, func() { labFilter(tp, "closed") }
		}},
		{name: "socksgate → dante", baseline: "explicit", start: sg(bin, "proxy")},
		{name: "socksgate → direct", baseline: "routing", start: sg(bin, "direct")},
		{name: "redsocks redudp → dante", baseline: "explicit", start: func(t *testing.T) (int, func()) {
			labFilter(tp, "closed")
			info := map[bool]string{true: "on", false: "off"}[os.Getenv("BENCH_DEBUG") != ""]
			conf := `base { log_debug = ` + info + `; log_info = ` + info + `; log = stderr; daemon = off; redirector = iptables; }
redudp { local_ip = 0.0.0.0; local_port = ` + redudpPort + `; ip = ` + netlab.Proxy4 + `; port = ` + dantePort + `;
	dest_ip = ` + netlab.WAN4 + `; dest_port = ` + udpPort + `; udp_timeout = 120; }
`
			p := tp.GW.Start("redsocks", "-c", writeFile(t, "redudp.conf", conf))
			nftConf := `table ip benchredudp {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "` + netlab.GWLANIf + `" ip daddr ` + netlab.WAN4 + ` udp dport ` + udpPort + ` redirect to :` + redudpPort + `
	}
}
`
			tp.GW.MustRun("nft", "-f", writeFile(t, "redudp.nft", nftConf))
			return procPid(p, "redsocks"), func() {
				tp.GW.Run("nft", "delete", "table", "ip", "benchredudp")
				stopGently(p)
				if os.Getenv("BENCH_DEBUG") != "" {
					t.Logf("redsocks output, last lines:\n%s", tail(p.Output(), 20))
				}
			}
		}},
	}
	if old := os.Getenv("BENCH_COMPARE"); old != "" {
		cs = append(cs, contender{name: "socksgate[compare] → dante", baseline: "explicit", start: sg(old, "proxy")})
	}
	if only := os.Getenv("BENCH_ONLY"); only != "" {
		cs = slices.DeleteFunc(cs, func(c contender) bool {
			return c.name != "routing" && c.name != "explicit" && !strings.Contains(c.name, only)
		})
	}
	return cs
}

// startUDPSocksgate runs socksgate with UDP capture on (action proxy: through dante; direct),
// with room for the session part's clients.
func startUDPSocksgate(t *testing.T, tp *netlab.Topology, bin, action string) (int, func()) {
	labFilter(tp, "closed")
	rule := "{name: all, action: proxy, upstream: dante}"
	if action == "direct" {
		rule = "{name: all, action: direct}"
	}
	cfg := fmt.Sprintf(`log: {level: warn}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 10s, grace: 1s}
transparent: {udp: true, udp_idle: 120s, udp_max_sessions: 30000}
admin: %s
upstreams:
  - {name: dante, url: "socks5://%s:%s"}
rules:
  - %s
`, netlab.GWLANIf, udpAdmin, netlab.Proxy4, dantePort, rule)
	env := []string{"env"}
	if v := os.Getenv("BENCH_UDP_ENV"); v != "" {
		env = append(env, strings.Fields(v)...)
	}
	if v := os.Getenv("BENCH_MEMPROFILE"); v != "" {
		// A socksgate built with -tags memprof writes its heap there while the sessions
		// are held (SIGUSR2).
		env = append(env, "SOCKSGATE_MEMPROFILE="+v+"-"+action)
	}
	p := tp.GW.Start(append(env, bin, "run", "-c", writeFile(t, "socksgate-udp.yaml", cfg))...)
	tp.GW.WaitListening("127.0.0.1:12345", 10*time.Second)
	waitRules(t, tp)
	return procPid(p, "socksgate"), func() {
		stopGently(p)
		tp.GW.Run("nft", "delete", "table", "inet", "socksgate")
		if os.Getenv("BENCH_DEBUG") != "" {
			t.Logf("socksgate output, last lines:\n%s", tail(p.Output(), 8))
		}
	}
}

// runUDPBench runs the UDP part with its own contenders.
func runUDPBench(t *testing.T, tp *netlab.Topology, bin string, p params, check func()) (udpParams, []contender, map[string]*udpResult) {
	u := udpBenchParams(p)
	for _, ns := range []*netlab.NS{tp.LAN, tp.WAN} {
		// Room for a burst of the pacer's in the receivers' buffers (SetReadBuffer is capped
		// by rmem_max, per namespace).
		ns.Run("sysctl", "-qw", "net.core.rmem_max=8388608", "net.core.wmem_max=8388608")
	}
	pc := tp.WAN.ListenPacket("udp", ":"+udpPort)
	pc.(*net.UDPConn).SetReadBuffer(4 << 20)
	srv := serveUDP(t, pc)
	cs := udpContenders(t, tp, bin)
	all := map[string]*udpResult{}
	for _, c := range cs {
		all[c.name] = &udpResult{bulk: map[string][]udpBulk{}}
	}
	addr := net.JoinHostPort(netlab.WAN4, udpPort)
	for round := range u.rounds {
		for _, c := range cs {
			check()
			t.Logf("udp round %d: %s", round+1, c.name)
			pid, stop := startContender(t, tp, c)
			r := all[c.name]
			endTrace := startTrace(t, c, pid, "udp round trips")
			out, err := udpHelper(tp, c, "rtt", addr, strconv.Itoa(u.rtts), strconv.Itoa(udpSmall))
			endTrace(u.rtts)
			var n int
			var secs, p50, p99 float64
			if err == nil {
				_, err = fmt.Sscanf(out[strings.Index(out, "result"):], "result rtts=%d secs=%g p50=%g p99=%g", &n, &secs, &p50, &p99)
			}
			if err != nil || n == 0 {
				r.rttErr = fmt.Sprintf("%v %s", err, lastLine(out))
				t.Logf("%s rtt: %s", c.name, r.rttErr)
			} else {
				r.rtps, r.p50, r.p99 = append(r.rtps, float64(n)/secs), append(r.p50, p50), append(r.p99, p99)
			}
			for _, dir := range []string{"up", "down"} {
				for _, rate := range u.rates {
					check()
					before := procCPU(pid)
					b := runUDPBulk(tp, c, srv, addr, dir, rate, u.bulkSecs)
					used := procCPU(pid).sub(before)
					if b.err != "" {
						t.Logf("%s bulk %s %g Mbit/s: %s", c.name, dir, rate, b.err)
					}
					r.cpuSecs += used.secs()
					r.cpuSys += used.sysSecs()
					r.dgrams += b.recv
					r.bulk[udpBulkKey(dir, rate)] = append(r.bulk[udpBulkKey(dir, rate)], b)
				}
			}
			stop()
		}
	}
	for _, c := range cs {
		if !strings.HasPrefix(c.name, "socksgate") || u.sessions == 0 {
			continue
		}
		check()
		t.Logf("udp sessions %d: %s", u.sessions, c.name)
		pid, stop := startContender(t, tp, c)
		n := u.sessions
		if c.name != "socksgate → direct" {
			// A session through dante holds 2 descriptors in socksgate (the association's two;
			// the reply socket is shared by every session the remote answers) and 3 in dante:
			// the lab's open-files cap is 20,000.
			n = min(n, 5000)
		}
		all[c.name].sess = runUDPSessions(t, tp, c, pid, addr, n)
		stop()
	}
	return u, cs, all
}

// udpHelper runs the UDP client in lan and returns its output.
func udpHelper(tp *netlab.Topology, c contender, args ...string) (string, error) {
	socksURL := "-"
	if c.explicit {
		socksURL = "socks5://" + net.JoinHostPort(netlab.Proxy4, dantePort)
	}
	self, _ := os.Executable()
	args = append([]string{"env", "BENCH_HELPER=udp", self, args[0], args[1], socksURL}, args[2:]...)
	out, err := tp.LAN.Run(args...)
	if err != nil {
		return out, fmt.Errorf("%v: %s", err, tail(out, 3))
	}
	if !strings.Contains(out, "result") {
		return out, fmt.Errorf("no result: %s", tail(out, 3))
	}
	return out, nil
}

// runUDPBulk runs one bulk case: dir "up" (lan sends, the server counts) or "down".
func runUDPBulk(tp *netlab.Topology, c contender, srv *udpServer, addr, dir string, rate, secs float64) udpBulk {
	var b udpBulk
	out, err := udpHelper(tp, c, dir, addr, strconv.FormatFloat(rate, 'f', -1, 64), strconv.FormatFloat(secs, 'f', -1, 64), strconv.Itoa(udpBulkSize))
	if err != nil {
		b.err = err.Error()
		return b
	}
	var id uint64
	var elapsed float64
	if _, err := fmt.Sscanf(out[strings.Index(out, "result"):], "result id=%d sent=%g recv=%g secs=%g jitter_ms=%g", &id, &b.sent, &b.recv, &elapsed, &b.jitterMs); err != nil {
		b.err = fmt.Sprintf("helper output %q: %v", lastLine(out), err)
		return b
	}
	if dir == "down" {
		// The server sent; it knows how many.
		st := srv.stats(id)
		b.sent = float64(st.sent)
	}
	if b.sent > 0 {
		b.loss = max(0, 1-b.recv/b.sent)
	}
	if elapsed > 0 {
		b.sentMbps = b.sent * udpBulkSize * 8 / elapsed / 1e6
		b.recvMbps = b.recv * udpBulkSize * 8 / elapsed / 1e6
	}
	return b
}

// runUDPSessions holds n sessions (n client sockets, one echo each) and measures what the
// gateway spends on them.
func runUDPSessions(t *testing.T, tp *netlab.Topology, c contender, pid int, addr string, n int) udpSessions {
	r := udpSessions{n: n, measured: true}
	settle()
	rss0, fd0, slab0 := statusKiB(pid, "VmRSS"), fdCount(pid), meminfoKiB("Slab")
	m0 := goMetrics(tp, c)
	self, _ := os.Executable()
	h := tp.LAN.Start("env", "BENCH_HELPER=udp", self, "hold", addr, "-", strconv.Itoa(n))
	if !h.WaitOutput("ready", 180*time.Second) {
		h.Kill()
		r.note = "no ready line from the client: " + lastLine(h.Output())
		return r
	}
	settle()
	out := h.Output()
	out = out[strings.Index(out, "ready"):]
	var failed int
	fmt.Sscanf(out, "ready held=%d errors=%d", &r.held, &failed)
	rss1, fd1, slab1 := statusKiB(pid, "VmRSS"), fdCount(pid), meminfoKiB("Slab")
	m1 := goMetrics(tp, c)
	if os.Getenv("BENCH_MEMPROFILE") != "" && strings.HasPrefix(c.name, "socksgate") {
		syscall.Kill(pid, syscall.SIGUSR2)
		time.Sleep(2 * time.Second)
	}
	h.Kill()
	if r.held > 0 {
		k := float64(r.held)
		r.rssKiB, r.fds, r.slabKiB = (rss1-rss0)/k, float64(fd1-fd0)/k, (slab1-slab0)/k
		if m0 != nil && m1 != nil {
			r.heapKiB = (m1["go_memstats_heap_inuse_bytes"] - m0["go_memstats_heap_inuse_bytes"]) / 1024 / k
			r.stackKiB = (m1["go_memstats_stack_inuse_bytes"] - m0["go_memstats_stack_inuse_bytes"]) / 1024 / k
			r.goroutines = (m1["go_goroutines"] - m0["go_goroutines"]) / k
			var d []string
			for _, n := range []string{"sys_bytes", "heap_sys_bytes", "heap_inuse_bytes", "heap_idle_bytes", "heap_released_bytes", "stack_sys_bytes", "mspan_sys_bytes", "gc_sys_bytes", "other_sys_bytes"} {
				d = append(d, fmt.Sprintf("%s %+.2f", n, (m1["go_memstats_"+n]-m0["go_memstats_"+n])/1024/k))
			}
			t.Logf("%s: Go runtime, KiB per session: %s", c.name, strings.Join(d, ", "))
		}
	}
	if failed > 0 {
		r.note = fmt.Sprintf("%d of %d sessions got no echo", failed, n)
		if lim := nofileLimit(pid); lim > 0 && r.fds > 0 && r.fds*float64(n) > float64(lim)*0.9 {
			r.note += fmt.Sprintf(" (fd cap: %.3g fds/session × %d ≥ the open-files limit %d, less the gateway's reserve)", r.fds, n, lim)
		}
	}
	return r
}

// udpAdmin is the UDP part's socksgate admin endpoint, in gw: its /metrics say where a
// session's memory goes.
const udpAdmin = "127.0.0.1:9091"

// goMetrics reads socksgate's /metrics in gw (nil for other contenders, or on failure).
func goMetrics(tp *netlab.Topology, c contender) map[string]float64 {
	if !strings.HasPrefix(c.name, "socksgate") {
		return nil
	}
	out, err := tp.GW.Run("curl", "-sf", "http://"+udpAdmin+"/metrics")
	if err != nil {
		return nil
	}
	m := map[string]float64{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "go_") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

// udpServer answers the lan client's datagrams in wan. The first byte says what a datagram is:
//
//	'E' ...                      echo it back
//	'U' id seq sent_ns ...       a bulk datagram sent up: counted under id
//	'Q' id                       the counts of id: answered 'R' id count jitter_ns
//	'D' id rate_bps ms size      send datagrams of size down to the sender at rate for ms
//	                             ('d' id seq sent_ns ...), once per id
type udpServer struct {
	pc net.PacketConn
	mu sync.Mutex
	up map[uint64]*udpCount
}

type udpCount struct {
	n, sent     uint64
	jitter      float64 // ns, RFC 3550
	lastTransit int64
	started     bool
}

func serveUDP(t *testing.T, pc net.PacketConn) *udpServer {
	s := &udpServer{pc: pc, up: map[uint64]*udpCount{}}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == 0 {
				continue
			}
			b := buf[:n]
			switch b[0] {
			case 'E':
				pc.WriteTo(b, from)
			case 'U':
				if n < 25 {
					continue
				}
				id, sent := binary.BigEndian.Uint64(b[1:]), int64(binary.BigEndian.Uint64(b[17:]))
				s.mu.Lock()
				c := s.count(id)
				c.n++
				c.jitter, c.lastTransit = jitterStep(c.jitter, c.lastTransit, time.Now().UnixNano()-sent, c.n)
				s.mu.Unlock()
			case 'Q':
				if n < 9 {
					continue
				}
				id := binary.BigEndian.Uint64(b[1:])
				s.mu.Lock()
				c := s.count(id)
				r := make([]byte, 25)
				r[0] = 'R'
				binary.BigEndian.PutUint64(r[1:], id)
				binary.BigEndian.PutUint64(r[9:], c.n)
				binary.BigEndian.PutUint64(r[17:], uint64(c.jitter))
				s.mu.Unlock()
				pc.WriteTo(r, from)
			case 'D':
				if n < 33 {
					continue
				}
				id := binary.BigEndian.Uint64(b[1:])
				s.mu.Lock()
				c := s.count(id)
				start := !c.started
				c.started = true
				s.mu.Unlock()
				if start {
					rate, ms, size := binary.BigEndian.Uint64(b[9:]), binary.BigEndian.Uint64(b[17:]), binary.BigEndian.Uint64(b[25:])
					go s.sendDown(c, id, from, float64(rate), time.Duration(ms)*time.Millisecond, int(min(max(size, 25), 65000)))
				}
			}
		}
	}()
	return s
}

func (s *udpServer) count(id uint64) *udpCount {
	c := s.up[id]
	if c == nil {
		c = &udpCount{}
		s.up[id] = c
	}
	return c
}

func (s *udpServer) stats(id uint64) udpCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.count(id)
}

func (s *udpServer) sendDown(c *udpCount, id uint64, to net.Addr, rate float64, d time.Duration, size int) {
	b := make([]byte, size)
	b[0] = 'd'
	binary.BigEndian.PutUint64(b[1:], id)
	sent := pace(rate, size, d, func(seq uint64) {
		binary.BigEndian.PutUint64(b[9:], seq)
		binary.BigEndian.PutUint64(b[17:], uint64(time.Now().UnixNano()))
		s.pc.WriteTo(b, to)
	})
	s.mu.Lock()
	c.sent = sent
	s.mu.Unlock()
}

// pace calls send at rate bits/s for d, datagrams of size bytes, in bursts each millisecond
// (as iperf3's pacing timer does), and returns how many it sent.
func pace(rate float64, size int, d time.Duration, send func(seq uint64)) uint64 {
	perNs := rate / 8 / float64(size) / 1e9
	start := time.Now()
	var seq uint64
	for {
		el := time.Since(start)
		if el >= d {
			return seq
		}
		for due := uint64(float64(el.Nanoseconds()) * perNs); seq < due; seq++ {
			send(seq)
		}
		time.Sleep(time.Millisecond)
	}
}

// jitterStep is RFC 3550's interarrival jitter after one more datagram of transit time
// transit (ns); n counts the datagrams so far.
func jitterStep(j float64, last, transit int64, n uint64) (float64, int64) {
	if n > 1 {
		d := float64(transit - last)
		j += (math.Abs(d) - j) / 16
	}
	return j, transit
}

// helperUDP is the lan side of the UDP part:
//
//	udp rtt  ADDR SOCKS|- COUNT SIZE        sequential round trips
//	udp up   ADDR SOCKS|- MBPS SECS SIZE    paced datagrams to the server, which counts them
//	udp down ADDR SOCKS|- MBPS SECS SIZE    the server sends, this counts
//	udp hold ADDR SOCKS|- N                 N sockets, one echo each, "ready", held until killed
func helperUDP(args []string) int {
	if len(args) < 4 {
		fmt.Fprintln(os.Stderr, "udp: MODE ADDR SOCKS ARGS...")
		return 2
	}
	mode, addr, socksURL := args[0], args[1], args[2]
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	num := func(i int) float64 {
		if i >= len(args) {
			return 0
		}
		v, _ := strconv.ParseFloat(args[i], 64)
		return v
	}
	if mode == "hold" {
		return udpHold(dst, int(num(3)))
	}
	c, err := openDgram(socksURL, dst)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	switch mode {
	case "rtt":
		return udpRTT(c, int(num(3)), int(num(4)))
	case "up", "down":
		return udpBulkClient(c, mode, num(3)*1e6, time.Duration(num(4)*float64(time.Second)), int(num(5)))
	}
	fmt.Fprintln(os.Stderr, "udp: unknown mode", mode)
	return 2
}

// dgramConn is the client's socket: a connected UDP socket, or a SOCKS5 UDP association.
type dgramConn struct {
	c   *net.UDPConn
	a   *socksclient.Association
	dst socks.Addr
}

func openDgram(socksURL string, dst netip.AddrPort) (*dgramConn, error) {
	if socksURL == "-" {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return nil, err
		}
		c.SetReadBuffer(4 << 20)
		return &dgramConn{c: c}, nil
	}
	u, err := url.Parse(socksURL)
	if err != nil {
		return nil, err
	}
	d, err := socksclient.FromURL(u)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := d.ListenPacket(ctx)
	if err != nil {
		return nil, err
	}
	return &dgramConn{a: pc.(*socksclient.Association), dst: socks.AddrFromAddrPort(dst)}, nil
}

func (d *dgramConn) send(b []byte) error {
	var err error
	if d.c != nil {
		_, err = d.c.Write(b)
	} else {
		_, err = d.a.WriteToSocks(b, d.dst)
	}
	return err
}

func (d *dgramConn) recv(b []byte) (int, error) {
	if d.c != nil {
		return d.c.Read(b)
	}
	n, _, err := d.a.ReadFromSocks(b)
	return n, err
}

func (d *dgramConn) setReadDeadline(t time.Time) {
	if d.c != nil {
		d.c.SetReadDeadline(t)
	} else {
		d.a.SetReadDeadline(t)
	}
}

func (d *dgramConn) Close() {
	if d.c != nil {
		d.c.Close()
	} else {
		d.a.Close()
	}
}

// udpRTT sends count datagrams of size one after the other, each when the previous one's echo
// is back (a lost one is sent again after 200 ms), and prints the round trips' rate and
// percentiles in µs.
func udpRTT(c *dgramConn, count, size int) int {
	b := make([]byte, max(size, 9))
	b[0] = 'E'
	in := make([]byte, 2048)
	// Warm the path: the session's first datagram opens it.
	for i := 0; ; i++ {
		c.send(b)
		c.setReadDeadline(time.Now().Add(time.Second))
		if _, err := c.recv(in); err == nil {
			break
		} else if i == 10 {
			fmt.Fprintln(os.Stderr, "no echo:", err)
			return 1
		}
	}
	lat := make([]time.Duration, 0, count)
	start := time.Now()
	for i := range count {
		binary.BigEndian.PutUint64(b[1:], uint64(i))
		t0 := time.Now()
		for {
			c.send(b)
			c.setReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.recv(in)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				fmt.Fprintln(os.Stderr, "recv:", err)
				return 1
			}
			if n >= 9 && binary.BigEndian.Uint64(in[1:]) == uint64(i) {
				break
			}
		}
		lat = append(lat, time.Since(t0))
	}
	el := time.Since(start).Seconds()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1000
	}
	fmt.Printf("result rtts=%d secs=%.4f p50=%.1f p99=%.1f\n", len(lat), el, pct(0.5), pct(0.99))
	return 0
}

// udpBulkClient runs one bulk case and prints what was sent and received.
func udpBulkClient(c *dgramConn, dir string, rate float64, d time.Duration, size int) int {
	id := uint64(time.Now().UnixNano())
	in := make([]byte, 65536)
	if dir == "up" {
		b := make([]byte, size)
		b[0] = 'U'
		binary.BigEndian.PutUint64(b[1:], id)
		start := time.Now()
		sent := pace(rate, size, d, func(seq uint64) {
			binary.BigEndian.PutUint64(b[9:], seq)
			binary.BigEndian.PutUint64(b[17:], uint64(time.Now().UnixNano()))
			c.send(b)
		})
		el := time.Since(start).Seconds()
		time.Sleep(300 * time.Millisecond) // the last ones in flight
		q := make([]byte, 9)
		q[0] = 'Q'
		binary.BigEndian.PutUint64(q[1:], id)
		for range 20 {
			c.send(q)
			c.setReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				n, err := c.recv(in)
				if err != nil {
					break
				}
				if n >= 25 && in[0] == 'R' && binary.BigEndian.Uint64(in[1:]) == id {
					fmt.Printf("result id=%d sent=%d recv=%d secs=%.4f jitter_ms=%.4f\n", id, sent, binary.BigEndian.Uint64(in[9:]), el,
						float64(binary.BigEndian.Uint64(in[17:]))/1e6)
					return 0
				}
			}
		}
		fmt.Fprintln(os.Stderr, "no counts from the server")
		return 1
	}
	req := make([]byte, 33)
	req[0] = 'D'
	binary.BigEndian.PutUint64(req[1:], id)
	binary.BigEndian.PutUint64(req[9:], uint64(rate))
	binary.BigEndian.PutUint64(req[17:], uint64(d.Milliseconds()))
	binary.BigEndian.PutUint64(req[25:], uint64(size))
	var n, recv uint64
	var jitter float64
	var last int64
	var lastAt time.Time
	c.send(req)
	retry := time.Now().Add(300 * time.Millisecond)
	end := time.Now().Add(d + 3*time.Second)
	for time.Now().Before(end) {
		c.setReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, err := c.recv(in)
		if err != nil {
			if recv == 0 && time.Now().After(retry) {
				c.send(req) // the request was lost (the server starts once per id)
				retry = time.Now().Add(300 * time.Millisecond)
			}
			if recv > 0 && time.Since(lastAt) > 300*time.Millisecond {
				break
			}
			continue
		}
		if k < 25 || in[0] != 'd' || binary.BigEndian.Uint64(in[1:]) != id {
			continue
		}
		now := time.Now()
		recv++
		lastAt = now
		n = recv
		jitter, last = jitterStep(jitter, last, now.UnixNano()-int64(binary.BigEndian.Uint64(in[17:])), n)
	}
	fmt.Printf("result id=%d sent=0 recv=%d secs=%.4f jitter_ms=%.4f\n", id, recv, d.Seconds(), jitter/1e6)
	return 0
}

// udpHold opens n sockets to dst, each sending until its echo is back, prints "ready" and
// holds them.
func udpHold(dst netip.AddrPort, n int) int {
	conns := make([]*net.UDPConn, 0, n)
	var mu sync.Mutex
	var bad int
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
			ok := false
			if err == nil {
				b := []byte("Ehello")
				in := make([]byte, 64)
				for range 3 {
					c.Write(b)
					c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
					if _, err := c.Read(in); err == nil {
						ok = true
						break
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				bad++
				if c != nil {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		})
	}
	wg.Wait()
	fmt.Printf("ready held=%d errors=%d\n", len(conns), bad)
	select {}
}

// renderUDP writes the UDP part as markdown.
func renderUDP(u udpParams, cs []contender, all map[string]*udpResult) string {
	var b strings.Builder
	b.WriteString("\n## UDP\n\n")
	fmt.Fprintf(&b, "A datagram server in wan, a client in lan (`BENCH_HELPER=udp`); explicit speaks SOCKS5 UDP to dante (socksclient's association); "+
		"socksgate captures with TPROXY (transparent.udp); redsocks' redudp relays to one fixed destination (the server) through a REDIRECT. "+
		"%d round(s), alternating contenders; medians over rounds.\n\n", u.rounds)
	fmt.Fprintf(&b, "### Sequential round trips (%d × %d bytes, one at a time)\n\n", u.rtts, udpSmall)
	b.WriteString("| contender | round trips/s | p50 µs | p99 µs | ÷ explicit | ÷ redudp | ÷ routing | note |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
	rt := func(name string) float64 {
		if r := all[name]; r != nil {
			return median(r.rtps)
		}
		return math.NaN()
	}
	for _, c := range cs {
		r := all[c.name]
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name, withRange(r.rtps, 0), num(median(r.p50), 1), num(median(r.p99), 1),
			num(median(r.rtps)/rt("explicit"), 2), num(median(r.rtps)/rt("redsocks redudp → dante"), 2), num(median(r.rtps)/rt("routing"), 2), r.rttErr)
	}
	fmt.Fprintf(&b, "\n### Bulk (%d-byte datagrams paced for %gs; received Mbit/s, loss, jitter)\n\n", udpBulkSize, u.bulkSecs)
	b.WriteString("| direction | offered Mbit/s |")
	for _, c := range cs {
		fmt.Fprintf(&b, " %s |", c.name)
	}
	b.WriteString("\n|---|---:|")
	for range cs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, dir := range []string{"up", "down"} {
		arrow := map[string]string{"up": "lan → wan", "down": "wan → lan"}[dir]
		for _, rate := range u.rates {
			fmt.Fprintf(&b, "| %s | %g |", arrow, rate)
			for _, c := range cs {
				bs := all[c.name].bulk[udpBulkKey(dir, rate)]
				fmt.Fprintf(&b, " %s |", bulkCell(bs))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nCells: received Mbit/s (median over rounds) / loss % / jitter ms.\n\n")
	// Where explicit starts to lose: the first rate with loss ≥ 1%, each direction.
	b.WriteString("| direction | explicit starts to lose at | explicit Mbit/s there | socksgate → dante there | ÷ explicit |\n|---|---:|---:|---:|---:|\n")
	for _, dir := range []string{"up", "down"} {
		ex, sg := all["explicit"], all["socksgate → dante"]
		if ex == nil || sg == nil {
			break
		}
		at := math.NaN()
		for _, rate := range u.rates {
			if m := medianBulk(ex.bulk[udpBulkKey(dir, rate)]); m.loss >= 0.01 {
				at = rate
				break
			}
		}
		if math.IsNaN(at) && len(u.rates) > 0 {
			at = u.rates[len(u.rates)-1] // never lost: the highest rate offered
		}
		e, s := medianBulk(ex.bulk[udpBulkKey(dir, at)]), medianBulk(sg.bulk[udpBulkKey(dir, at)])
		fmt.Fprintf(&b, "| %s | %g | %s | %s | **%s** |\n", dir, at, num(e.recvMbps, 1), num(s.recvMbps, 1), num(s.recvMbps/e.recvMbps, 2))
	}
	b.WriteString("\n| contender | gateway CPU s per million datagrams (bulk runs, received both ways) |\n|---|---:|\n")
	for _, c := range cs {
		r := all[c.name]
		if r.dgrams > 0 && (strings.HasPrefix(c.name, "socksgate") || strings.HasPrefix(c.name, "redsocks")) {
			fmt.Fprintf(&b, "| %s | %s%s |\n", c.name, num(r.cpuSecs/r.dgrams*1e6, 2), kernelShare(r.cpuSys, r.cpuSecs))
		}
	}
	b.WriteString("\n### Live UDP sessions (one echo each, then held)\n\nHeap, stacks and goroutines are socksgate's own /metrics (Go runtime), before and after.\n\n| contender | sessions held | gateway RSS KiB/session | of it heap in use | stacks | goroutines/session | fds/session | kernel slab KiB/session | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range cs {
		s := all[c.name].sess
		if !s.measured {
			continue
		}
		fmt.Fprintf(&b, "| %s | %d of %d | %s | %s | %s | %s | %s | %s | %s |\n", c.name, s.held, s.n, num(s.rssKiB, 2), num(s.heapKiB, 2), num(s.stackKiB, 2), num(s.goroutines, 2), num(s.fds, 2), num(s.slabKiB, 2), s.note)
	}
	return b.String()
}

func medianBulk(bs []udpBulk) udpBulk {
	var ok []udpBulk
	for _, x := range bs {
		if x.err == "" {
			ok = append(ok, x)
		}
	}
	if len(ok) == 0 {
		return udpBulk{recvMbps: math.NaN(), loss: math.NaN(), jitterMs: math.NaN()}
	}
	slices.SortFunc(ok, func(a, b udpBulk) int { return cmpFloat(a.recvMbps, b.recvMbps) })
	return ok[len(ok)/2]
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func bulkCell(bs []udpBulk) string {
	if len(bs) == 0 {
		return "–"
	}
	m := medianBulk(bs)
	if math.IsNaN(m.recvMbps) {
		return "failed"
	}
	return fmt.Sprintf("%s / %s%% / %s", num(m.recvMbps, 1), num(100*m.loss, 2), num(m.jitterMs, 3))
}
