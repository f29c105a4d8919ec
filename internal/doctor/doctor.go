// Package doctor checks the running system against a socksgate config: kernel support for its
// rules, forwarding and rp_filter, other firewall tables and policy-routing rules that take the
// same traffic, flow offloading, socksgate's own table, its listeners and its upstreams. Each
// check is a function of the state it reads (file contents, a summary of the nftables ruleset,
// the policy rules, a dial function), so tests feed it made-up systems; System gathers the
// real one on Linux. It reads and never changes anything in the namespace it looks at.
package doctor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/redirect"
)

// Severity says how bad a finding is.
type Severity uint8

const (
	OK    Severity = iota // checked and fine
	Info                  // worth knowing, harms nothing
	Warn                  // may break some flows or capture in some setups
	Block                 // capture (or the gateway) does not work as configured
)

var severities = [...]string{OK: "ok", Info: "info", Warn: "warn", Block: "BLOCK"}

func (s Severity) String() string { return severities[s] }

// MarshalText implements encoding.TextMarshaler.
func (s Severity) MarshalText() ([]byte, error) { return []byte(strings.ToLower(s.String())), nil }

// Finding is one result of a check.
type Finding struct {
	Check    string   `json:"check"` // kernel, sysctl, rp_filter, firewall, offload, policy, table, listener, upstream
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"` // one line; empty for OK and Info
}

// Blocking reports whether any finding blocks capture.
func Blocking(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Severity == Block })
}

// ReadFile reads a file of the system (/proc/sys/..., /etc/config/firewall).
type ReadFile func(name string) ([]byte, error)

// Dial opens a connection (to a listener, an upstream).
type Dial func(ctx context.Context, network, address string) (net.Conn, error)

// Table is a summary of one nftables table: what its base chains do.
type Table struct {
	Family     string // ip, ip6, inet, ...
	Name       string
	Chains     []Chain
	Flowtables []string
}

// Chain is one base chain and what its rules do to packets.
type Chain struct {
	Name     string
	Hook     string // prerouting, input, forward, output, postrouting; "" for a regular chain
	Priority int
	// Actions are what the chain's rules do that bears on capture: tproxy, redirect, dnat,
	// mark, offload (flow add to a flowtable). Targets of iptables-nft rules count as theirs.
	Actions []string
}

// IPRule is one policy-routing rule.
type IPRule struct {
	Family   int // 4 or 6
	Priority int
	Table    int
	Mark     uint32
	Mask     uint32 // 0 with Mark 0: no fwmark selector
	// Selective says the rule has a selector besides fwmark (from, to, iif, oif, ports, uid,
	// tos): it takes only part of the traffic.
	Selective bool
	// Action is "lookup", "goto", "blackhole", "unreachable", "prohibit" or "nop".
	Action string
}

// Input is the state of a system, as the checks see it.
type Input struct {
	ReadFile ReadFile
	// Tables is the nftables ruleset; TablesErr why it could not be read.
	Tables    []Table
	TablesErr error
	// Rules are the policy-routing rules; RulesErr why they could not be read.
	Rules    []IPRule
	RulesErr error
	// ProbeKernel installs spec's rules in a throwaway network namespace and removes them;
	// nil skips the probe.
	ProbeKernel func(redirect.Spec) error
	Dial        Dial
	// Offline skips the checks of the upstreams.
	Offline bool
	// Timeout bounds each connection attempt. Default 2s.
	Timeout time.Duration
}

// Run runs every check of cfg (spec is what socksgate installs for it) against in.
func Run(ctx context.Context, cfg *configs.Config, spec redirect.Spec, in Input) []Finding {
	if in.Timeout <= 0 {
		in.Timeout = 2 * time.Second
	}
	var out []Finding
	out = append(out, Kernel(spec, in.ReadFile, in.ProbeKernel)...)
	out = append(out, Forwarding(cfg, in.ReadFile)...)
	out = append(out, RPFilter(spec, in.ReadFile)...)
	if in.TablesErr != nil {
		out = append(out, Finding{"firewall", Warn, "cannot read the nftables ruleset: " + in.TablesErr.Error(), "run socksgate doctor as root (CAP_NET_ADMIN)"})
	} else {
		out = append(out, OwnTable(spec, in.Tables)...)
		out = append(out, OtherTables(spec, in.Tables)...)
	}
	out = append(out, Offload(spec, in.ReadFile, in.Tables)...)
	if in.RulesErr != nil {
		out = append(out, Finding{"policy", Warn, "cannot read the policy-routing rules: " + in.RulesErr.Error(), "run socksgate doctor as root"})
	} else {
		out = append(out, Policy(spec, in.Rules)...)
	}
	if in.Dial != nil {
		out = append(out, Listeners(ctx, cfg, in.ReadFile, in.Dial, in.Timeout)...)
		if !in.Offline {
			out = append(out, Upstreams(ctx, cfg, in.Dial, in.Timeout)...)
		}
	}
	return out
}

// captures reports whether spec captures anything (LAN interfaces and a port).
func captures(s redirect.Spec) bool {
	return len(s.LANInterfaces) > 0 && (s.TCPPort != 0 || s.UDPPort != 0 || s.DNSPort != 0)
}

// tproxies reports whether spec uses TPROXY (and with it policy routing).
func tproxies(s redirect.Spec) bool {
	return len(s.LANInterfaces) > 0 && (s.UDPPort != 0 || (s.TCPPort != 0 && s.TCPMode == configs.TCPModeTProxy))
}

// kernelModules are what socksgate's rules need, as /proc/modules names them.
var kernelModules = []string{"nf_conntrack", "nft_socket", "nft_tproxy", "nf_tproxy_ipv4", "nf_tproxy_ipv6"}

// Kernel checks that the kernel can hold socksgate's rules: probe installs them in a
// throwaway namespace (the verdict); /proc/modules, when there is one, says which modules are
// not loaded yet (the kernel loads them at first use, so that alone is only information).
func Kernel(spec redirect.Spec, read ReadFile, probe func(redirect.Spec) error) []Finding {
	if !captures(spec) {
		return []Finding{{"kernel", OK, "no lan.interfaces: nothing is captured, no kernel rules needed", ""}}
	}
	var out []Finding
	if b, err := read("/proc/modules"); err == nil {
		loaded := map[string]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				loaded[f[0]] = true
			}
		}
		var missing []string
		for _, m := range kernelModules {
			if !loaded[m] && (tproxies(spec) || (m != "nft_tproxy" && !strings.HasPrefix(m, "nf_tproxy"))) {
				missing = append(missing, m)
			}
		}
		if len(missing) > 0 {
			out = append(out, Finding{"kernel", Info, "modules not loaded (yet): " + strings.Join(missing, ", ") + " (built in, or loaded at first use)", ""})
		}
	}
	if probe == nil {
		return out
	}
	if err := probe(spec); err != nil {
		what := "nft_socket and conntrack"
		if tproxies(spec) {
			what = "nft_tproxy, nft_socket and conntrack"
		}
		return append(out, Finding{"kernel", Block, "socksgate's rules cannot be installed on this kernel: " + oneLine(err),
			"install and load the kernel modules for " + what + " (OpenWrt: opkg install kmod-nft-tproxy kmod-nft-socket)"})
	}
	return append(out, Finding{"kernel", OK, "socksgate's rules install (tried in a throwaway network namespace)", ""})
}

// Forwarding checks net.ipv4.ip_forward and net.ipv6.conf.all.forwarding: a gateway that does
// not forward routes nothing socksgate does not capture (bypassed destinations, ICMP).
func Forwarding(cfg *configs.Config, read ReadFile) []Finding {
	if len(cfg.LAN.Interfaces) == 0 {
		return nil
	}
	var out []Finding
	v4, err := sysctl(read, "net/ipv4/ip_forward")
	switch {
	case err != nil:
		out = append(out, Finding{"sysctl", Warn, "cannot read net.ipv4.ip_forward: " + err.Error(), "check /proc/sys is mounted"})
	case v4 == "0":
		out = append(out, Finding{"sysctl", Block, "net.ipv4.ip_forward is 0: the LAN's traffic that is not captured (bypassed destinations, ICMP, on_crash: open) is not routed",
			"sysctl -w net.ipv4.ip_forward=1 (and set it in /etc/sysctl.d/)"})
	default:
		out = append(out, Finding{"sysctl", OK, "net.ipv4.ip_forward is 1", ""})
	}
	if v6, err := sysctl(read, "net/ipv6/conf/all/forwarding"); err == nil && v6 == "0" {
		out = append(out, Finding{"sysctl", Warn, "net.ipv6.conf.all.forwarding is 0: the LAN's IPv6 is not routed",
			"sysctl -w net.ipv6.conf.all.forwarding=1 (if the LAN has IPv6)"})
	}
	return out
}

// RPFilter checks reverse-path filtering on the LAN interfaces: the kernel applies the larger
// of conf/all and conf/IFACE, and strict (1) drops packets TPROXY takes whose reverse path
// leaves by another interface (asymmetric LANs, multi-WAN, policy routing by source). On a
// symmetric LAN strict filtering does not stop TPROXY (measured in the lab), so it is a warning.
func RPFilter(spec redirect.Spec, read ReadFile) []Finding {
	if !tproxies(spec) {
		return nil
	}
	all, _ := sysctl(read, "net/ipv4/conf/all/rp_filter")
	var out []Finding
	for _, ifc := range spec.LANInterfaces {
		v, err := sysctl(read, "net/ipv4/conf/"+ifc+"/rp_filter")
		if err != nil {
			out = append(out, Finding{"rp_filter", Warn, fmt.Sprintf("LAN interface %s: cannot read its rp_filter (%v)", ifc, err), "check that the interface " + ifc + " exists"})
			continue
		}
		eff := max(atoi(all), atoi(v))
		if eff == 1 {
			// Measured: on a symmetric LAN (hosts routed back through the interface they
			// come in on) TPROXY'd UDP works with strict rp_filter; a warning, not a block.
			out = append(out, Finding{"rp_filter", Warn, fmt.Sprintf("rp_filter is strict on %s (all=%s, %s=%s): LAN packets whose reverse path is not %s (asymmetric routes, several LAN interfaces, policy routing by source) are dropped before socksgate sees them", ifc, all, ifc, v, ifc),
				fmt.Sprintf("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2 (loose)", ifc)})
			continue
		}
		out = append(out, Finding{"rp_filter", OK, fmt.Sprintf("rp_filter on %s is %d", ifc, eff), ""})
	}
	return out
}

// OwnTable checks that socksgate's table is there when the config captures.
func OwnTable(spec redirect.Spec, tables []Table) []Finding {
	if !captures(spec) {
		return nil
	}
	name := tableName(spec)
	for _, t := range tables {
		if t.Family == "inet" && t.Name == name {
			return []Finding{{"table", OK, "table inet " + name + " is installed", ""}}
		}
	}
	return []Finding{{"table", Block, "table inet " + name + " is missing: nothing is captured (socksgate is not running, or a firewall reload flushed the ruleset)",
		"start socksgate (systemctl restart socksgate; on OpenWrt /etc/init.d/socksgate restart)"}}
}

// OtherTables reports the other tables whose chains on the LAN's path redirect, TPROXY or mark
// traffic: they take the same packets as socksgate, and which one wins is a matter of hook
// priorities.
func OtherTables(spec redirect.Spec, tables []Table) []Finding {
	if !captures(spec) {
		return nil
	}
	own := tableName(spec)
	var out []Finding
	for _, t := range tables {
		if t.Family == "inet" && t.Name == own {
			continue
		}
		for _, c := range t.Chains {
			if c.Hook != "prerouting" && c.Hook != "output" {
				continue
			}
			var acts []string
			for _, a := range c.Actions {
				if a != "offload" && !slices.Contains(acts, a) {
					acts = append(acts, a)
				}
			}
			if len(acts) == 0 {
				continue
			}
			out = append(out, Finding{"firewall", Warn,
				fmt.Sprintf("table %s %s, chain %s (hook %s, priority %d) does %s: it may take the traffic socksgate captures", t.Family, t.Name, c.Name, c.Hook, c.Priority, strings.Join(acts, ", ")),
				"exclude the LAN's proxied traffic there, or remove that proxy's rules (another transparent proxy, mwan3 marks overlapping mark " + hex(spec.Mark) + "/" + hex(spec.TProxyMark) + ")"})
		}
	}
	return out
}

// Offload checks fw4's flow_offloading and flowtables in any table: offloaded flows skip the
// hooks socksgate's rules and conntrack marks live in.
func Offload(spec redirect.Spec, read ReadFile, tables []Table) []Finding {
	if !captures(spec) {
		return nil
	}
	var out []Finding
	if b, err := read("/etc/config/firewall"); err == nil {
		for _, opt := range []string{"flow_offloading", "flow_offloading_hw"} {
			if uciEnabled(string(b), opt) {
				out = append(out, Finding{"offload", Block, "fw4 " + opt + " is on (/etc/config/firewall): offloaded flows bypass socksgate's capture",
					"uci set firewall.@defaults[0]." + opt + "=0 && uci commit firewall && fw4 reload"})
			}
		}
	}
	for _, t := range tables {
		if t.Family == "inet" && t.Name == tableName(spec) {
			continue // socksgate's own (transparent.offload) holds only flows it sends direct
		}
		for _, ft := range t.Flowtables {
			out = append(out, Finding{"offload", Warn, fmt.Sprintf("table %s %s has flowtable %s: flows added to it skip the LAN hooks", t.Family, t.Name, ft),
				"remove the flowtable or its 'flow add' rule, or keep the LAN's captured traffic out of it"})
		}
	}
	return out
}

// uciEnabled reports whether a UCI file sets option opt to a true value.
func uciEnabled(file, opt string) bool {
	for _, line := range strings.Split(file, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "option" && f[1] == opt {
			switch strings.Trim(f[2], `'"`) {
			case "1", "on", "true", "yes", "enabled":
				return true
			}
		}
	}
	return false
}

// Policy checks the fwmark rule TPROXY needs and the rules before it that would take its
// packets first.
func Policy(spec redirect.Spec, rules []IPRule) []Finding {
	if !tproxies(spec) {
		return nil
	}
	prio, table, mark := rulePriority(spec), routeTable(spec), tproxyMark(spec)
	var out []Finding
	for _, fam := range []int{4, 6} {
		found := false
		for _, r := range rules {
			if r.Family == fam && r.Priority == prio && r.Table == table && r.Mark == mark && !r.Selective {
				found = true
			}
		}
		if !found {
			out = append(out, Finding{"policy", Block, fmt.Sprintf("IPv%d: the rule 'fwmark %s lookup %d' (priority %d) is missing: TPROXY'd packets are routed away instead of delivered to socksgate", fam, hex(mark), table, prio),
				"restart socksgate (it installs the rule); if another tool removes it, give transparent.rule_priority a value it leaves alone"})
		}
		for _, r := range rules {
			if r.Family != fam || r.Priority >= prio || (r.Priority == 0 && r.Table == 255) || r.Action == "nop" {
				continue
			}
			if r.Mask != 0 && mark&r.Mask != r.Mark {
				continue // its fwmark selector does not take our mark
			}
			sev, how := Warn, "may take"
			if !r.Selective && (r.Action != "lookup" || r.Table == 254 || r.Table == 253) {
				sev, how = Block, "takes"
			}
			out = append(out, Finding{"policy", sev,
				fmt.Sprintf("IPv%d: rule priority %d (%s table %d) comes before socksgate's fwmark rule (%d) and %s its packets", fam, r.Priority, r.Action, r.Table, prio, how),
				fmt.Sprintf("set transparent.rule_priority below %d, or exclude fwmark %s from that rule", r.Priority, hex(mark))})
		}
	}
	if len(out) == 0 {
		out = append(out, Finding{"policy", OK, fmt.Sprintf("fwmark %s lookup %d at priority %d, nothing before it", hex(mark), table, prio), ""})
	}
	return out
}

// Listeners checks socksgate's listeners answer on loopback: the transparent TCP port and the
// explicit ports (a connection), the transparent UDP port (bound, in /proc/net/udp), the
// admin endpoint (/healthz).
func Listeners(ctx context.Context, cfg *configs.Config, read ReadFile, dial Dial, timeout time.Duration) []Finding {
	var out []Finding
	try := func(what, addr string, blocks bool) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := dial(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			out = append(out, Finding{"listener", OK, what + " answers on " + addr, ""})
			return
		}
		sev := Warn
		if blocks {
			sev = Block
		}
		out = append(out, Finding{"listener", sev, what + " does not answer on " + addr + ": " + oneLine(err),
			"start socksgate, or look in its log for why it could not bind " + addr})
	}
	if len(cfg.LAN.Interfaces) > 0 && cfg.Transparent.TCPPort != 0 {
		try("the transparent TCP listener", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(cfg.Transparent.TCPPort))), true)
	}
	if len(cfg.LAN.Interfaces) > 0 && cfg.Transparent.UDP && cfg.Transparent.UDPPort != 0 {
		if bound, err := udpBound(read, cfg.Transparent.UDPPort); err == nil && !bound {
			out = append(out, Finding{"listener", Block, fmt.Sprintf("nothing is bound to UDP port %d (the transparent UDP listener)", cfg.Transparent.UDPPort),
				"start socksgate, or look in its log for why it could not bind the UDP port"})
		} else if err == nil {
			out = append(out, Finding{"listener", OK, fmt.Sprintf("UDP port %d is bound", cfg.Transparent.UDPPort), ""})
		}
	}
	for _, l := range []struct {
		what  string
		addrs configs.AddrList
	}{{"the HTTP proxy", cfg.Listen.HTTP}, {"the SOCKS proxy", cfg.Listen.SOCKS}, {"the mixed proxy port", cfg.Listen.Mixed}} {
		for _, a := range l.addrs {
			la, err := configs.ParseListenAddr(a)
			if err != nil || la.LAN {
				continue // lan:PORT binds the interfaces' addresses, not loopback
			}
			host := la.Host
			if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
				host = "127.0.0.1"
				if err == nil && ip.Is6() {
					host = "::1"
				}
			}
			try(l.what, net.JoinHostPort(host, strconv.Itoa(int(la.Port))), false)
		}
	}
	if cfg.Admin.Listen != "" {
		out = append(out, healthz(ctx, cfg.Admin.Listen, dial, timeout))
	}
	return out
}

// healthz asks the admin endpoint's /healthz.
func healthz(ctx context.Context, addr string, dial Dial, timeout time.Duration) Finding {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Finding{"listener", Warn, "admin " + addr + ": " + err.Error(), "fix admin: in the config"}
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	addr = net.JoinHostPort(host, port)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	status, err := getStatus(ctx, dial, "http://"+addr+"/healthz")
	switch {
	case err != nil:
		return Finding{"listener", Warn, "admin endpoint " + addr + " does not answer: " + oneLine(err), "start socksgate, or look in its log for why it could not bind " + addr}
	case status != 200:
		return Finding{"listener", Warn, fmt.Sprintf("admin endpoint %s/healthz answers %d", addr, status), "see socksgate status and its log"}
	}
	return Finding{"listener", OK, "admin endpoint " + addr + "/healthz answers 200", ""}
}

// Upstreams checks that each upstream's proxy accepts a TCP connection (the first hop of a
// via chain: the others are reached through it).
func Upstreams(ctx context.Context, cfg *configs.Config, dial Dial, timeout time.Duration) []Finding {
	var out []Finding
	for _, u := range cfg.Upstreams {
		if u.URL == nil || u.URL.Scheme == configs.SchemeDirect {
			continue
		}
		if u.Via != "" {
			out = append(out, Finding{"upstream", Info, fmt.Sprintf("upstream %s is reached via %s: only the first hop is checked", u.Name, u.Via), ""})
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		c, err := dial(cctx, "tcp", u.URL.Host)
		cancel()
		if err != nil {
			out = append(out, Finding{"upstream", Warn, fmt.Sprintf("upstream %s (%s) does not answer: %s", u.Name, configs.Redacted(u.URL), oneLine(err)),
				"check the proxy is up and reachable from the router (its address, a firewall on the way)"})
			continue
		}
		c.Close()
		out = append(out, Finding{"upstream", OK, fmt.Sprintf("upstream %s (%s) accepts connections", u.Name, configs.Redacted(u.URL)), ""})
	}
	return out
}

// udpBound reports whether a UDP socket is bound to port, from /proc/net/udp and udp6.
func udpBound(read ReadFile, port uint16) (bool, error) {
	want := fmt.Sprintf(":%04X", port)
	var lastErr error
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := read(f)
		if err != nil {
			lastErr = err
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) > 2 && strings.HasSuffix(fs[1], want) {
				return true, nil
			}
		}
		lastErr = nil
	}
	return false, lastErr
}

func sysctl(read ReadFile, path string) (string, error) {
	b, err := read("/proc/sys/" + path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func hex(v uint32) string { return fmt.Sprintf("%#x", v) }

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func tableName(s redirect.Spec) string {
	if s.Table == "" {
		return redirect.DefaultTable
	}
	return s.Table
}

func rulePriority(s redirect.Spec) int {
	if s.RulePriority == 0 {
		return redirect.DefaultRulePriority
	}
	return s.RulePriority
}

func routeTable(s redirect.Spec) int {
	if s.RouteTable == 0 {
		return redirect.DefaultRouteTable
	}
	return s.RouteTable
}

func tproxyMark(s redirect.Spec) uint32 {
	if s.TProxyMark == 0 {
		return redirect.DefaultTProxyMark
	}
	return s.TProxyMark
}
