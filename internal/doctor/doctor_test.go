package doctor

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/redirect"
)

// files is a fake filesystem.
type files map[string]string

func (f files) read(name string) ([]byte, error) {
	if s, ok := f[name]; ok {
		return []byte(s), nil
	}
	return nil, fs.ErrNotExist
}

func udpSpec() redirect.Spec {
	return redirect.Spec{LANInterfaces: []string{"br-lan"}, TCPPort: 12345, UDPPort: 12345, Mark: 0x1, TProxyMark: 0x2, RouteTable: 100, RulePriority: 100}
}

func has(t *testing.T, got []Finding, check string, sev Severity, substr string) {
	t.Helper()
	for _, f := range got {
		if f.Check == check && f.Severity == sev && strings.Contains(f.Message, substr) {
			if sev >= Warn && f.Fix == "" {
				t.Errorf("finding %+v has no fix", f)
			}
			return
		}
	}
	t.Errorf("no %s finding %q of severity %v in:\n%s", check, substr, sev, dump(got))
}

func dump(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.Severity.String() + " " + f.Check + " " + f.Message + "\n")
	}
	return b.String()
}

func TestForwardingAndRPFilter(t *testing.T) {
	cfg := &configs.Config{LAN: configs.LAN{Interfaces: []string{"br-lan"}}}
	off := files{"/proc/sys/net/ipv4/ip_forward": "0\n", "/proc/sys/net/ipv6/conf/all/forwarding": "0\n",
		"/proc/sys/net/ipv4/conf/all/rp_filter": "0\n", "/proc/sys/net/ipv4/conf/br-lan/rp_filter": "1\n"}
	got := append(Forwarding(cfg, off.read), RPFilter(udpSpec(), off.read)...)
	has(t, got, "sysctl", Block, "ip_forward is 0")
	has(t, got, "sysctl", Warn, "ipv6.conf.all.forwarding is 0")
	has(t, got, "rp_filter", Warn, "strict on br-lan")

	// all=1 makes every interface strict: the kernel takes the larger value.
	allStrict := files{"/proc/sys/net/ipv4/ip_forward": "1", "/proc/sys/net/ipv4/conf/all/rp_filter": "1", "/proc/sys/net/ipv4/conf/br-lan/rp_filter": "0"}
	has(t, RPFilter(udpSpec(), allStrict.read), "rp_filter", Warn, "strict on br-lan")
	loose := files{"/proc/sys/net/ipv4/ip_forward": "1", "/proc/sys/net/ipv4/conf/all/rp_filter": "2", "/proc/sys/net/ipv4/conf/br-lan/rp_filter": "0"}
	got = append(Forwarding(cfg, loose.read), RPFilter(udpSpec(), loose.read)...)
	if Blocking(got) {
		t.Errorf("loose rp_filter and forwarding on block:\n%s", dump(got))
	}
	// REDIRECT only: rp_filter is not checked.
	redir := udpSpec()
	redir.UDPPort = 0
	if got := RPFilter(redir, off.read); len(got) != 0 {
		t.Errorf("REDIRECT-only spec: %s", dump(got))
	}
}

func TestKernelProbe(t *testing.T) {
	f := files{"/proc/modules": "nf_conntrack 1 0 - Live 0x0\nnft_socket 1 0 - Live 0x0\n"}
	got := Kernel(udpSpec(), f.read, func(redirect.Spec) error { return errors.New("add tproxy rule: operation not supported") })
	has(t, got, "kernel", Block, "operation not supported")
	has(t, got, "kernel", Info, "nft_tproxy")
	got = Kernel(udpSpec(), files{}.read, func(redirect.Spec) error { return nil })
	if Blocking(got) {
		t.Errorf("probe ok: %s", dump(got))
	}
}

func TestTablesAndOffload(t *testing.T) {
	tables := []Table{
		{Family: "inet", Name: "fw4", Chains: []Chain{{Name: "mangle_prerouting", Hook: "prerouting", Priority: -150, Actions: []string{"mark"}}, {Name: "forward", Hook: "forward", Actions: []string{"offload"}}}, Flowtables: []string{"ft"}},
		{Family: "ip", Name: "nat", Chains: []Chain{{Name: "PREROUTING", Hook: "prerouting", Priority: -100, Actions: []string{"redirect", "redirect"}}}},
		{Family: "inet", Name: "socksgate", Chains: []Chain{{Name: "prerouting_mangle", Hook: "prerouting", Actions: []string{"tproxy", "mark"}}}, Flowtables: []string{"ft"}},
	}
	got := append(OwnTable(udpSpec(), tables), OtherTables(udpSpec(), tables)...)
	has(t, got, "table", OK, "inet socksgate is installed")
	has(t, got, "firewall", Warn, "table inet fw4, chain mangle_prerouting (hook prerouting, priority -150) does mark")
	has(t, got, "firewall", Warn, "table ip nat, chain PREROUTING (hook prerouting, priority -100) does redirect:")
	for _, f := range got {
		if strings.Contains(f.Message, "socksgate, chain") {
			t.Errorf("socksgate's own table reported: %+v", f)
		}
	}
	has(t, OwnTable(udpSpec(), tables[:2]), "table", Block, "inet socksgate is missing")

	uci := files{"/etc/config/firewall": "config defaults\n\toption syn_flood '1'\n\toption flow_offloading '1'\n\toption flow_offloading_hw '0'\n"}
	got = Offload(udpSpec(), uci.read, tables)
	has(t, got, "offload", Block, "flow_offloading is on")
	has(t, got, "offload", Warn, "flowtable ft")
	for _, f := range got {
		if strings.Contains(f.Message, "flow_offloading_hw") {
			t.Errorf("flow_offloading_hw '0' reported: %+v", f)
		}
		if strings.Contains(f.Message, "socksgate has flowtable") {
			t.Errorf("socksgate's own flowtable (transparent.offload) reported: %+v", f)
		}
	}
}

func TestPolicyRules(t *testing.T) {
	ours := func(fam int) IPRule {
		return IPRule{Family: fam, Priority: 100, Table: 100, Mark: 2, Mask: 0xffffffff, Action: "lookup"}
	}
	local := IPRule{Family: 4, Priority: 0, Table: 255, Action: "lookup"}
	main := IPRule{Family: 4, Priority: 32766, Table: 254, Action: "lookup"}
	got := Policy(udpSpec(), []IPRule{local, ours(4), ours(6), main})
	if Blocking(got) || len(got) != 1 || got[0].Severity != OK {
		t.Errorf("clean rules: %s", dump(got))
	}
	got = Policy(udpSpec(), []IPRule{local, ours(4), main})
	has(t, got, "policy", Block, "IPv6: the rule 'fwmark 0x2 lookup 100' (priority 100) is missing")

	shadow := []IPRule{local,
		{Family: 4, Priority: 50, Table: 254, Action: "lookup"},                           // everything to main first: blocks
		{Family: 4, Priority: 60, Table: 10, Selective: true, Action: "lookup"},           // iif/from: may
		{Family: 4, Priority: 70, Table: 11, Mark: 0x100, Mask: 0x3f00, Action: "lookup"}, // mwan3-style mark: not ours
		{Family: 4, Priority: 80, Table: 12, Mark: 0x2, Mask: 0xff, Action: "lookup"},     // takes our mark, table 12: may
		{Family: 4, Priority: 90, Action: "blackhole"},                                    // blocks
		ours(4), ours(6), main}
	got = Policy(udpSpec(), shadow)
	has(t, got, "policy", Block, "rule priority 50 (lookup table 254)")
	has(t, got, "policy", Warn, "rule priority 60")
	has(t, got, "policy", Warn, "rule priority 80")
	has(t, got, "policy", Block, "rule priority 90 (blackhole")
	for _, f := range got {
		if strings.Contains(f.Message, "priority 70") {
			t.Errorf("a rule on another mark reported: %+v", f)
		}
	}
}

func TestListenersAndUpstreams(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	cfg, err := configs.Parse([]byte(`
lan: {interfaces: [br-lan]}
transparent: {udp: true, tcp_port: 12345, udp_port: 12346}
listen: {http: ["127.0.0.1:8080", "lan:8080"], socks: []}
upstreams:
  - {name: up, url: "socks5://` + up.Addr().String() + `"}
  - {name: gone, url: "socks5://192.0.2.1:1080"}
  - {name: far, url: "socks5://198.51.100.1:1080", via: up}
rules: [{action: proxy, upstream: up}]
`))
	if err != nil {
		t.Fatal(err)
	}
	// The fake network: 12345 and 8080 listen, the rest refuse.
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		switch addr {
		case up.Addr().String():
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		case "127.0.0.1:12345":
			c, s := net.Pipe()
			s.Close()
			return c, nil
		}
		return nil, errors.New("connection refused")
	}
	udp := files{"/proc/net/udp": "  sl  local_address rem_address   st\n   0: 00000000:303A 00000000:0000 07\n"} // 0x303A = 12346
	got := append(Listeners(context.Background(), cfg, udp.read, dial, time.Second), Upstreams(context.Background(), cfg, dial, time.Second)...)
	has(t, got, "listener", OK, "transparent TCP listener answers on 127.0.0.1:12345")
	has(t, got, "listener", OK, "UDP port 12346 is bound")
	has(t, got, "listener", Warn, "HTTP proxy does not answer on 127.0.0.1:8080")
	has(t, got, "upstream", OK, "upstream up")
	has(t, got, "upstream", Warn, "upstream gone")
	has(t, got, "upstream", Info, "far is reached via up")
	for _, a := range dialed {
		if strings.HasPrefix(a, "198.51.100.1") {
			t.Errorf("dialled the far end of a via chain: %s", a)
		}
	}
	got = Listeners(context.Background(), cfg, files{"/proc/net/udp": "header\n", "/proc/net/udp6": "header\n"}.read, dial, time.Second)
	has(t, got, "listener", Block, "nothing is bound to UDP port 12346")
}
