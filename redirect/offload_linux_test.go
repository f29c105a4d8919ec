package redirect

import (
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

// kernelHasFlowtables reports whether the namespace's kernel takes a flowtable, asked with nft
// itself (in a table of its own, deleted again), so that a refusal of socksgate's is never
// mistaken for a kernel without them. The lab VM's kernel has none (no CONFIG_NF_FLOW_TABLE):
// there the fallback is what is tested; make test-vm runs the test on Debian's kernel.
func kernelHasFlowtables(t *testing.T, ns testNS) bool {
	t.Helper()
	defer ns.nft(t, "delete", "table", "inet", "ftprobe")
	_, err := ns.nft(t, "add table inet ftprobe; add flowtable inet ftprobe f { hook ingress priority 0; devices = { lan0 }; }")
	return err == nil
}

func offloadSpec() Spec {
	s := systemSpec()
	s.Direct = []netip.Prefix{netip.MustParsePrefix("203.0.114.0/24"), netip.MustParsePrefix("2001:db8:2::/48")}
	s.Offload = true
	s.OffloadDevices = []string{"wan0", "wan9"} // wan9 never exists
	return s
}

// TestOffloadFlowtable: with offload on, the table holds flowtable ft over the devices that
// exist (lan0 and wan0 of the names; lan1 and wan9 do not), the chain that adds the LAN's
// flows to the direct sets, exactly as Render shows them, and a new default route on another
// device re-installs it with that device. On a kernel without flowtables the table goes in
// without them, Offload says why, and the periodic check does not take that for a drift.
func TestOffloadFlowtable(t *testing.T) {
	ns := newNS(t)
	for _, d := range []string{"wan0", "wan1"} { // veth: the lab VM's kernel has no dummy
		run(t, "ip", "-n", ns.name, "link", "add", d, "type", "veth", "peer", "name", d+"p")
		run(t, "ip", "-n", ns.name, "link", "set", d+"p", "up")
		run(t, "ip", "-n", ns.name, "link", "set", d, "up")
	}
	run(t, "ip", "-n", ns.name, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	run(t, "ip", "-n", ns.name, "addr", "add", "2001:db8:9::1/64", "dev", "wan1", "nodad")
	s := offloadSpec()
	r := applyIn(t, ns, s)
	listing, err := ns.nft(t, "list", "table", "inet", "socksgate")
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, listing)
	}
	devs, oerr := r.Offload()
	if oerr != nil {
		if kernelHasFlowtables(t, ns) {
			t.Fatalf("this kernel has flowtables, yet: %v", oerr)
		}
		t.Logf("no flowtables here (%v): checking the fallback", oerr)
		if !strings.Contains(oerr.Error(), "flowtable ft") || devs != nil {
			t.Errorf("Offload() = %v, %v", devs, oerr)
		}
		if strings.Contains(listing, "flowtable") || strings.Contains(listing, chainOffld) {
			t.Errorf("refused flowtable in the table:\n%s", listing)
		}
		noOffload := s
		noOffload.Offload = false
		if got, want := chainLines(listing), chainLines(noOffload.Render()); !slices.Equal(got, want) {
			t.Errorf("fallback table differs from the table without offload\nkernel:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		p := &pending{kinds: checkDrift}
		if restored, err := r.heal(p); restored || err != nil {
			t.Errorf("the periodic check took the missing flowtable for a drift: restored %v, %v, %q", restored, err, p.what)
		}
		return
	}
	t.Logf("nft list table inet socksgate:\n%s", listing)
	if !slices.Equal(devs, []string{"lan0", "wan0"}) {
		t.Errorf("flowtable devices %q, want lan0 and wan0", devs)
	}
	if !strings.Contains(listing, "flowtable ft {") || !strings.Contains(listing, `devices = { lan0, wan0 }`) {
		t.Errorf("no flowtable ft over lan0 and wan0:\n%s", listing)
	}
	if got, want := chainLines(listing), chainLines(s.Render()); !slices.Equal(got, want) {
		t.Errorf("kernel rules differ from Render\nkernel:\n%s\nrender:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	p := &pending{kinds: checkDrift}
	if restored, err := r.heal(p); restored || err != nil {
		t.Errorf("the periodic check found a drift in a fresh table: restored %v, %v, %q", restored, err, p.what)
	}

	// A default route on wan1 (a WAN that came up after the install): the watcher re-installs.
	w, err := r.Watch(func(ev WatchEvent) { t.Logf("watch: %+v", ev) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	run(t, "ip", "-n", ns.name, "-6", "route", "add", "default", "dev", "wan1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		devs, oerr = r.Offload()
		if slices.Contains(devs, "wan1") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !slices.Equal(devs, []string{"lan0", "wan0", "wan1"}) || oerr != nil {
		t.Fatalf("after a default route on wan1, flowtable devices %q (%v)", devs, oerr)
	}
	if listing, _ = ns.nft(t, "list", "flowtables"); !strings.Contains(listing, "wan1") {
		t.Errorf("the kernel's flowtable has no wan1:\n%s", listing)
	}
	offloadedFlow(t, ns)
}

// offloadedFlow forwards a TCP connection through ns from a LAN host (behind lan0) to a
// server in the direct set (behind wan0), and checks that conntrack has it offloaded while it
// is open, and that the bytes arrive.
func offloadedFlow(t *testing.T, ns testNS) {
	if _, err := exec.LookPath("socat"); err != nil {
		if os.Getenv("CI") != "" { // CI installs every peer (tests/deps.sh)
			t.Fatal("socat is not installed; tests/deps.sh should have installed it")
		}
		t.Skip("skipping the forwarded flow: needs socat (make deps installs it)")
	}
	host := func(peer, addr, gw string) string {
		h := ns.name + "-" + peer
		run(t, "ip", "netns", "add", h)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", h).Run() })
		run(t, "ip", "-n", ns.name, "link", "set", peer, "netns", h)
		run(t, "ip", "-n", h, "addr", "add", addr, "dev", peer)
		run(t, "ip", "-n", h, "link", "set", peer, "up")
		run(t, "ip", "-n", h, "route", "add", "default", "via", gw)
		return h
	}
	client := host("lan0p", "192.0.2.2/24", "192.0.2.1")
	run(t, "ip", "-n", ns.name, "addr", "add", "203.0.114.1/24", "dev", "wan0")
	server := host("wan0p", "203.0.114.5/24", "203.0.114.1")
	run(t, "ip", "netns", "exec", ns.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	got := t.TempDir() + "/got"
	srv := exec.Command("ip", "netns", "exec", server, "socat", "-u", "TCP-LISTEN:9000,reuseaddr", "CREATE:"+got)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	testutil.WaitUntil(t, "the server listening", func() bool {
		out, _ := exec.Command("ip", "netns", "exec", server, "ss", "-Hltn", "sport = :9000").Output()
		return len(strings.TrimSpace(string(out))) > 0
	})
	// 64 KiB, then the connection stays open for 3 s with nothing to say.
	cli := exec.Command("ip", "netns", "exec", client, "socat", "-u", "SYSTEM:head -c 65536 /dev/zero; sleep 3", "TCP:203.0.114.5:9000")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Process.Kill(); _ = cli.Wait() }()
	var entry string
	for deadline := time.Now().Add(2500 * time.Millisecond); time.Now().Before(deadline) && entry == ""; time.Sleep(100 * time.Millisecond) {
		out, _ := exec.Command("ip", "netns", "exec", ns.name, "cat", "/proc/net/nf_conntrack").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "dport=9000") && strings.Contains(l, "[OFFLOAD]") {
				entry = l
			}
		}
	}
	if entry == "" {
		out, _ := exec.Command("ip", "netns", "exec", ns.name, "cat", "/proc/net/nf_conntrack").Output()
		t.Fatalf("no offloaded conntrack entry for the flow to 203.0.114.5:9000:\n%s", out)
	}
	t.Logf("offloaded: %s", entry)
	if err := cli.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}
	_ = srv.Wait()
	if fi, err := os.Stat(got); err != nil || fi.Size() != 65536 {
		t.Errorf("the server got %v bytes (%v), want 65536", fi, err)
	}
}

// TestPeriodicCheckListsOnlyAfterACommit: the generation moves with every commit, anyone's,
// and the periodic check compares the table only once it has moved. The reference the check
// compares with is made wrong on purpose, so a listing shows up as a restore.
func TestPeriodicCheckListsOnlyAfterACommit(t *testing.T) {
	ns := newNS(t)
	r := applyIn(t, ns, systemSpec())
	g1, err := nftGeneration(ns.fd)
	if err != nil {
		t.Fatal(err)
	}
	if g2, _ := nftGeneration(ns.fd); g2 != g1 {
		t.Fatalf("the generation moved without a commit: %d, %d", g1, g2)
	}
	r.mu.Lock()
	r.installed = &tableState{}
	r.mu.Unlock()
	if restored, err := r.heal(&pending{kinds: checkDrift}); restored || err != nil {
		t.Fatalf("no commit since the install, yet the check listed the table: restored %v, %v", restored, err)
	}
	if _, err := ns.nft(t, "add", "table", "inet", "someone_else"); err != nil {
		t.Fatal(err)
	}
	if g3, _ := nftGeneration(ns.fd); g3 == g1 {
		t.Fatalf("the generation did not move with another table's commit: %d", g3)
	}
	p := &pending{kinds: checkDrift}
	if restored, err := r.heal(p); !restored || err != nil {
		t.Fatalf("after a commit the check did not list the table: restored %v, %v, %q", restored, err, p.what)
	}
	// The restore read the generation again: quiet from here.
	if restored, err := r.heal(&pending{kinds: checkDrift}); restored || err != nil {
		t.Fatalf("a second check after the restore: restored %v, %v", restored, err)
	}
}
