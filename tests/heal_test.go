//go:build linux

package tests

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

const healAdmin = "127.0.0.1:9091"

// healConfig captures TCP (REDIRECT) and UDP (TPROXY, so there is policy routing to heal too),
// with the admin endpoint on.
func healConfig() string {
	return gatewayConfig("socks5://"+netlab.Proxy4+":1080",
		"transparent: {udp: true}\nadmin: \""+healAdmin+"\"\n")
}

// countLeaks puts a counter in wan on every packet that arrives from a LAN address: with gw
// neither masquerading nor the proxy host NATing, a LAN flow that reaches wan without the
// upstream proxy (which dials from its own address) arrives with its LAN source.
func countLeaks(t *testing.T, tp *netlab.Topology) func() int {
	t.Helper()
	tp.WAN.MustRun("nft", "add table inet leakwatch")
	tp.WAN.MustRun("nft", "add chain inet leakwatch input { type filter hook input priority -500; policy accept; }")
	tp.WAN.MustRun("nft", "add rule inet leakwatch input ip saddr 10.0.1.0/24 counter")
	tp.WAN.MustRun("nft", "add rule inet leakwatch input ip6 saddr fd00:1::/64 counter")
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() int {
		out := tp.WAN.MustRun("nft", "list chain inet leakwatch input")
		n := 0
		for _, m := range re.FindAllStringSubmatch(out, -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
}

// restoredTotal reads socksgate_rules_restored_total from gw's admin endpoint.
func restoredTotal(t *testing.T, tp *netlab.Topology) int {
	t.Helper()
	body, err := opsGet(tp.GW, "http://"+healAdmin+"/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	m := regexp.MustCompile(`(?m)^socksgate_rules_restored_total (\d+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no socksgate_rules_restored_total in /metrics")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// lanLoad runs HTTP requests from lan to wan, a new connection each, until stopped; stop
// returns how many succeeded and failed, and the errors.
func lanLoad(tp *netlab.Topology) (stop func() (ok, failed int64, errs []string)) {
	ctx, cancel := context.WithCancel(context.Background())
	var okN, failN atomic.Int64
	var wg sync.WaitGroup
	var errsMu sync.Mutex
	var errs []string
	for i := range 8 { // 4 at a time to each family
		dst := []string{netlab.WAN4, netlab.WAN6}[i%2]
		wg.Go(func() {
			for ctx.Err() == nil {
				if body, err := opsGet(tp.LAN, urlFor(dst, "/")); err == nil && body == pageBody {
					okN.Add(1)
				} else {
					failN.Add(1)
					errsMu.Lock()
					errs = append(errs, fmt.Sprintf("%s: %v", dst, err))
					errsMu.Unlock()
				}
			}
		})
	}
	return func() (int64, int64, []string) {
		cancel()
		wg.Wait()
		return okN.Load(), failN.Load(), errs
	}
}

// `nft flush ruleset` in gw (what Debian's nftables.service and firewalld do on reload) while
// the LAN is busy: socksgate's table is back (the time is logged), counted and logged, and LAN flows
// go through the upstream again. The packets that went direct in the gap are counted in wan.
func TestRulesHealAfterFlushRuleset(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	leaks := countLeaks(t, tp)
	gw := startSocksgate(t, tp.GW, healConfig())

	stop := lanLoad(tp)
	if !waitFor(10*time.Second, func() bool { return countLogs(gw.Output(), msg("flow")) >= 20 }) {
		stop()
		t.Fatalf("no LAN flows through socksgate:\n%s", gw.Output())
	}
	if n := leaks(); n != 0 {
		stop()
		t.Fatalf("%d packets went direct before the flush", n)
	}

	tp.GW.MustRun("nft", "flush ruleset") // gw's namespace only
	flushed := time.Now()
	back := waitFor(5*time.Second, func() bool {
		_, err := tp.GW.Run("nft", "list", "table", "inet", "socksgate")
		return err == nil
	})
	gap := time.Since(flushed)
	if !back {
		stop()
		t.Fatalf("table not restored:\n%s", gw.Output())
	}
	// Flows after the restore go through the upstream again.
	n := countLogs(gw.Output(), msg("flow"))
	if !waitFor(10*time.Second, func() bool { return countLogs(gw.Output(), msg("flow")) >= n+20 }) {
		stop()
		t.Fatalf("no LAN flows through socksgate after the restore:\n%s", gw.Output())
	}
	okN, failN, errs := stop()
	direct := leaks()
	t.Logf("table back %v after the flush; %d packets from the LAN reached wan directly in the gap; load: %d requests ok, %d failed",
		gap.Round(time.Millisecond), direct, okN, failN)
	if len(errs) > 0 {
		t.Logf("failed requests: %s", strings.Join(errs, "; "))
	}
	// The time to restore is measured and logged (41–88 ms over seven runs, in
	// docs/operations.md), not asserted: this machine is shared and noisy.
	// Nothing more goes direct now.
	for _, dst := range []string{netlab.WAN4, netlab.WAN6} {
		if body, err := opsGet(tp.LAN, urlFor(dst, "/")); err != nil || body != pageBody {
			t.Fatalf("LAN flow to %s after the restore: %v %q", dst, err, body)
		}
	}
	if n := leaks(); n != direct {
		t.Errorf("%d more packets went direct after the restore", n-direct)
	}
	if n := restoredTotal(t, tp); n != 1 {
		t.Errorf("socksgate_rules_restored_total = %d, want 1", n)
	}
	l := lastLog(gw.Output(), msg("kernel rules removed or changed by someone else: restored"))
	if l == nil || l.str("level") != "warning" || !strings.Contains(fmt.Sprint(l["changes"]), "table inet socksgate deleted") ||
		!strings.Contains(fmt.Sprint(l["by"]), "nft[") {
		t.Errorf("restore log line: %v", l)
	}
	stopSocksgate(t, tp.GW, gw)
}

// OpenWrt's fw4 reload replaces its own table only: no restore. Deleting socksgate's fwmark rule
// is undone.
func TestRulesHealPolicyRuleNotFW4(t *testing.T) {
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	startMicrosocks(t, tp, "", "")
	gw := startSocksgate(t, tp.GW, healConfig())

	tp.GW.MustRun("nft", "add table inet fw4")
	tp.GW.MustRun("nft", "add chain inet fw4 forward { type filter hook forward priority 0; policy accept; }")
	tp.GW.MustRun("nft", "add rule inet fw4 forward ct state established counter accept")
	reload := writeFile(t, "fw4.nft", "table inet fw4\ndelete table inet fw4\ntable inet fw4 {\n"+
		"\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tct state invalid drop\n\t}\n}\n")
	tp.GW.MustRun("nft", "-f", reload)
	tp.GW.MustRun("nft", "delete table inet fw4")
	// A rule that is not socksgate's is the marker: once its check is logged, the fw4 events
	// before it have been dealt with.
	tp.GW.MustRun("ip", "rule", "add", "priority", "30000", "lookup", "main")
	if _, ok := waitLog(gw, 5*time.Second, logFields{"msg": "kernel change seen: socksgate's rules are in place", "changes": "~policy rule added"}); !ok {
		t.Fatalf("the marker was not checked:\n%s", gw.Output())
	}
	if n := restoredTotal(t, tp); n != 0 {
		t.Fatalf("socksgate_rules_restored_total = %d after fw4's reload, want 0:\n%s", n, gw.Output())
	}

	// socksgate's fwmark rule, at its default priority (100).
	rules := func() string { return tp.GW.MustRun("ip", "-4", "rule", "show") }
	ours := regexp.MustCompile(`(?m)^100:\s+from all fwmark 0x[0-9a-f]+ lookup 100`)
	if !ours.MatchString(rules()) {
		t.Fatalf("no fwmark rule:\n%s", rules())
	}
	tp.GW.MustRun("ip", "-4", "rule", "del", "priority", "100")
	if !waitFor(5*time.Second, func() bool { return ours.MatchString(rules()) }) {
		t.Fatalf("fwmark rule not restored:\n%s\n%s", rules(), gw.Output())
	}
	if !waitFor(5*time.Second, func() bool { return restoredTotal(t, tp) == 1 }) {
		t.Errorf("socksgate_rules_restored_total = %d, want 1", restoredTotal(t, tp))
	}
	if body, err := opsGet(tp.LAN, urlFor(netlab.WAN4, "/")); err != nil || body != pageBody {
		t.Fatalf("LAN flow after the restore: %v %q", err, body)
	}
	stopSocksgate(t, tp.GW, gw)
}
