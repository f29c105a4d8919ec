package redirect

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/testutil"
)

// watchLog is what a test watcher reported and saw.
type watchLog struct {
	mu     sync.Mutex
	events []WatchEvent
	seen   []change
}

func (l *watchLog) report(ev WatchEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

func (l *watchLog) saw(c change) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, c)
}

func (l *watchLog) count(k WatchEventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

func (l *watchLog) last(k WatchEventKind) WatchEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.events) - 1; i >= 0; i-- {
		if l.events[i].Kind == k {
			return l.events[i]
		}
	}
	return WatchEvent{}
}

func (l *watchLog) seenChanges() []change {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

func watchIn(t *testing.T, r *Ruleset) *watchLog {
	t.Helper()
	l := &watchLog{}
	w, err := r.watch(defaultHealTiming, l.report, l.saw)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(w.Stop)
	return l
}

func (ns testNS) mustNFT(t *testing.T, args ...string) {
	t.Helper()
	if out, err := ns.nft(t, args...); err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (ns testNS) ip(t *testing.T, args ...string) {
	t.Helper()
	run(t, append([]string{"ip", "-n", ns.name}, args...)...)
}

// assertInstalled checks that the table has every rule s plans and the policy routing is there.
func (ns testNS) assertInstalled(t *testing.T, s Spec) {
	t.Helper()
	s = s.withDefaults()
	if got := ns.tables(t); !slices.Contains(got, s.Table) {
		t.Fatalf("tables = %v, want %s", got, s.Table)
	}
	if got, want := ns.ruleCount(t, s.Table), wantRuleCount(s); !mapsEqual(got, want) {
		t.Fatalf("rules per chain = %v, want %v", got, want)
	}
	for _, fam := range []string{"-4", "-6"} {
		if n := strings.Count(ns.ipRules(t, fam), fmt.Sprintf("lookup %d", s.RouteTable)); n != 1 {
			t.Fatalf("ip %s rules for table %d: %d, want 1:\n%s", fam, s.RouteTable, n, ns.ipRules(t, fam))
		}
		if !strings.Contains(ns.routes(t, fam, s.RouteTable), "local default dev lo") {
			t.Fatalf("ip %s route table %d:\n%s", fam, s.RouteTable, ns.routes(t, fam, s.RouteTable))
		}
	}
}

// `nft flush ruleset` (Debian's nftables.service, firewalld) removes socksgate's table with
// everything else: it comes back, in one restore, and the other tables stay gone.
func TestWatchRestoresAfterFlushRuleset(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := watchIn(t, r)
	ns.mustNFT(t, "add table inet other")
	ns.mustNFT(t, "flush ruleset")
	testutil.WaitUntil(t, "a restore", func() bool { return l.count(Restored) == 1 })
	ns.assertInstalled(t, s)
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Errorf("tables after the restore = %v: only socksgate's comes back", got)
	}
	ev := l.last(Restored)
	if !slices.Contains(ev.What, "table inet socksgate deleted") || len(ev.By) != 1 || !strings.HasPrefix(ev.By[0], "nft[") {
		t.Errorf("restore event = %+v", ev)
	}
	if n := l.count(Restored); n != 1 {
		t.Errorf("%d restores, want 1", n)
	}
}

// One rule deleted, one element added to a set: someone else's change to socksgate's table is
// undone.
func TestWatchRestoresAChangedTable(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := watchIn(t, r)
	ns.mustNFT(t, "flush chain inet socksgate "+chainRawOut)
	testutil.WaitUntil(t, "a restore", func() bool { return l.count(Restored) == 1 })
	ns.assertInstalled(t, s)
	ns.mustNFT(t, "add element inet socksgate "+setBypass4+" { 198.51.100.0/24 }")
	testutil.WaitUntil(t, "a second restore", func() bool { return l.count(Restored) == 2 })
	if out, _ := ns.nft(t, "list set inet socksgate "+setBypass4); strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("foreign element kept:\n%s", out)
	}
}

// The fwmark rule and the local route are put back when deleted.
func TestWatchRestoresPolicyRouting(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := watchIn(t, r)
	ns.ip(t, "-4", "rule", "del", "priority", fmt.Sprint(s.RulePriority))
	testutil.WaitUntil(t, "a restore of the rule", func() bool { return l.count(Restored) == 1 })
	ns.assertInstalled(t, s)
	ns.ip(t, "-6", "route", "del", "local", "default", "dev", "lo", "table", fmt.Sprint(s.RouteTable))
	testutil.WaitUntil(t, "a restore of the route", func() bool { return l.count(Restored) == 2 })
	ns.assertInstalled(t, s)
}

// OpenWrt's fw4 reload replaces only its own table: that never leads to a restore, nor does a
// rule or a route that is not socksgate's, nor socksgate's own Replace.
func TestWatchLeavesOthersAlone(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := watchIn(t, r)

	ns.mustNFT(t, "add table inet fw4")
	ns.mustNFT(t, "add chain inet fw4 input { type filter hook input priority 0; policy accept; }")
	ns.mustNFT(t, "add set inet fw4 s { type ipv4_addr; }")
	ns.mustNFT(t, "add element inet fw4 s { 192.0.2.9 }")
	ns.mustNFT(t, "add rule inet fw4 input ip saddr @s counter accept")
	// fw4's own reload: one transaction that deletes and re-creates its table.
	reload := writeTemp(t, "table inet fw4\ndelete table inet fw4\ntable inet fw4 {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tct state established accept\n\t}\n}\n")
	ns.mustNFT(t, "-f", reload)
	ns.mustNFT(t, "delete table inet fw4")
	ns.ip(t, "rule", "add", "priority", "30000", "lookup", "main")
	ns.ip(t, "route", "add", "192.0.2.128/25", "dev", "lan0", "table", "77")
	s2 := s
	s2.Bypass = append(slices.Clone(s.Bypass), netip.MustParsePrefix("198.51.100.0/24"))
	if err := r.Replace(s2); err != nil {
		t.Fatal(err)
	}
	// A rule event is the marker: once its check is reported, every earlier event was handled.
	ns.ip(t, "rule", "del", "priority", "30000")
	testutil.WaitUntil(t, "the marker's check", func() bool {
		ev := l.last(Checked)
		return slices.Contains(ev.What, "policy rule deleted")
	})
	if n := l.count(Restored); n != 0 {
		t.Fatalf("%d restores for changes that were not socksgate's: %+v", n, l.last(Restored))
	}
	for _, c := range l.seenChanges() {
		if c.kind != checkPolicy {
			t.Errorf("change passed on: %+v", c)
		}
	}
	ns.assertInstalled(t, s2)
}

// With on_crash open the table is owned by socksgate's socket: a flush leaves it alone (nothing
// to restore), and the policy routing, which is not owned, is restored through the owner.
func TestWatchOwnedTable(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	s.OnCrash = configs.OnCrashOpen
	r := applyIn(t, ns, s)
	l := watchIn(t, r)
	ns.mustNFT(t, "add table inet other")
	ns.mustNFT(t, "flush ruleset")
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Fatalf("tables after a flush = %v, want the owned table kept", got)
	}
	if out, err := ns.nft(t, "delete table inet socksgate"); err == nil {
		t.Fatalf("deleting an owned table worked: %s", out)
	}
	ns.ip(t, "-4", "rule", "del", "priority", fmt.Sprint(s.RulePriority))
	testutil.WaitUntil(t, "a restore", func() bool { return l.count(Restored) == 1 })
	ns.assertInstalled(t, s)
	listing, _ := ns.nft(t, "list table inet socksgate")
	if !strings.Contains(listing, "flags owner") {
		t.Errorf("not owned after the restore:\n%s", listing)
	}
	for _, c := range l.seenChanges() {
		if c.kind == changeTable {
			t.Errorf("table change seen for an owned table: %+v", c)
		}
	}
}

// Someone who keeps deleting the table: socksgate stops restoring at once after a burst.
func TestWatchBacksOff(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := &watchLog{}
	timing := defaultHealTiming
	timing.Burst = 2
	w, err := r.watch(timing, l.report, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	for i := 1; i <= 2; i++ {
		ns.mustNFT(t, "delete table inet socksgate")
		testutil.WaitUntil(t, "a restore", func() bool { return l.count(Restored) == i })
	}
	testutil.WaitUntil(t, "a back-off", func() bool { return l.count(BackingOff) == 1 })
	if ev := l.last(BackingOff); ev.Wait <= 0 || ev.Recent != 2 {
		t.Errorf("back-off event = %+v", ev)
	}
}

// Changes no event reports (made here through socksgate's own socket, whose events the watcher
// ignores, as it would after losing events) are found by the periodic check, which compares
// the table object by object with what was installed, and undone. The time from the change
// to the restore is logged: about Check plus Quiet.
func TestWatchPeriodicCheckRestoresUnreportedDrift(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	l := &watchLog{}
	timing := defaultHealTiming
	timing.Check = 200 * time.Millisecond
	w, err := r.watch(timing, l.report, l.saw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	tbl := &nftables.Table{Name: r.Spec().Table, Family: nftables.TableFamilyINet}
	for i, tc := range []struct {
		name   string
		change func()
		found  string
	}{
		{"a chain flushed", func() { r.conn.nft.FlushChain(&nftables.Chain{Name: chainRawOut, Table: tbl}) },
			"chain output_raw has 0 rules, want 1"},
		{"a set emptied", func() { r.conn.nft.FlushSet(&nftables.Set{Name: setLAN, Table: tbl}) },
			"elements of set lan_ifaces changed (0, want 2)"},
	} {
		tc.change()
		if err := r.conn.flush(tbl.Name, 0); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		changed := time.Now()
		testutil.WaitUntil(t, "a restore after "+tc.name, func() bool { return l.count(Restored) == i+1 })
		t.Logf("%s: restored %v after the change (Check %v)", tc.name, time.Since(changed).Round(time.Millisecond), timing.Check)
		ev := l.last(Restored)
		if !slices.Equal(ev.What, []string{"periodic check", tc.found}) {
			t.Errorf("%s: restore event %+v", tc.name, ev)
		}
		ns.assertInstalled(t, s)
	}
	for _, c := range l.seenChanges() {
		if c.kind != checkPolicy { // the restores' own route updates are checked, as any
			t.Errorf("a change through socksgate's own socket was seen as an event: %+v", c)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if ev.Kind == Checked && slices.Equal(ev.What, []string{"periodic check"}) {
			t.Errorf("a periodic check that found nothing was reported: %+v", ev)
		}
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f := t.TempDir() + "/ruleset.nft"
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
