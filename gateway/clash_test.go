package gateway

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/state"
	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// A flow closed through the control API ends for its client too (it reads EOF), its line
// says why, and the bytes it carried count in the traffic totals before and after.
func TestCloseFlowFromTheAPIEndsTheClientsConnection(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO byte counts are Linux-only")
	}
	server, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	var received atomic.Int64 // what the relay has carried up to the server
	go func() {
		for {
			c, err := server.Accept()
			if err != nil {
				return
			}
			go func() {
				c.Write(make([]byte, 5000))
				io.Copy(io.Discard, readCounter{c, &received})
				c.Close()
			}()
		}
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	logger, hook := logtest.NewNullLogger()
	g := &Gateway{Router: fixedRouter{Action: route.ActionDirect, ByDst: true, Upstream: stubUpstream{"direct-stub"}, Rule: "all", Way: "direct"},
		Log: logrus.NewEntry(logger)}
	dst := netip.MustParseAddrPort(server.Addr().String())
	go func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			g.Handle(context.Background(), c, route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: dst, Inbound: route.Redirect}, nil)
		}
	}()
	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(make([]byte, 3000))
		if _, err := io.ReadFull(c, make([]byte, 5000)); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	a := AdminSource{G: g}
	// The relay has read the clients' bytes (the ended flow's count is the relay's; the live
	// ones are the client sockets' TCP_INFO, which counts them as soon as the kernel has them).
	testutil.WaitUntil(t, "the relay to carry both clients' bytes", func() bool { return received.Load() == 6000 })
	testutil.WaitUntil(t, "both flows to count their bytes", func() bool {
		up, down := a.Traffic()
		return up == 6000 && down == 10000
	})
	flows := g.LiveFlows()
	if len(flows) != 2 || flows[0].ID == "" || flows[0].ID == flows[1].ID || flows[0].Way != "direct" {
		t.Fatalf("flows %+v", flows)
	}
	// The first client's flow is the one whose source port is its local port.
	var id string
	for _, f := range flows {
		if f.Src == clients[0].LocalAddr().String() {
			id = f.ID
		}
	}
	if !a.CloseFlow(id) {
		t.Fatalf("CloseFlow(%q) found nothing", id)
	}
	if a.CloseFlow(id + "0") {
		t.Fatal("an unknown id closed something")
	}
	clients[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := clients[0].Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("the client's read after the close: %d %v, want the connection ended", n, err)
	}
	testutil.WaitUntil(t, "one flow left", func() bool { return g.Active() == 1 })
	if up, down := a.Traffic(); up != 6000 || down != 10000 {
		t.Errorf("traffic after the close: %d/%d, want 6000/10000 (the ended flow's bytes kept)", up, down)
	}
	var closedLine bool
	for _, e := range hook.AllEntries() {
		if err, _ := e.Data[logrus.ErrorKey].(error); err != nil && strings.Contains(err.Error(), ErrClosedByAPI.Error()) {
			closedLine = true
		}
	}
	if !closedLine {
		t.Error("no flow line says the API closed it")
	}
	if n := a.CloseFlows(); n != 1 {
		t.Errorf("CloseFlows closed %d, want 1", n)
	}
	testutil.WaitUntil(t, "no flow left", func() bool { return g.Active() == 0 })
}

func selectGroup(t *testing.T) (*upstream.Group, *configs.Config) {
	t.Helper()
	cfg, err := configs.Parse([]byte(`
upstreams:
  - {name: a, url: "socks5://192.0.2.1:1080"}
  - {name: b, url: "socks5://192.0.2.2:1080"}
groups:
  - {name: pick, policy: select, upstreams: [a, b], health: {interval: 0}}
listen: {http: ["127.0.0.1:0"], socks: []}
rules: [{upstream: pick}]
`))
	if err != nil {
		t.Fatal(err)
	}
	ups, err := upstream.NewUpstreamsIdle(cfg, upstream.Direct{})
	if err != nil {
		t.Fatal(err)
	}
	return ups["pick"].(*upstream.Group), cfg
}

// A select group's choice is written to the state directory and applied to the groups built
// after it (a reload, a restart); a damaged file, or a state directory that cannot be used,
// costs the choice, with a warning, and never the start.
func TestSelectionsSurviveRestartsAndDamage(t *testing.T) {
	dir := t.TempDir()
	logger, hook := logtest.NewNullLogger()
	s := loadSelections(dir, logger)
	if err := s.set("pick", "b"); err != nil {
		t.Fatal(err)
	}
	grp, cfg := selectGroup(t)
	loadSelections(dir, logger).apply(cfg, map[string]upstream.Upstream{"pick": grp})
	if grp.Now() != "b" {
		t.Fatalf("after a restart: %q, want b", grp.Now())
	}
	if len(hook.AllEntries()) != 0 {
		t.Fatalf("warnings: %v", hook.AllEntries())
	}

	// A choice that is not a member any more is dropped, with a warning.
	s.set("pick", "gone")
	grp, cfg = selectGroup(t)
	loadSelections(dir, logger).apply(cfg, map[string]upstream.Upstream{"pick": grp})
	if grp.Now() != "a" || hook.LastEntry() == nil || hook.LastEntry().Level != logrus.WarnLevel {
		t.Fatalf("stale choice: now %q, last log %v", grp.Now(), hook.LastEntry())
	}

	// Damage: a cut file.
	b, err := os.ReadFile(filepath.Join(dir, selectionsFile))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, selectionsFile), b[:len(b)-3], 0o600)
	hook.Reset()
	damaged := loadSelections(dir, logger)
	if len(damaged.chosen) != 0 || hook.LastEntry() == nil || !strings.Contains(hook.LastEntry().Message, "lost") {
		t.Fatalf("damaged file: %v, log %v", damaged.chosen, hook.LastEntry())
	}
	if err := damaged.set("pick", "b"); err != nil {
		t.Fatalf("writing over a damaged file: %v", err)
	}
	// Checksummed but not JSON.
	d, _ := state.Open(dir)
	d.WriteFile(selectionsFile, []byte("{not json"))
	if got := loadSelections(dir, logger); len(got.chosen) != 0 {
		t.Fatalf("not JSON: %v", got.chosen)
	}

	// A config without a select group touches no state directory.
	untouched := filepath.Join(t.TempDir(), "never")
	plain, _ := configs.Parse([]byte("listen: {http: [\"127.0.0.1:0\"], socks: []}\n"))
	newSelections(untouched, logger).apply(plain, nil)
	if _, err := os.Stat(untouched); !os.IsNotExist(err) {
		t.Fatalf("state directory created for a config without select groups: %v", err)
	}

	// A state directory that is a file: choices last in memory.
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o600)
	hook.Reset()
	mem := loadSelections(file, logger)
	if hook.LastEntry() == nil || hook.LastEntry().Level != logrus.WarnLevel {
		t.Fatal("no warning for an unusable state directory")
	}
	if err := mem.set("pick", "b"); err != nil {
		t.Fatalf("set without a directory: %v", err)
	}
	grp, cfg = selectGroup(t)
	mem.apply(cfg, map[string]upstream.Upstream{"pick": grp})
	if grp.Now() != "b" {
		t.Fatalf("in memory: %q", grp.Now())
	}
}

func TestClashRuleTypes(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
upstreams: [{name: p, url: "socks5://192.0.2.1:1080"}]
devices: {enabled: true}
listen: {http: ["127.0.0.1:0"], socks: []}
rules:
  - {name: ads, domain: [".ads.example"], action: block}
  - {name: two, domain: [a.example, ".b.example"], upstream: p}
  - {name: net, dst: [10.0.0.0/8], upstream: p}
  - {name: web, dst_ports: [443], protocol: [tcp], upstream: p}
  - {name: lan, src: [192.168.1.0/24, 192.168.2.0/24], inbound: [http], action: direct}
  - {name: mac, src_mac: ["AA:BB:CC:DD:EE:FF"], device: [laptop], upstream: p}
  - {name: last, upstream: p}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{
		{"DomainSuffix", "ads.example"},
		{"AND", "((Domain,a.example) && (DomainSuffix,b.example))"},
		{"IPCIDR", "10.0.0.0/8"},
		{"AND", "((DstPort,443) && (Network,tcp))"},
		{"AND", "(((SrcIPCIDR,192.168.1.0/24) || (SrcIPCIDR,192.168.2.0/24)) && (InType,http))"},
		{"AND", "((SrcMAC,aa:bb:cc:dd:ee:ff) && (Device,laptop))"},
		{"Match", ""},
	}
	for i, r := range cfg.Rules {
		typ, payload := clashRule(r)
		if typ != want[i][0] || payload != want[i][1] {
			t.Errorf("%s: %s %q, want %s %q", r.Name, typ, payload, want[i][0], want[i][1])
		}
	}
}

// readCounter adds what is read through it to n.
type readCounter struct {
	io.Reader
	n *atomic.Int64
}

func (r readCounter) Read(p []byte) (int, error) {
	k, err := r.Reader.Read(p)
	r.n.Add(int64(k))
	return k, err
}
