package redirect

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/socksgate/socksgate/configs"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// System tests: each one creates a throwaway network namespace, does
// everything inside it and deletes it in cleanup. Nothing touches the
// machine's own namespace.

const helperEnv = "SOCKSGATE_REDIRECT_HELPER" // child mode: "apply-open" or "apply-closed"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

// helperMain applies systemSpec in the namespace named by SOCKSGATE_NETNS,
// says "ready" and waits to be killed.
func helperMain(mode string) int {
	f, err := os.Open("/var/run/netns/" + os.Getenv("SOCKSGATE_NETNS"))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	s := systemSpec()
	if err := s.OnCrash.UnmarshalText([]byte(strings.TrimPrefix(mode, "apply-"))); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if _, err := Apply(s, WithNetNS(int(f.Fd()))); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	select {}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces and install nftables rules")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: needs the ip command (iproute2)")
	}
}

type testNS struct {
	name string
	fd   int
}

// newNS creates a namespace with a unique name and lo up, plus a "lan0"
// veth interface with addresses, and removes it in cleanup.
func newNS(t *testing.T) testNS {
	t.Helper()
	needRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := fmt.Sprintf("sgt-%d-%s", os.Getpid(), hex.EncodeToString(b))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
	run(t, "ip", "-n", name, "link", "set", "lan0p", "up")
	run(t, "ip", "-n", name, "addr", "add", "192.0.2.1/24", "dev", "lan0")
	run(t, "ip", "-n", name, "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad")
	run(t, "ip", "-n", name, "link", "set", "lan0", "up")
	return testNS{name: name, fd: int(f.Fd())}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (ns testNS) nft(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

// tables returns the names of the inet tables in ns, read with the library.
func (ns testNS) tables(t *testing.T) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// ruleCount returns the number of rules per chain of table name, read with the library.
func (ns testNS) ruleCount(t *testing.T, name string) map[string]int {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatalf("get rules of %s: %v", ch.Name, err)
		}
		got[ch.Name] = len(rules)
	}
	return got
}

func wantRuleCount(s Spec) map[string]int {
	want := map[string]int{}
	for _, c := range s.withDefaults().plan().chains {
		want[c.name] = len(c.rules)
	}
	return want
}

func (ns testNS) ipRules(t *testing.T, family string) string {
	return run(t, "ip", family, "-n", ns.name, "rule", "show")
}

func (ns testNS) routes(t *testing.T, family string, table int) string {
	out, _ := exec.Command("ip", family, "-n", ns.name, "route", "show", "table", fmt.Sprint(table)).CombinedOutput()
	return string(out)
}

// systemSpec captures everything: TCP redirect and UDP TPROXY.
func systemSpec() Spec {
	return Spec{
		LANInterfaces: []string{"lan0", "lan1"},
		TCPPort:       12345,
		UDPPort:       12346,
		Mark:          0x100,
		TProxyMark:    0x2,
		RouteTable:    123,
		RulePriority:  1234,
		Bypass: append(BuiltinBypass(),
			netip.MustParsePrefix("192.0.2.0/24"),
			netip.MustParsePrefix("203.0.113.7/32"),
			netip.MustParsePrefix("2001:db8:1::/64"),
		),
	}
}

func applyIn(t *testing.T, ns testNS, s Spec) *Ruleset {
	t.Helper()
	r, err := Apply(s, WithNetNS(ns.fd))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// chainLines returns the rule lines of every chain in an nft listing or in
// Render's output, whitespace-trimmed, in order.
func chainLines(listing string) []string {
	var out []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(listing))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "chain "):
			in = true
			out = append(out, l)
		case in && l == "}":
			in = false
		case in && l != "":
			out = append(out, l)
		}
	}
	return out
}

// setElements returns each set's elements from an nft listing or Render's
// output, however nft wrapped them.
func setElements(listing string) map[string][]string {
	out := map[string][]string{}
	var set string
	var elems *strings.Builder
	sc := bufio.NewScanner(strings.NewReader(listing))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "set "):
			set = strings.Fields(l)[1]
			out[set] = nil
		case strings.HasPrefix(l, "elements = {"):
			elems = &strings.Builder{}
			elems.WriteString(strings.TrimPrefix(l, "elements = {"))
		case elems != nil:
			elems.WriteString(" " + l)
		}
		if elems != nil && strings.HasSuffix(l, "}") {
			for _, e := range strings.Split(strings.TrimSuffix(elems.String(), "}"), ",") {
				out[set] = append(out[set], strings.TrimSpace(e))
			}
			elems = nil
		}
	}
	return out
}

func TestApplyInstallsWhatRenderShows(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
	}{
		{"redirect tcp and tproxy udp, closed", func(*Spec) {}},
		{"tproxy tcp and udp, closed", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy }},
		{"tproxy tcp and udp, open", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy; s.OnCrash = configs.OnCrashOpen }},
		{"tcp only", func(s *Spec) { s.UDPPort = 0 }},
		{"udp only, open, no bypass", func(s *Spec) { s.TCPPort = 0; s.OnCrash = configs.OnCrashOpen; s.Bypass = nil }},
		{"nothing captured", func(s *Spec) { s.LANInterfaces = nil }},
		{"dns hijack with redirect tcp, fake-ip ranges captured", func(s *Spec) {
			s.DNSPort = 15353
			s.Capture = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("fc00::/18")}
		}},
		{"dns hijack alone, tproxy udp", func(s *Spec) { s.DNSPort = 15353; s.TCPPort = 0 }},
		// The router's own traffic. The excluded owners have no name in /etc/passwd or
		// /etc/group (nft would print a name).
		{"router: redirect tcp and udp, excluded owners", func(s *Spec) {
			s.RouterCapture = true
			s.ExcludeUIDs = []uint32{54321, 54322}
			s.ExcludeGIDs = []uint32{54323}
		}},
		{"router: tproxy tcp and udp, open", func(s *Spec) {
			s.RouterCapture, s.TCPMode, s.OnCrash = true, configs.TCPModeTProxy, configs.OnCrashOpen
			s.ExcludeUIDs = []uint32{54321}
		}},
		{"router: redirect tcp only, dns hijack", func(s *Spec) { s.RouterCapture, s.UDPPort, s.DNSPort = true, 0, 15353 }},
		{"router: tproxy tcp only", func(s *Spec) { s.RouterCapture, s.UDPPort, s.TCPMode = true, 0, configs.TCPModeTProxy }},
		{"router: udp only", func(s *Spec) { s.RouterCapture, s.TCPPort = true, 0; s.ExcludeGIDs = []uint32{54323} }},
		{"icmp block, redirect tcp and tproxy udp, router capture", func(s *Spec) { s.ICMP, s.RouterCapture = configs.ICMPBlock, true }},
		{"icmp block alone", func(s *Spec) { s.ICMP, s.TCPPort, s.UDPPort = configs.ICMPBlock, 0, 0 }},
		{"direct sets, fake-ip cut out, router capture, icmp block", func(s *Spec) {
			s.Direct = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("198.0.0.0/7"), netip.MustParsePrefix("2001:db8:2::/48")}
			s.Capture = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}
			s.DNSPort, s.RouterCapture, s.ICMP = 15353, true, configs.ICMPBlock
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t)
			s := systemSpec()
			tc.mod(&s)
			applyIn(t, ns, s)
			listing, err := ns.nft(t, "list", "table", "inet", "socksgate")
			if err != nil {
				t.Fatalf("nft list: %v\n%s", err, listing)
			}
			t.Logf("nft list table inet socksgate:\n%s", listing)
			got, want := chainLines(listing), chainLines(s.Render())
			if len(want) == 0 && len(s.LANInterfaces) > 0 {
				t.Fatalf("Render shows no chains:\n%s", s.Render())
			}
			if !slices.Equal(got, want) {
				t.Errorf("kernel rules differ from Render\nkernel:\n%s\nrender:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got, want := setElements(listing), setElements(s.Render()); !reflect.DeepEqual(got, want) {
				t.Errorf("kernel set elements differ from Render\nkernel: %q\nrender: %q", got, want)
			}
			if s.OnCrash == configs.OnCrashOpen && !strings.Contains(listing, "flags owner") {
				t.Errorf("on_crash open: table is not owned:\n%s", listing)
			}
			if s.OnCrash != configs.OnCrashOpen && strings.Contains(listing, "flags owner") {
				t.Errorf("on_crash closed: table is owned:\n%s", listing)
			}
		})
	}
}

func TestApplyTwiceLeavesOneTable(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	applyIn(t, ns, s)
	r := applyIn(t, ns, s)
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Fatalf("tables = %v, want [socksgate]", got)
	}
	if got, want := ns.ruleCount(t, "socksgate"), wantRuleCount(s); !mapsEqual(got, want) {
		t.Fatalf("rules per chain = %v, want %v", got, want)
	}
	for _, fam := range []string{"-4", "-6"} {
		if n := strings.Count(ns.ipRules(t, fam), "lookup 123"); n != 1 {
			t.Errorf("ip %s rules pointing at table 123: %d, want 1\n%s", fam, n, ns.ipRules(t, fam))
		}
	}
	// Replace on the same Ruleset swaps the contents in one batch, too.
	s2 := s
	s2.TCPMode = configs.TCPModeTProxy
	if err := r.Replace(s2); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if got, want := ns.ruleCount(t, "socksgate"), wantRuleCount(s2); !mapsEqual(got, want) {
		t.Fatalf("after Replace rules per chain = %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestPolicyRoutingBothFamiliesAndClose(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	r := applyIn(t, ns, s)
	for _, fam := range []string{"-4", "-6"} {
		rules := ns.ipRules(t, fam)
		if !strings.Contains(rules, "1234:\tfrom all fwmark 0x2 lookup 123") {
			t.Errorf("ip %s rule missing:\n%s", fam, rules)
		}
		routes := ns.routes(t, fam, 123)
		if !strings.Contains(routes, "local default dev lo") {
			t.Errorf("ip %s route table 123 missing the local default route:\n%s", fam, routes)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := ns.tables(t); len(got) != 0 {
		t.Errorf("tables after Close = %v", got)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := ns.ipRules(t, fam); strings.Contains(rules, "lookup 123") {
			t.Errorf("ip %s rule left after Close:\n%s", fam, rules)
		}
		if routes := ns.routes(t, fam, 123); strings.Contains(routes, "local") {
			t.Errorf("ip %s route left after Close:\n%s", fam, routes)
		}
	}
}

func TestApplySweepsStalePolicyRules(t *testing.T) {
	ns := newNS(t)
	// What crashed runs with another mark, and a duplicate, would have left.
	for _, fam := range []string{"-4", "-6"} {
		run(t, "ip", fam, "-n", ns.name, "rule", "add", "fwmark", "0x7", "lookup", "123", "priority", "1234")
		run(t, "ip", fam, "-n", ns.name, "rule", "add", "fwmark", "0x2", "lookup", "123", "priority", "1234")
		// Somebody else's rule at another priority stays.
		run(t, "ip", fam, "-n", ns.name, "rule", "add", "fwmark", "0x9", "lookup", "77", "priority", "1500")
	}
	applyIn(t, ns, systemSpec())
	for _, fam := range []string{"-4", "-6"} {
		rules := ns.ipRules(t, fam)
		if n := strings.Count(rules, "lookup 123"); n != 1 || !strings.Contains(rules, "fwmark 0x2 lookup 123") {
			t.Errorf("ip %s rules after sweep, want exactly fwmark 0x2 lookup 123:\n%s", fam, rules)
		}
		if !strings.Contains(rules, "fwmark 0x9 lookup 77") {
			t.Errorf("ip %s: a foreign rule was swept:\n%s", fam, rules)
		}
	}
	if err := Remove(systemSpec(), WithNetNS(ns.fd)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := Remove(systemSpec(), WithNetNS(ns.fd)); err != nil {
		t.Fatalf("Remove with nothing left: %v", err)
	}
	if got := ns.tables(t); len(got) != 0 {
		t.Errorf("tables after Remove = %v", got)
	}
}

func TestBypassSetMatchesIntervals(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	s.Bypass = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("11.0.0.0/8"), // adjacent: merged
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("203.0.113.7/32"),
		netip.MustParsePrefix("240.0.0.0/4"), // reaches the top: no end element
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("ff00::/8"),
	}
	applyIn(t, ns, s)
	for _, tc := range []struct {
		set, addr string
		in        bool
	}{
		{"bypass4", "9.255.255.255", false},
		{"bypass4", "10.0.0.0", true},
		{"bypass4", "11.255.255.255", true},
		{"bypass4", "12.0.0.0", false},
		{"bypass4", "203.0.113.6", false},
		{"bypass4", "203.0.113.7", true},
		{"bypass4", "203.0.113.8", false},
		{"bypass4", "255.255.255.255", true},
		{"bypass4", "239.255.255.255", false},
		{"bypass6", "fbff::1", false},
		{"bypass6", "fd00::1", true},
		{"bypass6", "fe80::1", false},
		{"bypass6", "ffff::1", true},
	} {
		out, err := ns.nft(t, "get", "element", "inet", "socksgate", tc.set, "{ "+tc.addr+" }")
		if got := err == nil; got != tc.in {
			t.Errorf("%s in @%s = %v, want %v (%s)", tc.addr, tc.set, got, tc.in, strings.TrimSpace(out))
		}
	}
}

// startHelper re-executes the test binary to apply the rules in ns with the
// given on_crash and waits until it says so.
func startHelper(t *testing.T, ns testNS, onCrash configs.OnCrash) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=apply-"+onCrash.String(), "SOCKSGATE_NETNS="+ns.name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("helper did not apply: %q %v", line, err)
	}
	return cmd
}

func killHelper(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func TestOnCrashOpenTableVanishesWithProcess(t *testing.T) {
	ns := newNS(t)
	cmd := startHelper(t, ns, configs.OnCrashOpen)
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Fatalf("tables while the owner runs = %v", got)
	}
	// While the owner lives, nobody else can change its table.
	err := Remove(systemSpec(), WithNetNS(ns.fd))
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("Remove of an owned table: %v, want EPERM", err)
	}
	if _, err := Apply(systemSpec(), WithNetNS(ns.fd)); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Apply over an owned table: %v, want EPERM", err)
	}
	killHelper(t, cmd)
	deadline := time.Now().Add(2 * time.Second)
	for len(ns.tables(t)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("table still there after SIGKILL: %v", ns.tables(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The policy rule is not owned: it stays until the next start sweeps it.
	r := applyIn(t, ns, systemSpec())
	if n := strings.Count(ns.ipRules(t, "-4"), "lookup 123"); n != 1 {
		t.Errorf("ip rules after restart: %d, want 1", n)
	}
	_ = r
}

func TestOnCrashClosedTableSurvivesAndIsReplaced(t *testing.T) {
	ns := newNS(t)
	cmd := startHelper(t, ns, configs.OnCrashClosed)
	killHelper(t, cmd)
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Fatalf("tables after SIGKILL = %v, want the table kept", got)
	}
	s := systemSpec()
	applyIn(t, ns, s)
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate"}) {
		t.Fatalf("tables after restart = %v", got)
	}
	if got, want := ns.ruleCount(t, "socksgate"), wantRuleCount(s); !mapsEqual(got, want) {
		t.Fatalf("rules per chain after restart = %v, want %v", got, want)
	}
	for _, fam := range []string{"-4", "-6"} {
		if n := strings.Count(ns.ipRules(t, fam), "lookup 123"); n != 1 {
			t.Errorf("ip %s rules after restart: %d, want 1", fam, n)
		}
	}
}

func TestOpenToClosedReplaceKeepsOwnership(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	s.OnCrash = configs.OnCrashOpen
	r := applyIn(t, ns, s)
	s.OnCrash = configs.OnCrashClosed
	if err := r.Replace(s); err != nil {
		t.Fatalf("Replace open -> closed: %v", err)
	}
	listing, _ := ns.nft(t, "list", "table", "inet", "socksgate")
	if strings.Contains(listing, "flags owner") {
		t.Errorf("still owned after switching to closed:\n%s", listing)
	}
	s.OnCrash = configs.OnCrashOpen
	s.Table = "socksgate2"
	if err := r.Replace(s); err != nil {
		t.Fatalf("Replace closed -> open with a new name: %v", err)
	}
	if got := ns.tables(t); !slices.Equal(got, []string{"socksgate2"}) {
		t.Fatalf("tables after rename = %v", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := ns.tables(t); len(got) != 0 {
		t.Fatalf("tables after Close = %v", got)
	}
}

func TestInterfacePrefixes(t *testing.T) {
	ns := newNS(t)
	got, err := InterfacePrefixes([]string{"lan0"}, WithNetNS(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}
	// The kernel also gives the interface a fe80:: address; keep what we added.
	var kept []netip.Prefix
	for _, p := range got {
		if !p.Addr().IsLinkLocalUnicast() {
			kept = append(kept, p)
		}
	}
	if !slices.Equal(kept, want) {
		t.Errorf("InterfacePrefixes = %v, want %v (plus link-local)", got, want)
	}
	if _, err := InterfacePrefixes([]string{"nosuch0"}, WithNetNS(ns.fd)); err == nil {
		t.Error("InterfacePrefixes of a missing interface: no error")
	}
}

// inNS runs f on a thread switched into ns, so sockets it creates live there.
func inNS(t *testing.T, ns testNS, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(netns.NsHandle(ns.fd)); err != nil {
			t.Errorf("setns: %v", err)
			return
		}
		f()
	}()
	<-done
}

func TestMarkControlSetsSOMark(t *testing.T) {
	ns := newNS(t)
	inNS(t, ns, func() {
		lc := net.ListenConfig{Control: MarkControl(0x1234)}
		pc, err := lc.ListenPacket(t.Context(), "udp", "127.0.0.1:0")
		if err != nil {
			t.Errorf("listen with MarkControl: %v", err)
			return
		}
		defer pc.Close()
		rc, _ := pc.(*net.UDPConn).SyscallConn()
		var mark int
		var gerr error
		_ = rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		if gerr != nil || mark != 0x1234 {
			t.Errorf("SO_MARK = %#x, %v; want 0x1234", mark, gerr)
		}
		lc0 := net.ListenConfig{Control: MarkControl(0)}
		if pc, err := lc0.ListenPacket(t.Context(), "udp", "127.0.0.1:0"); err == nil {
			pc.Close()
			t.Error("MarkControl(0) accepted")
		}
	})
}

func TestMarkControlFailsLoudlyWithoutPrivilege(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("skipping: checks the unprivileged failure; root may set SO_MARK")
	}
	lc := net.ListenConfig{Control: MarkControl(0x1234)}
	pc, err := lc.ListenPacket(t.Context(), "udp", "127.0.0.1:0")
	if err == nil {
		pc.Close()
		t.Fatal("SO_MARK without CAP_NET_ADMIN: no error")
	}
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "SO_MARK") {
		t.Errorf("error = %v, want EPERM naming SO_MARK", err)
	}
}

// An Apply whose table cannot be installed (here: another instance owns it) takes out the
// policy routing it added for it, and only that: the owner's own, in use, stays.
func TestFailedApplyTakesOutOnlyThePolicyRoutingItAdded(t *testing.T) {
	ns := newNS(t)
	startHelper(t, ns, configs.OnCrashOpen)
	if _, err := Apply(systemSpec(), WithNetNS(ns.fd)); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Apply over an owned table: %v, want EPERM", err)
	}
	other := systemSpec()
	other.RouteTable, other.RulePriority = 124, 1240
	if _, err := Apply(other, WithNetNS(ns.fd)); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Apply over an owned table: %v, want EPERM", err)
	}
	// Another mark at the owner's priority and table: the owner's rule and route must survive
	// the failed Apply, which takes out only its own rule.
	remarked := systemSpec()
	remarked.TProxyMark = 0x3
	if _, err := Apply(remarked, WithNetNS(ns.fd)); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Apply over an owned table: %v, want EPERM", err)
	}
	for _, fam := range []string{"-4", "-6"} {
		rules := ns.ipRules(t, fam)
		if !strings.Contains(rules, "fwmark 0x2 lookup 123") {
			t.Errorf("ip %s: the owner's rule was removed by a failed Apply:\n%s", fam, rules)
		}
		if strings.Contains(rules, "fwmark 0x3") {
			t.Errorf("ip %s: a failed Apply left its rule for another mark:\n%s", fam, rules)
		}
		if strings.Contains(rules, "lookup 124") {
			t.Errorf("ip %s: a failed Apply left its rule:\n%s", fam, rules)
		}
		if routes := ns.routes(t, fam, 124); strings.Contains(routes, "local") {
			t.Errorf("ip %s: a failed Apply left its route:\n%s", fam, routes)
		}
		if routes := ns.routes(t, fam, 123); !strings.Contains(routes, "local default dev lo") {
			t.Errorf("ip %s: the owner's route was removed:\n%s", fam, routes)
		}
	}
}
