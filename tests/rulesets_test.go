//go:build linux

package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// Rule sets from files (issue 19): a cidr set and a domain set route flows to dante, the
// rest goes through microsocks; the files are rewritten while socksgate runs (renamed into
// place, written in place) and the new version decides the next flow without a restart; a
// broken rewrite keeps the set in force and shows in /metrics; a reload adds a set.

const setsAdmin = "127.0.0.1:9091"

// rewrite replaces path's contents the way editors and downloads do: a temporary file in the
// same directory, renamed over it.
func rewrite(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitSetLog waits for the n-th record of msg m about set (1-based).
func waitSetLog(t *testing.T, gw *netlab.Proc, m, set string, n int) logLine {
	t.Helper()
	f := msg(m).with("set", set)
	if !waitFor(10*time.Second, func() bool { return countLogs(gw.Output(), f) >= n }) {
		t.Fatalf("no %q for set %s (want %d):\n%s", m, set, n, gw.Output())
	}
	return findLogs(gw.Output(), f)[n-1]
}

func setsMetrics(t *testing.T, tp *netlab.Topology) string {
	t.Helper()
	out, err := curl(tp.GW, "http://"+setsAdmin+"/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v: %s", err, out)
	}
	return out
}

// flowRules is the rule of every flow line to dst (its address: a flow with a name has it
// in ip), in order.
func flowRules(gw *netlab.Proc, dst string) []string {
	var out []string
	for _, l := range logLines(gw.Output()) {
		if l.str("dst") != dst && l.str("ip") != dst {
			continue
		}
		if m := l.str("msg"); m == "flow" || m == "flow failed" || m == "flow blocked" {
			out = append(out, l.str("rule"))
		}
	}
	return out
}

// expectRule fetches url from lan (extra curl args first) and waits for the n-th flow line to
// dst, which must name rule.
func expectRule(t *testing.T, lab *routingLab, gw *netlab.Proc, dst string, n int, rule string, args ...string) {
	t.Helper()
	out, err := curl(lab.LAN, args...)
	if err != nil || out != pageBody {
		t.Fatalf("curl %v: %v: %q", args, err, out)
	}
	var rules []string
	waitFor(3*time.Second, func() bool { rules = flowRules(gw, dst); return len(rules) >= n })
	if len(rules) < n || rules[n-1] != rule {
		t.Fatalf("flow %d to %s: rules %q, want %q last:\n%s", n, dst, rules, rule, gw.Output())
	}
}

func TestRuleSetFilesRouteAndReload(t *testing.T) {
	lab := newRoutingLab(t)
	lab.WAN.Addr(netlab.WANIf, "203.0.113.11/24")
	dir := t.TempDir()
	ips := filepath.Join(dir, "ips.txt")
	names := filepath.Join(dir, "names.yaml")
	more := filepath.Join(dir, "more.conf")
	os.WriteFile(ips, []byte("# one address\n203.0.113.10\n"), 0o644)
	os.WriteFile(names, []byte("payload:\n  - '+.web.test'\n"), 0o644)
	os.WriteFile(more, []byte("server=/more.test/192.0.2.53\n"), 0o644)
	sets := fmt.Sprintf("rule_sets:\n  - {name: ips, kind: cidr, path: %q}\n  - {name: names, kind: domain, path: %q}\n", ips, names)
	rules := "  - {name: by-name, domain_set: [names], upstream: dante}\n  - {name: by-cidr, dst_set: [ips], upstream: dante}\n"
	tail := "admin: \"" + setsAdmin + "\"\ntransparent: {sniff: {enabled: true, ports: [80], timeout: 2s}}\n"
	cfg := routingConfig(rules) + sets + tail
	gw, cfgPath := startSocksgateFile(t, lab.GW, cfg)
	v4, v4b := net.JoinHostPort(netlab.WAN4, "80"), "203.0.113.11:80"

	expectRule(t, lab, gw, v4, 1, "by-cidr", urlFor(netlab.WAN4, "/"))
	expectRule(t, lab, gw, v4b, 1, "catchall", urlFor("203.0.113.11", "/"))
	expectRule(t, lab, gw, v4b, 2, "by-name", "-H", "Host: www.web.test", urlFor("203.0.113.11", "/"))

	// The cidr set renamed into place: .11 is in it, .10 no longer.
	rewrite(t, ips, "203.0.113.11/32\n")
	waitSetLog(t, gw, "rule set reloaded", "ips", 1)
	expectRule(t, lab, gw, v4b, 3, "by-cidr", urlFor("203.0.113.11", "/"))
	expectRule(t, lab, gw, v4, 2, "catchall", urlFor(netlab.WAN4, "/"))

	// The domain set written in place.
	if err := os.WriteFile(names, []byte("payload:\n  - 'other.test'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitSetLog(t, gw, "rule set reloaded", "names", 1)
	expectRule(t, lab, gw, v4, 3, "catchall", "-H", "Host: www.web.test", urlFor(netlab.WAN4, "/"))

	// A broken rewrite: refused, the set in force stays, /metrics says so.
	rewrite(t, ips, "this is not a list\nof prefixes\n")
	l := waitSetLog(t, gw, "rule set file refused: the version in force stays", "ips", 1)
	if !strings.Contains(l.str("error"), "no cidr entry") {
		t.Errorf("refusal: %s", l)
	}
	expectRule(t, lab, gw, v4b, 4, "by-cidr", urlFor("203.0.113.11", "/"))
	m := setsMetrics(t, lab.Topology)
	for _, want := range []string{
		`socksgate_rule_set_load_errors_total{set="ips"} 1`, `socksgate_rule_set_entries{set="ips"} 1`,
		`socksgate_rule_set_ok{set="ips"} 0`, `socksgate_rule_set_ok{set="names"} 1`, `socksgate_rule_set_last_load_timestamp_seconds{set="names"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "rule_set"))
		}
	}

	// A reload that adds a set (dnsmasq lines) and a rule using it.
	cfg2 := routingConfig("  - {name: by-more, domain_set: [more], upstream: dante}\n"+rules) + sets +
		fmt.Sprintf("  - {name: more, kind: domain, path: %q}\n", more) + tail
	if err := os.WriteFile(cfgPath, []byte(withTestState(t, cfg2)), 0o600); err != nil {
		t.Fatal(err)
	}
	gw.Signal(syscall.SIGHUP)
	if _, ok := waitLog(gw, 10*time.Second, msg("config reloaded")); !ok {
		t.Fatalf("no reload:\n%s", gw.Output())
	}
	expectRule(t, lab, gw, v4, 4, "by-more", "-H", "Host: a.more.test", urlFor(netlab.WAN4, "/"))
	if m := setsMetrics(t, lab.Topology); !strings.Contains(m, `socksgate_rule_set_entries{set="more"} 1`) {
		t.Errorf("/metrics lacks the added set:\n%s", grepLines(m, "rule_set"))
	}

	// A reload that moves the ips set to another file and is refused (its HTTP port is taken)
	// leaves the running set following its own file.
	other := filepath.Join(dir, "other.txt")
	os.WriteFile(other, []byte("192.0.2.1\n"), 0o644)
	lab.GW.Listen("tcp", net.JoinHostPort(netlab.GWLAN4, "8083")) // another daemon holds it
	cur, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg3 := strings.Replace(string(cur), "listen: {http: [], socks: []}", "listen: {http: [\""+net.JoinHostPort(netlab.GWLAN4, "8083")+"\"], socks: []}", 1)
	cfg3 = strings.Replace(cfg3, fmt.Sprintf("path: %q", ips), fmt.Sprintf("path: %q", other), 1)
	reloadTo(t, gw, cfgPath, cfg3, msg("reload refused: the running config stays in force"))
	rewrite(t, ips, "203.0.113.10/32\n")
	waitSetLog(t, gw, "rule set reloaded", "ips", 2)
	expectRule(t, lab, gw, v4, 5, "by-cidr", urlFor(netlab.WAN4, "/"))
	if m := setsMetrics(t, lab.Topology); !strings.Contains(m, `socksgate_rule_set_ok{set="ips"} 1`) {
		t.Errorf("/metrics does not show the running ips set:\n%s", grepLines(m, "rule_set"))
	}
	stopSocksgate(t, lab.GW, gw)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A direct rule on a cidr set alone is also installed in the kernel (direct4/direct6): flows
// there are forwarded by gw's kernel and never reach socksgate (no flow line, no /connections
// entry, the flow counters do not move), while the rest is still captured. When the set's file
// changes, the kernel's sets follow.
func TestHoistedDirectSetNeverReachesSocksgate(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	tp.WAN.Addr(netlab.WANIf, "203.0.113.11/24")
	// The lab's filter drops lan traffic gw forwards: open it for the hoisted addresses only,
	// so a flow to them that socksgate did not carry can only have been forwarded.
	tp.AllowDirect("203.0.113.11")
	tp.AllowDirect(netlab.WAN6)
	list := filepath.Join(t.TempDir(), "direct.txt")
	os.WriteFile(list, []byte("203.0.113.11/32\n"+netlab.WAN6+"/128\n"), 0o644)
	cfg := gatewayConfig("socks5://"+netlab.Proxy4+":1080", fmt.Sprintf(`rule_sets:
  - {name: direct-ips, kind: cidr, path: %q}
rules:
  - {name: kernel-direct, dst_set: [direct-ips], action: direct}
  - {name: catchall, upstream: main}
admin: %q
`, list, setsAdmin))
	gw := startSocksgate(t, tp.GW, cfg)
	if _, ok := waitLog(gw, 5*time.Second, msg("kernel direct sets: flows to these destinations are routed by the kernel").with("rules", "[kernel-direct]")); !ok {
		t.Fatalf("no direct sets logged:\n%s", gw.Output())
	}
	table, _ := tp.GW.Run("nft", "list", "table", "inet", "socksgate")
	if !strings.Contains(table, "set direct4") || !strings.Contains(table, "203.0.113.11") || !strings.Contains(table, netlab.WAN6) {
		t.Fatalf("direct sets missing:\n%s", table)
	}

	before := setsMetrics(t, tp)
	for _, addr := range []string{"203.0.113.11", netlab.WAN6} {
		if out, err := curl(tp.LAN, "--max-time", "5", urlFor(addr, "/")); err != nil || out != pageBody {
			t.Fatalf("hoisted %s: %v: %q", addr, err, out)
		}
	}
	// A long download, to look for it in /connections while it runs.
	done := make(chan error, 1)
	go func() {
		_, err := curl(tp.LAN, "--max-time", "20", "--limit-rate", "200k", "-o", "/dev/null", urlFor("203.0.113.11", "/bytes?n=2000000"))
		done <- err
	}()
	time.Sleep(1 * time.Second)
	conns, _ := curl(tp.GW, "http://"+setsAdmin+"/connections")
	if strings.Contains(conns, "203.0.113.11") {
		t.Errorf("a hoisted flow is in /connections:\n%s", conns)
	}
	if err := <-done; err != nil {
		t.Fatalf("hoisted download: %v", err)
	}
	// The non-hoisted destination is still socksgate's.
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor(netlab.WAN4, "/")); err != nil || out != pageBody {
		t.Fatalf("captured: %v: %q", err, out)
	}
	routingFlowLine(t, gw, net.JoinHostPort(netlab.WAN4, "80"))
	for _, dst := range []string{"203.0.113.11:80", net.JoinHostPort(netlab.WAN6, "80")} {
		if rs := flowRules(gw, dst); len(rs) != 0 {
			t.Errorf("socksgate carried hoisted flows to %s: %q", dst, rs)
		}
	}
	after := setsMetrics(t, tp)
	if a, b := grepLines(after, `upstream="direct"`), grepLines(before, `upstream="direct"`); strings.Contains(a, "socksgate_flows_total") && a != b {
		t.Errorf("direct flow counters moved:\nbefore:\n%s\nafter:\n%s", b, a)
	}
	if !strings.Contains(after, "socksgate_direct_prefixes 2") {
		t.Errorf("/metrics: %s", grepLines(after, "direct_prefixes"))
	}

	// The set's file changes: .11 leaves it, and with it the kernel's set; its next flow is
	// captured again and decided by the catch-all.
	rewrite(t, list, netlab.WAN6+"/128\n")
	waitSetLog(t, gw, "rule set reloaded", "direct-ips", 1)
	if !waitFor(5*time.Second, func() bool {
		table, _ := tp.GW.Run("nft", "list", "set", "inet", "socksgate", "direct4")
		return !strings.Contains(table, "203.0.113.11")
	}) {
		t.Fatal("direct4 still holds 203.0.113.11")
	}
	if out, err := curl(tp.LAN, "--max-time", "5", urlFor("203.0.113.11", "/")); err != nil || out != pageBody {
		t.Fatalf("after the change: %v: %q", err, out)
	}
	if l := routingFlowLine(t, gw, "203.0.113.11:80"); l.str("rule") != "catchall" {
		t.Fatalf("flow line: %s", l)
	}
	stopSocksgate(t, tp.GW, gw)
}
