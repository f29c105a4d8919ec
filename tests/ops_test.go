//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/tests/netlab"
)

// opsBin is socksgate built the way it ships (no race detector, static, stripped) into a
// directory every user may read, for the unprivileged and memory tests.
var (
	opsBinOnce sync.Once
	opsBinPath string
	opsBinErr  error
)

func opsShippedBinary(t *testing.T) string {
	t.Helper()
	opsBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "socksgate-ops-")
		if err != nil {
			opsBinErr = err
			return
		}
		os.Chmod(dir, 0o755)
		opsBinPath = filepath.Join(dir, "socksgate")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", opsBinPath, "../cmd/socksgate")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			opsBinErr = fmt.Errorf("build: %v: %s", err, out)
		}
	})
	if opsBinErr != nil {
		t.Fatal(opsBinErr)
	}
	return opsBinPath
}

// opsPublicConfig writes a config file that an unprivileged user can read.
func opsPublicConfig(t *testing.T, yaml string) string {
	t.Helper()
	// Not t.TempDir: its parent is private to root.
	dir, err := os.MkdirTemp("", "socksgate-ops-cfg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "socksgate.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// opsGet fetches url from inside ns.
func opsGet(ns *netlab.NS, url string) (string, error) {
	c := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: ns.Dial, DisableKeepAlives: true},
	}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

type opsFlow struct {
	Src, Dst, Inbound, Upstream, Rule, Action string
	Age                                       float64 `json:"age_seconds"`
	BytesUp                                   uint64  `json:"bytes_up"`
	BytesDown                                 uint64  `json:"bytes_down"`
}

// opsProcStatus reads one field (e.g. "VmRSS", "CapEff", "Uid") of /proc/PID/status.
func opsProcStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// The admin endpoint lists a live transparent flow with its route and growing byte counts,
// counts it in /metrics once it ends, answers /healthz, and `socksgate status` prints it.
func TestOpsAdminEndpointShowsFlows(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080", "admin: 127.0.0.1:9091\n"))
	const base = "http://127.0.0.1:9091"

	if body, err := opsGet(tp.GW, base+"/healthz"); err != nil || body != "ok\n" {
		t.Fatalf("healthz: %v %q", err, body)
	}
	// A slow download stays live long enough to be seen: small socket buffers on the way to the
	// client, or the kernel takes the whole body at once (the flow ends when the origin closes,
	// its last bytes still queued for the client) and the flow is gone before it is looked at.
	tp.GW.MustRun("sysctl", "-qw", "net.ipv4.tcp_wmem=4096 16384 65536")
	tp.LAN.MustRun("sysctl", "-qw", "net.ipv4.tcp_rmem=4096 16384 65536")
	dl := tp.LAN.Start("curl", "-sS", "-o", "/dev/null", "--limit-rate", "200k", "--max-time", "30",
		urlFor(netlab.WAN4, "/bytes?n=1500000"))
	var live opsFlow
	ok := waitFor(10*time.Second, func() bool {
		body, err := opsGet(tp.GW, base+"/flows")
		if err != nil {
			return false
		}
		var flows []opsFlow
		if json.Unmarshal([]byte(body), &flows) != nil || len(flows) != 1 {
			return false
		}
		live = flows[0]
		return live.BytesDown > 100_000 && live.BytesUp > 0
	})
	if !ok {
		t.Fatalf("no live flow with bytes in /flows; last %+v\n%s", live, gw.Output())
	}
	if live.Dst != netlab.WAN4+":80" || !strings.HasPrefix(live.Src, netlab.LAN4+":") || live.Inbound != "redirect" ||
		live.Upstream != "socks5://"+netlab.Proxy4+":1080" || live.Rule == "" || live.Action != "proxy" {
		t.Fatalf("live flow: %+v", live)
	}
	status, err := tp.GW.Run(socksgateBin, "status", "-a", "127.0.0.1:9091")
	if err != nil || !strings.Contains(status, netlab.WAN4+":80") || !strings.Contains(status, "main") || !strings.Contains(status, "FLOWS (1)") {
		t.Fatalf("socksgate status: %v\n%s", err, status)
	}
	t.Logf("socksgate status:\n%s", status)
	if exited, err := dl.Wait(40 * time.Second); !exited || err != nil {
		t.Fatalf("download: exited=%v err=%v %s", exited, err, dl.Output())
	}

	want := []string{
		`socksgate_flows_total{inbound="redirect",outcome="ok",upstream="socks5://` + netlab.Proxy4 + `:1080"} 1`,
		`socksgate_dial_duration_seconds_count{upstream="socks5://` + netlab.Proxy4 + `:1080"} 1`,
		`socksgate_upstream_up{group="",upstream="main"} 1`,
		`socksgate_udp_sessions 0`,
		`go_goroutines `,
	}
	var metrics string
	if !waitFor(5*time.Second, func() bool {
		metrics, _ = opsGet(tp.GW, base+"/metrics")
		for _, w := range want {
			if !strings.Contains(metrics, w) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("metrics lack one of %q:\n%s", want, metrics)
	}
	down := opsMetric(metrics, `socksgate_flow_bytes_total{direction="down",inbound="redirect",upstream="socks5://`+netlab.Proxy4+`:1080"}`)
	if down < 1_500_000 || down > 1_510_000 {
		t.Fatalf("bytes down %v, want the 1500000-byte body plus headers", down)
	}
	if body, _ := opsGet(tp.GW, base+"/flows"); strings.TrimSpace(body) != "[]" {
		t.Fatalf("ended flow still listed: %s", body)
	}
	// The admin port is closed with the rest at shutdown.
	gw.Signal(syscall.SIGTERM)
	gw.Wait(10 * time.Second)
	if _, err := opsGet(tp.GW, base+"/healthz"); err == nil {
		t.Fatal("healthz answers after exit")
	}
}

// /flows lists live UDP sessions as well, both kinds, through dante: a transparent one (inbound
// tproxy) and an explicit SOCKS5 association, each with its first destination, route and bytes;
// each leaves the list when it ends (idle timeout, the client closing its association).
func TestOpsFlowsListUDPSessions(t *testing.T) {
	tp := netlab.NewTopology(t)
	explicitUDPEcho(t, tp)
	startDante(t, tp, danteOptions{})
	gw := startSocksgate(t, tp.GW, explicitConfig("socks5://"+netlab.Proxy4+":1080", "  - {name: via-dante, action: proxy, upstream: main}",
		"transparent: {udp: true, udp_port: 12346, udp_idle: 2s}\nadmin: 127.0.0.1:9091\n"))
	const base = "http://127.0.0.1:9091"
	upstream := "socks5://" + netlab.Proxy4 + ":1080"

	pc := tp.LAN.ListenPacket("udp", ":0")
	defer pc.Close()
	echo4 := netip.AddrPortFrom(netip.MustParseAddr(netlab.WAN4), 7)
	// One datagram each way, no retry: the byte counts are checked below.
	if got, _, err := udpExchange(pc, echo4, "transparent", 1, 5*time.Second); err != nil || got != "transparent" {
		t.Fatalf("transparent datagram: %v %q\n%s", err, got, gw.Output())
	}
	assoc := explicitAssociate(t, tp.LAN, explicitSOCKS4)
	to6 := socks.Addr{IP: netip.MustParseAddr(netlab.WAN6), Port: 7}
	if got, _, err := assoc.roundTrip(to6, []byte("explicit!")); err != nil || string(got) != "explicit!" {
		t.Fatalf("explicit datagram: %v %q\n%s", err, got, gw.Output())
	}

	udpFlows := func() (tproxy, explicit []opsFlow) {
		body, err := opsGet(tp.GW, base+"/flows")
		if err != nil {
			t.Fatalf("/flows: %v", err)
		}
		var flows []struct {
			opsFlow
			Network string
		}
		if err := json.Unmarshal([]byte(body), &flows); err != nil {
			t.Fatalf("/flows: %v: %s", err, body)
		}
		for _, f := range flows {
			switch {
			case f.Network != "udp":
				t.Errorf("unexpected flow %+v", f)
			case f.Inbound == "tproxy":
				tproxy = append(tproxy, f.opsFlow)
			case f.Inbound == "socks":
				explicit = append(explicit, f.opsFlow)
			default:
				t.Errorf("unexpected udp flow %+v", f)
			}
		}
		return tproxy, explicit
	}
	tproxy, explicit := udpFlows()
	if len(tproxy) != 1 || len(explicit) != 1 {
		t.Fatalf("/flows lists %d transparent and %d explicit udp sessions, want 1 each: %+v %+v", len(tproxy), len(explicit), tproxy, explicit)
	}
	tf, ef := tproxy[0], explicit[0]
	if tf.Dst != echo4.String() || tf.Src != netlab.LAN4+":"+strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port) ||
		tf.Upstream != upstream || tf.Rule != "via-dante" || tf.Action != "proxy" || tf.BytesUp != 11 || tf.BytesDown != 11 {
		t.Errorf("transparent session: %+v", tf)
	}
	if ef.Dst != "["+netlab.WAN6+"]:7" || !strings.HasPrefix(ef.Src, netlab.LAN4+":") ||
		ef.Upstream != upstream || ef.Rule != "via-dante" || ef.Action != "proxy" || ef.BytesUp != 9 || ef.BytesDown != 9 {
		t.Errorf("explicit association: %+v", ef)
	}
	metrics, _ := opsGet(tp.GW, base+"/metrics")
	if n, total := opsMetric(metrics, "socksgate_udp_sessions"), opsMetric(metrics, "socksgate_udp_sessions_total"); n != 2 || total != 2 {
		t.Errorf("socksgate_udp_sessions %v, _total %v, want 2 and 2", n, total)
	}
	status, err := tp.GW.Run(socksgateBin, "status", "-a", "127.0.0.1:9091")
	if err != nil || strings.Count(status, "udp") < 2 || !strings.Contains(status, "tproxy") {
		t.Errorf("socksgate status: %v\n%s", err, status)
	}
	t.Logf("socksgate status:\n%s", status)

	assoc.ctrl.Close()
	if !waitFor(5*time.Second, func() bool { _, e := udpFlows(); return len(e) == 0 }) {
		t.Errorf("closed association still listed")
	}
	if !waitFor(6*time.Second, func() bool { tp, _ := udpFlows(); return len(tp) == 0 }) {
		t.Errorf("idle transparent session still listed")
	}
	metrics, _ = opsGet(tp.GW, base+"/metrics")
	if n, total := opsMetric(metrics, "socksgate_udp_sessions"), opsMetric(metrics, "socksgate_udp_sessions_total"); n != 0 || total != 2 {
		t.Errorf("after both ended: socksgate_udp_sessions %v, _total %v, want 0 and 2", n, total)
	}
	// Each session is counted once as an ended flow, with its bytes.
	for _, in := range []struct {
		inbound string
		bytes   float64
	}{{"tproxy", 11}, {"socks", 9}} {
		labels := `{inbound="` + in.inbound + `",outcome="ok",upstream="` + upstream + `"}`
		if n := opsMetric(metrics, "socksgate_flows_total"+labels); n != 1 {
			t.Errorf("socksgate_flows_total%s = %v, want 1", labels, n)
		}
		for _, dir := range []string{"up", "down"} {
			series := `socksgate_flow_bytes_total{direction="` + dir + `",inbound="` + in.inbound + `",upstream="` + upstream + `"}`
			if n := opsMetric(metrics, series); n != in.bytes {
				t.Errorf("%s = %v, want %v", series, n, in.bytes)
			}
		}
	}
}

// socksgate runs as user nobody with only CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and CAP_NET_RAW
// (what dist/socksgate.service grants) and carries a transparent flow; without CAP_NET_ADMIN it
// refuses to start and says why.
func TestOpsRunsUnprivilegedWithCapabilities(t *testing.T) {
	needBin(t, "setpriv")
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	bin := opsShippedBinary(t)
	cfg := opsPublicConfig(t, gatewayConfig("socks5://"+netlab.Proxy4+":1080", "admin: 127.0.0.1:9091\n"))
	setpriv := func(caps string) []string {
		return []string{"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
			"--inh-caps=-all," + caps, "--ambient-caps=-all," + caps, "--bounding-set=-all," + caps,
			"--no-new-privs", bin, "run", "-log-format", "json", "-c", cfg}
	}

	t.Run("service capabilities", func(t *testing.T) {
		p := tp.GW.Start(setpriv("+net_admin,+net_bind_service,+net_raw")...)
		if _, ok := waitLog(p, 15*time.Second, msg("socksgate ready")); !ok {
			t.Fatalf("not ready:\n%s", p.Output())
		}
		pid := p.Cmd.Process.Pid
		if uid := strings.Fields(opsProcStatus(t, pid, "Uid")); uid[1] != "65534" {
			t.Fatalf("effective uid %s, want nobody", uid[1])
		}
		// CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13): 0x3400, nothing else.
		if eff := opsProcStatus(t, pid, "CapEff"); eff != "0000000000003400" {
			t.Fatalf("CapEff %s, want 0000000000003400", eff)
		}
		for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
			if out, err := curl(tp.LAN, urlFor(dst, "/")); err != nil || out != pageBody {
				t.Fatalf("curl %s as an unprivileged gateway: %v %q\n%s", dst, err, out, p.Output())
			}
		}
		if !strings.Contains(nftTables(t, tp.GW), "socksgate") {
			t.Fatal("no socksgate table")
		}
		p.Signal(syscall.SIGTERM)
		if exited, err := p.Wait(10 * time.Second); !exited || err != nil {
			t.Fatalf("SIGTERM: exited=%v err=%v\n%s", exited, err, p.Output())
		}
		if strings.Contains(nftTables(t, tp.GW), "socksgate") {
			t.Fatalf("the unprivileged process left its table behind:\n%s", p.Output())
		}
	})

	t.Run("without CAP_NET_ADMIN", func(t *testing.T) {
		p := tp.GW.Start(setpriv("+net_bind_service,+net_raw")...)
		exited, err := p.Wait(15 * time.Second)
		if !exited || err == nil {
			t.Fatalf("started without CAP_NET_ADMIN: exited=%v err=%v\n%s", exited, err, p.Output())
		}
		if !hasLog(p.Output(), logFields{"level": "error", "error": "~operation not permitted"}) {
			t.Fatalf("the failure does not say it lacks permission:\n%s", p.Output())
		}
		if testing.Verbose() {
			t.Logf("without CAP_NET_ADMIN:\n%s", p.Output())
		}
		if strings.Contains(nftTables(t, tp.GW), "socksgate") {
			t.Fatal("a table appeared anyway")
		}
	})
}

// fw4Ruleset is a cut-down OpenWrt fw4: input policy drop with the LAN zone accepted, forward
// LAN to WAN, masquerade on the upstream interface.
const fw4Ruleset = `table inet fw4 {
	chain input {
		type filter hook input priority filter; policy drop;
		iifname "lo" accept
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
		iifname "` + netlab.GWLANIf + `" jump input_lan
		counter
	}
	chain input_lan {
		accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "` + netlab.GWLANIf + `" oifname "` + netlab.GWUpIf + `" accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + netlab.GWUpIf + `" counter masquerade
	}
}
`

// Beside a firewall's own nftables table (fw4-like: filtering and masquerade), both work: a
// proxied flow goes through socksgate, a bypassed one is routed and masqueraded by the
// firewall. socksgate changes nothing outside its own table, and after it exits the firewall's
// table lists byte for byte as before.
func TestOpsCoexistsWithFirewallTable(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	// A server that answers with the address it sees, to tell masquerade from plain routing.
	ln := tp.WAN.Listen("tcp", "[::]:81")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, strings.TrimPrefix(host, "::ffff:"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	tp.GW.MustRun("nft", "-f", writeFile(t, "fw4.nft", fw4Ruleset))
	tp.AllowDirect(netlab.WAN4)

	stateless := func() string { return tp.GW.MustRun("nft", "-a", "-s", "list", "ruleset") }
	withCounters := func() string { return tp.GW.MustRun("nft", "-a", "list", "table", "inet", "fw4") }
	ipRules := func() string { return tp.GW.MustRun("ip", "rule") + tp.GW.MustRun("ip", "-6", "rule") }
	rulesetBefore, ipRulesBefore := stateless(), ipRules()

	gw := startSocksgate(t, tp.GW, gatewayConfig("socks5://"+netlab.Proxy4+":1080",
		"transparent: {bypass: ["+netlab.WAN4+"/32]}\n"))
	if out, err := curl(tp.LAN, urlFor(netlab.WAN6, "/")); err != nil || out != pageBody {
		t.Fatalf("proxied flow beside fw4: %v %q\n%s", err, out, gw.Output())
	}
	if _, ok := waitLog(gw, 2*time.Second, msg("flow")); !ok {
		t.Fatalf("the proxied flow did not pass socksgate:\n%s", gw.Output())
	}
	out, err := curl(tp.LAN, "http://"+netlab.WAN4+":81/")
	if err != nil || out != netlab.GWUp4 {
		t.Fatalf("bypassed flow: %v; the server saw %q, want the masqueraded %s", err, out, netlab.GWUp4)
	}
	if countLogs(gw.Output(), msg("flow")) != 1 {
		t.Fatalf("the bypassed flow reached socksgate:\n%s", gw.Output())
	}
	if c := tp.GW.MustRun("nft", "list", "chain", "inet", "fw4", "srcnat"); strings.Contains(c, "packets 0 ") {
		t.Fatalf("fw4's masquerade never matched:\n%s", c)
	}

	// While running: every table but socksgate's is exactly as it was.
	running := tp.GW.MustRun("nft", "-a", "-s", "list", "ruleset")
	if got := opsWithoutTable(running, "table inet socksgate"); got != rulesetBefore {
		t.Fatalf("socksgate changed other tables while running:\nbefore:\n%s\nnow:\n%s", rulesetBefore, got)
	}
	if ipRules() != ipRulesBefore {
		t.Fatalf("ip rules changed:\n%s", ipRules())
	}
	countersBefore := withCounters()
	gw.Signal(syscall.SIGTERM)
	if exited, err := gw.Wait(10 * time.Second); !exited || err != nil {
		t.Fatalf("SIGTERM: exited=%v err=%v", exited, err)
	}
	if got := stateless(); got != rulesetBefore {
		t.Fatalf("ruleset after exit differs:\nbefore:\n%s\nafter:\n%s", rulesetBefore, got)
	}
	// fw4 untouched across the exit: the same rules and handles, and counters that only went on
	// counting (a table replaced or flushed would start them at 0 again). Late packets of the
	// test's own connections (an ACK after their conntrack entry closed) may still reach fw4's
	// input counter meanwhile.
	if got := withCounters(); !opsCountersOnlyGrew(countersBefore, got) {
		t.Fatalf("fw4 table (with counters) changed across socksgate's exit:\nbefore:\n%s\nafter:\n%s", countersBefore, got)
	}
	if ipRules() != ipRulesBefore {
		t.Fatalf("ip rules changed after exit:\n%s", ipRules())
	}
}

// opsMetric is the value of one series in a Prometheus text exposition, or -1.
func opsMetric(exposition, series string) float64 {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// opsWithoutTable removes one "table ... { ... }" block from an nft listing.
func opsWithoutTable(listing, header string) string {
	i := strings.Index(listing, header)
	if i < 0 {
		return listing
	}
	end := strings.Index(listing[i:], "\n}\n")
	if end < 0 {
		return listing[:i]
	}
	return listing[:i] + listing[i+end+3:]
}

// Idle, with the default config and no flows, the shipped binary stays under 15 MB of RSS.
func TestOpsIdleRSSUnder15MB(t *testing.T) {
	lab := netlab.New(t)
	ns := lab.NS("rss")
	bin := opsShippedBinary(t)
	for _, c := range []struct{ name, yaml string }{
		{"default config", ""},
		{"default config with admin endpoint", "admin: 127.0.0.1:9091\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{bin, "run", "-log-format", "json"}
			if c.yaml != "" {
				args = append(args, "-c", opsPublicConfig(t, c.yaml))
			}
			p := ns.Start(args...)
			if _, ok := waitLog(p, 15*time.Second, msg("socksgate ready")); !ok {
				t.Fatalf("not ready:\n%s", p.Output())
			}
			if c.yaml != "" {
				opsGet(ns, "http://127.0.0.1:9091/metrics") // the endpoint's first use allocates
			}
			time.Sleep(time.Second)
			rss := opsProcStatus(t, p.Cmd.Process.Pid, "VmRSS") // "8123 kB"
			kb, err := strconv.Atoi(strings.Fields(rss)[0])
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("idle VmRSS %d kB (%.1f MiB)", kb, float64(kb)/1024)
			if kb > 15*1024 {
				t.Fatalf("idle RSS %d kB is over 15 MB", kb)
			}
			p.Signal(syscall.SIGTERM)
			p.Wait(10 * time.Second)
		})
	}
}

// Shutdown gives everything live one grace period: a download forwarded through the HTTP port
// and one tunnelled through the SOCKS port are both still live at its deadline, both are cut
// by the one sweep at that deadline (the HTTP server's grace and the flows' grace are the same
// deadline, not one after the other), and each flow's line says it was cut at shutdown.
func TestOpsShutdownOneGraceForEverything(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, reloadListenConfig("lan:8080", "")) // timeouts.grace: 2s
	// Each would take about 50 s at 1 MB/s: both outlive the grace period.
	const size = 50 << 20
	httpDL, _ := reloadSlowDownload(t, tp, size, "1M", "-x", "http://"+net.JoinHostPort(netlab.GWLAN4, "8080"))
	socksDL, _ := reloadSlowDownload(t, tp, size, "1M", "--socks5", net.JoinHostPort(netlab.GWLAN4, "1080"))

	start := time.Now()
	gw.Signal(syscall.SIGTERM)
	exited, err := gw.Wait(30 * time.Second) // a hang guard, not a timing
	took := time.Since(start)
	t.Logf("shutdown with a forwarded download and a SOCKS tunnel live, grace 2s: %v", took.Round(10*time.Millisecond))
	if !exited || err != nil {
		t.Fatalf("exit after SIGTERM: exited=%v err=%v\n%s", exited, err, gw.Output())
	}
	out := gw.Output()
	if line := lastLog(out, msg("grace period over: closed live flows")); line.str("flows") != "2" {
		t.Errorf("the deadline's sweep did not cut both flows (the HTTP server cut its own first?): %v\n%s", line, out)
	}
	for _, inbound := range []string{"http", "socks"} {
		if !hasLog(out, logFields{"inbound": inbound, "error": "cut at shutdown: grace period over"}) {
			t.Errorf("no %s flow logged as cut at shutdown:\n%s", inbound, out)
		}
	}
	if !hasLog(out, msg("stopped")) || strings.Contains(nftTables(t, tp.GW), "socksgate") {
		t.Fatalf("no clean stop:\n%s", out)
	}
	// Each client sees its end once it has drained what its socket already holds.
	for _, dl := range []*netlab.Proc{httpDL, socksDL} {
		if exited, err := dl.Wait(45 * time.Second); !exited || err == nil {
			t.Errorf("a download was not cut by the shutdown: exited=%v err=%v %s", exited, err, dl.Output())
		}
	}
}

var opsCounter = regexp.MustCompile(`packets (\d+) bytes (\d+)`)

// opsCountersOnlyGrew reports whether after is before with each counter the same or higher.
func opsCountersOnlyGrew(before, after string) bool {
	if opsCounter.ReplaceAllString(before, "packets N bytes N") != opsCounter.ReplaceAllString(after, "packets N bytes N") {
		return false
	}
	b, a := opsCounter.FindAllStringSubmatch(before, -1), opsCounter.FindAllStringSubmatch(after, -1)
	for i := range b {
		for j := 1; j <= 2; j++ {
			x, _ := strconv.ParseUint(b[i][j], 10, 64)
			y, _ := strconv.ParseUint(a[i][j], 10, 64)
			if y < x {
				return false
			}
		}
	}
	return true
}
