package configs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/relay"
)

// problemsOf returns the problems of a *ValidationError, failing otherwise.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	return ve.Problems
}

func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v\n--- document:\n%s", err, doc)
	}
	return c
}

func TestDefaultValidatesAndIsQuiet(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("Warnings() = %q, want none", w)
	}
	if len(c.LAN.Interfaces) != 0 {
		t.Errorf("default captures %v, want nothing", c.LAN.Interfaces)
	}
	if len(c.Upstreams) != 0 {
		t.Errorf("default has upstreams %v", c.Upstreams)
	}
	if len(c.Rules) != 1 || c.Rules[0].Action != ActionDirect || !c.Rules[0].IsCatchAll() || c.Rules[0].Implicit {
		t.Errorf("default rules = %+v, want one explicit direct catch-all", c.Rules)
	}
	if got := slices.Clone(c.Listen.HTTP); !slices.Equal(got, AddrList{"127.0.0.1:8080", "lan:8080"}) {
		t.Errorf("listen.http = %q", got)
	}
	if got := c.Listen.SOCKS; !slices.Equal(got, AddrList{"127.0.0.1:1080", "lan:1080"}) {
		t.Errorf("listen.socks = %q", got)
	}
	if !strings.Contains(string(DefaultYAML()), "lan:") {
		t.Error("DefaultYAML does not look like the default file")
	}
}

// The embedded file and the built-in defaults must agree: the default file
// is the reference of the defaults, so it must not drift from them.
func TestDefaultFileMatchesBuiltinDefaults(t *testing.T) {
	fromFile := Default()
	builtin := mustParse(t, "rules: [{name: default, action: direct}]")
	if !reflect.DeepEqual(fromFile, builtin) {
		t.Errorf("default.yaml differs from the built-in defaults:\nfile:    %+v\nbuiltin: %+v", fromFile, builtin)
	}
}

func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"router.yaml", "failover.yaml", "chain.yaml"} {
		if !slices.Contains(files, filepath.Join("examples", want)) {
			t.Errorf("examples/%s missing", want)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if data, _ := os.ReadFile(f); !geoip.Built && strings.Contains(string(data), "geoip:") {
				t.Skip("built without GeoIP")
			}
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("Warnings() = %q, want none", w)
			}
			if c.Rules[len(c.Rules)-1].Implicit {
				t.Errorf("example relies on the implicit rule")
			}
		})
	}
}

func TestExampleContents(t *testing.T) {
	router, err := Load("examples/router.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !router.Transparent.UDP || !slices.Equal(router.LAN.Interfaces, []string{"eth1"}) {
		t.Errorf("router: udp=%v interfaces=%v", router.Transparent.UDP, router.LAN.Interfaces)
	}
	if u := router.Upstream("main"); u == nil || u.URL.Scheme != SchemeSOCKS5 || u.URL.User == nil {
		t.Errorf("router: upstream main = %+v, want socks5 with auth", u)
	}
	failover, err := Load("examples/failover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if g := failover.Group("out"); g == nil || len(g.Upstreams) != 2 || g.Health.Interval.Std() != 10*time.Second {
		t.Errorf("failover: group = %+v", g)
	}
	chain, err := Load("examples/chain.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if u := chain.Upstream("outer"); u == nil || u.Via != "corp" || chain.Upstream("corp").URL.Scheme != SchemeHTTP {
		t.Errorf("chain: outer = %+v", u)
	}
}

func TestDefaultsApplied(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "{}", "---\n", "log: ~\nlisten:\n"} {
		c := mustParse(t, doc)
		want := defaults()
		want.finish()
		if !reflect.DeepEqual(c, want) {
			t.Errorf("Parse(%q) = %+v\nwant %+v", doc, c, want)
		}
	}
	c := mustParse(t, "")
	checks := []struct {
		name      string
		got, want any
	}{
		{"log.level", c.Log.Level, LogInfo},
		{"log.format", c.Log.Format, LogText},
		{"transparent.tcp_port", c.Transparent.TCPPort, uint16(12345)},
		{"transparent.tcp_mode", c.Transparent.TCPMode, TCPModeRedirect},
		{"transparent.udp", c.Transparent.UDP, false},
		{"transparent.udp_port", c.Transparent.UDPPort, uint16(12345)},
		{"transparent.udp_idle", c.Transparent.UDPIdle.Std(), 60 * time.Second},
		{"transparent.udp_max_sessions", c.Transparent.UDPMaxSessions, 4096},
		{"transparent.udp_without_support", c.Transparent.UDPOverTCPUpstream, UDPBlock},
		{"transparent.quic", c.Transparent.QUIC, QUICSniff},
		{"transparent.icmp", c.Transparent.ICMP, ICMPPass},
		{"transparent.bypass_builtin", c.Transparent.BypassBuiltinEnabled(), true},
		{"transparent.tproxy_mark", c.Transparent.TProxyMark, uint32(2)},
		{"transparent.route_table", c.Transparent.RouteTable, 100},
		{"transparent.rule_priority", c.Transparent.RulePriority, 100},
		{"transparent.sniff.enabled", c.Transparent.Sniff.Enabled, true},
		{"transparent.sniff.ports", c.Transparent.Sniff.Ports, []PortRange{{80, 80}, {443, 443}}},
		{"transparent.sniff.timeout", c.Transparent.Sniff.Timeout.Std(), 300 * time.Millisecond},
		{"listen.http", c.Listen.HTTP, AddrList{"127.0.0.1:8080", "lan:8080"}},
		{"listen.socks", c.Listen.SOCKS, AddrList{"127.0.0.1:1080", "lan:1080"}},
		{"listen.mixed", len(c.Listen.Mixed), 0},
		{"timeouts.dial", c.Timeouts.Dial.Std(), 10 * time.Second},
		{"timeouts.handshake", c.Timeouts.Handshake.Std(), 10 * time.Second},
		{"timeouts.idle", c.Timeouts.Idle.Std(), 2 * time.Hour},
		{"timeouts.grace", c.Timeouts.Grace.Std(), 5 * time.Second},
		{"mark", c.Mark, uint32(1)},
		{"on_crash", c.OnCrash, OnCrashClosed},
		{"limits.max_flows", c.Limits.MaxFlows, 0},
		{"limits.max_flows_per_source", c.Limits.MaxFlowsPerSource, 0},
		{"relay", c.Relay, relay.Auto},
		{"admin", c.Admin.Listen, ""},
		{"rules", c.Rules, []Rule{{Name: "default", Action: ActionDirect, Implicit: true}}},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.name, ch.got, ch.want)
		}
	}
}

func TestElementDefaults(t *testing.T) {
	c := mustParse(t, `
upstreams:
  - {name: a, url: "socks5://10.0.0.1:1080"}
  - {name: b, url: "socks5://10.0.0.2:1080"}
groups:
  - {name: g, upstreams: [a, b]}
  - {name: h, upstreams: [a], health: {interval: 0, rise: 5}}
rules:
  - {dst: [192.0.2.0/24], action: block}
  - {upstream: g}
  - {name: last, dst_ports: [22], upstream: h}
`)
	g := c.Groups[0]
	wantG := Group{Name: "g", Policy: PolicyFailover, Upstreams: []string{"a", "b"}, OnDown: OnDownBlock, Tolerance: Duration(50 * time.Millisecond),
		Health: Health{Interval: Duration(10 * time.Second), Timeout: Duration(5 * time.Second), Rise: 2, Fall: 3}}
	if !reflect.DeepEqual(g, wantG) {
		t.Errorf("group defaults = %+v, want %+v", g, wantG)
	}
	h := c.Groups[1].Health
	if h.Interval != 0 || h.Rise != 5 || h.Fall != 3 || h.Timeout.Std() != 5*time.Second {
		t.Errorf("explicit zero interval not kept or defaults lost: %+v", h)
	}
	var names, actions []string
	for _, r := range c.Rules {
		names = append(names, r.Name)
		actions = append(actions, r.Action.String()+":"+r.Upstream)
	}
	if want := []string{"rule#1", "rule#2", "last"}; !slices.Equal(names, want) {
		t.Errorf("rule names = %q, want %q (rule#2 is a catch-all: no implicit rule)", names, want)
	}
	if want := []string{"block:", "proxy:g", "proxy:h"}; !slices.Equal(actions, want) {
		t.Errorf("rule actions = %q, want %q", actions, want)
	}
}

func TestImplicitDefaultRule(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want Rule
		warn string
	}{
		{"no rules, no upstreams: direct", "",
			Rule{Name: "default", Action: ActionDirect, Implicit: true},
			`rules: none configured; every flow will go direct (implicit rule "default")`},
		{"no rules: first upstream", `upstreams: [{name: u1, url: "socks5://h:1"}, {name: u2, url: "http://h:2"}]`,
			Rule{Name: "default", Action: ActionProxy, Upstream: "u1", Implicit: true},
			`rules: none configured; every flow will go through upstream "u1" (implicit rule "default")`},
		{"rules without catch-all", `
upstreams: [{name: u1, url: "socks5://h:1"}]
rules: [{name: default, dst: [192.0.2.0/24], action: direct}]`,
			Rule{Name: "implicit-default", Action: ActionProxy, Upstream: "u1", Implicit: true},
			`rules: no catch-all rule; flows no rule matches will go through upstream "u1" (implicit rule "implicit-default" appended)`},
		// Every inbound but dns: the DNS queries socksgate's resolver routes match no rule.
		{"a last rule for every inbound but dns", `
rules: [{name: flows, inbound: [transparent, http, socks, router], action: direct}]`,
			Rule{Name: "default", Action: ActionDirect, Implicit: true},
			`rules: no catch-all rule; flows no rule matches will go direct (implicit rule "default" appended)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.doc)
			if got := c.Rules[len(c.Rules)-1]; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("last rule = %+v, want %+v", got, tt.want)
			}
			if w := c.Warnings(); !slices.Contains(w, tt.warn) {
				t.Errorf("Warnings() = %q, want it to hold %q", w, tt.warn)
			}
		})
	}
}

func TestExplicitValuesOverDefaults(t *testing.T) {
	c := mustParse(t, `
transparent:
  bypass_builtin: false
  sniff: {enabled: false, ports: []}
  tproxy_mark: 0x10
listen:
  http: []
  socks: ""
  mixed: ":7890"
mark: 0xff00
`)
	if c.Transparent.BypassBuiltinEnabled() || c.Transparent.Sniff.Enabled {
		t.Errorf("explicit false lost: bypass_builtin=%v sniff.enabled=%v",
			c.Transparent.BypassBuiltinEnabled(), c.Transparent.Sniff.Enabled)
	}
	if c.Transparent.Sniff.Ports == nil || len(c.Transparent.Sniff.Ports) != 0 {
		t.Errorf("sniff.ports = %#v, want explicit empty", c.Transparent.Sniff.Ports)
	}
	if c.Listen.HTTP == nil || len(c.Listen.HTTP) != 0 || c.Listen.SOCKS == nil || len(c.Listen.SOCKS) != 0 {
		t.Errorf("explicit empty listen lists = %#v, %#v", c.Listen.HTTP, c.Listen.SOCKS)
	}
	if !slices.Equal(c.Listen.Mixed, AddrList{":7890"}) {
		t.Errorf("scalar mixed = %q", c.Listen.Mixed)
	}
	if c.Mark != 0xff00 || c.Transparent.TProxyMark != 0x10 {
		t.Errorf("hex marks: mark=%#x tproxy_mark=%#x", c.Mark, c.Transparent.TProxyMark)
	}
	// A listener on every address is allowed but warned about.
	if w := c.Warnings(); !slices.Contains(w, `listen.mixed[0]: ":7890" listens on every address, including WAN-facing ones`) {
		t.Errorf("Warnings() = %q", w)
	}
}

func TestNormalisation(t *testing.T) {
	c := mustParse(t, `
lan: {prefixes: [192.168.1.77/24]}
rules:
  - protocol: [TCP]
    inbound: [Transparent]
    domain: ["*.Example.COM", ".b.example", "Exact.Example."]
    dst: ["2001:db8::1/32"]
    action: direct
`)
	r := c.Rules[0]
	if want := []string{".example.com", ".b.example", "exact.example"}; !slices.Equal(r.Domain, want) {
		t.Errorf("domains = %q, want %q", r.Domain, want)
	}
	if r.Protocol[0] != ProtocolTCP || r.Inbound[0] != InboundTransparent {
		t.Errorf("protocol/inbound not read case-insensitively: %v %v", r.Protocol, r.Inbound)
	}
	if r.Dst[0] != netip.MustParsePrefix("2001:db8::/32") || c.LAN.Prefixes[0] != netip.MustParsePrefix("192.168.1.0/24") {
		t.Errorf("prefixes not masked: %v %v", r.Dst, c.LAN.Prefixes)
	}
}

// Every kind of validation problem, with its exact message.
func TestValidationProblems(t *testing.T) {
	const ups = `upstreams:
  - {name: main, url: "socks5://10.0.0.1:1080"}
  - {name: b, url: "http://10.0.0.2:3128"}
`
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"log enums", "log: {level: verbose, format: xml}", []string{
			`line 1: log.level: must be one of debug, info, warn, error (got "verbose")`,
			`line 1: log.format: must be one of text, json (got "xml")`}},
		{"ha vip", `ha: {vip: [0.0.0.0, "::1", 224.0.0.18]}`, []string{
			`ha.vip[0]: "0.0.0.0" is not a LAN gateway address`,
			`ha.vip[1]: "::1" is not a LAN gateway address`,
			`ha.vip[2]: "224.0.0.18" is not a LAN gateway address`}},
		{"lan interfaces", `lan: {interfaces: [eth1, "", averyveryverylongname, "a/b", eth1, "eth*", "a\"b"]}`, []string{
			`lan.interfaces[1]: must not be empty`,
			`lan.interfaces[2]: interface name "averyveryverylongname" is longer than 15 bytes`,
			`lan.interfaces[3]: invalid interface name "a/b"`,
			`lan.interfaces[4]: duplicate of lan.interfaces[0]`,
			`lan.interfaces[5]: "eth*": a wildcard is not supported; list each interface`,
			`lan.interfaces[6]: invalid interface name "a\"b"`}},
		{"transparent numbers", `transparent: {tcp_port: 0, udp_port: 0, udp_idle: 0, udp_max_sessions: 0, route_table: 254, rule_priority: 32766}`, []string{
			`transparent.tcp_port: must be 1-65535`,
			`transparent.udp_port: must be 1-65535`,
			`transparent.udp_idle: must be positive`,
			`transparent.udp_max_sessions: must be positive`,
			`transparent.route_table: 254 is reserved (253 default, 254 main, 255 local)`,
			`transparent.rule_priority: must be 1-32765 (0, 32766 and 32767 hold the kernel's own rules)`}},
		{"transparent enums", `transparent: {tcp_mode: nat, udp_without_support: drop}`, []string{
			`line 1: transparent.tcp_mode: must be one of redirect, tproxy (got "nat")`,
			`line 1: transparent.udp_without_support: must be one of block, direct (got "drop")`}},
		{"router capture without the transparent listeners", `router: {capture: true}`, []string{
			`router.capture: needs the transparent listeners, which run only with lan.interfaces set`}},
		{"router owners", `{lan: {interfaces: [eth1]}, router: {capture: true, exclude_uids: [0, 4294967295, 0], exclude_gids: [4294967295]}}`, []string{
			`router.exclude_uids[1]: 4294967295 is no user id ((uid_t)-1); use 0-4294967294`,
			`router.exclude_uids[2]: duplicate of router.exclude_uids[0]`,
			`router.exclude_gids[0]: 4294967295 is no group id ((gid_t)-1); use 0-4294967294`}},
		{"router owner out of range", `router: {exclude_uids: [-1], exclude_gids: [4294967296]}`, []string{
			`line 1: router.exclude_uids[0]: expected an integer from 0 to 4294967295 (0x... allowed), got "-1"`,
			`line 1: router.exclude_gids[0]: expected an integer from 0 to 4294967295 (0x... allowed), got "4294967296"`}},
		{"router capture, tproxy mark covering mark", `{lan: {interfaces: [eth1]}, router: {capture: true}, mark: 0x1, transparent: {tproxy_mark: 0x3}}`, []string{
			`transparent.tproxy_mark: 0x3 holds every bit of mark 0x1: the router's captured packets would pass as socksgate's own`}},
		{"negative route table", `transparent: {route_table: -1}`, []string{
			`transparent.route_table: must be 1-2147483647`}},
		{"route table beyond a 32-bit int", `transparent: {route_table: 3000000000}`, []string{
			`transparent.route_table: must be 1-2147483647`}},
		{"tproxy mark equals mark", "mark: 7\ntransparent: {tproxy_mark: 7}", []string{
			`transparent.tproxy_mark: must differ from mark`}},
		{"zero marks", "mark: 0\ntransparent: {tproxy_mark: 0}", []string{
			`transparent.tproxy_mark: must be non-zero`,
			`mark: must be non-zero`}},
		{"sniff", `transparent: {sniff: {timeout: 0}}`, []string{
			`transparent.sniff.timeout: must be positive`}},
		{"listen addresses", `
lan: {interfaces: [eth1]}
listen: {http: ["127.0.0.1", "lan:12345"], socks: ["[::1]:1080", "bad host:1"], mixed: ["[::1]:1080", "1.2.3.4:99999"]}`, []string{
			`listen.http[0]: "127.0.0.1" is not host:port`,
			`listen.http[1]: port 12345 is transparent.tcp_port`,
			`listen.socks[1]: "bad host:1": invalid host "bad host"`,
			`listen.mixed[0]: "[::1]:1080" is already used by listen.socks[0]`,
			`listen.mixed[1]: "1.2.3.4:99999": invalid port "99999"`}},
		{"listen addresses that cannot exist or collide", `
lan: {interfaces: [eth1]}
listen:
  http: [":8080", "127.0.0.1:8080", "lan:8081"]
  socks: ["[::1]:1080", "localhost:1081", "999.1.1.1:1", "10.1:2", "host.example.:3"]
  mixed: ["127.0.0.1:1081", "0.0.0.0:8081", "[::ffff:127.0.0.1]:1082", "127.0.0.1:1082", "127.0.0.1:"]
admin: "[::]:1080"`, []string{
			`listen.http[1]: "127.0.0.1:8080" collides with listen.http[0] (":8080"): the same port on the same address or on every address`,
			`listen.socks[2]: "999.1.1.1:1": invalid IPv4 address "999.1.1.1"`,
			`listen.socks[3]: "10.1:2": invalid IPv4 address "10.1"`,
			`listen.mixed[0]: "127.0.0.1:1081" collides with listen.socks[1] ("localhost:1081"): the same port on the same address or on every address`,
			`listen.mixed[1]: "0.0.0.0:8081" collides with listen.http[2] ("lan:8081"): the same port on the same address or on every address`,
			`listen.mixed[3]: "127.0.0.1:1082" collides with listen.mixed[2] ("[::ffff:127.0.0.1]:1082"): the same port on the same address or on every address`,
			`listen.mixed[4]: "127.0.0.1:": invalid port ""`,
			`admin: "[::]:1080" collides with listen.socks[0] ("[::1]:1080"): the same port on the same address or on every address`}},
		{"admin on an explicit port", `admin: "127.0.0.1:8080"`, []string{
			`admin: "127.0.0.1:8080" is already used by listen.http[0]`}},
		{"admin on the transparent port", "lan: {interfaces: [eth1]}\nadmin: \"127.0.0.1:12345\"", []string{
			`admin: port 12345 is transparent.tcp_port`}},
		{"admin with the lan keyword", `admin: "lan:9091"`, []string{
			`admin: "lan:9091": the lan keyword is for listen.*; write an address, e.g. 127.0.0.1:9091`}},
		{"hosts that cannot exist", `admin: "999.1.1.1:9091"
upstreams: [{name: a, url: "socks5://256.0.0.1:1080"}]
groups: [{name: g, upstreams: [a], health: {probe: "1.2.3.400:443"}}]
rules: [{upstream: g}]`, []string{
			`upstreams[0].url: invalid host "256.0.0.1"`,
			`groups[0].health.probe: "1.2.3.400:443": invalid IPv4 address "1.2.3.400"`,
			`admin: "999.1.1.1:9091": invalid IPv4 address "999.1.1.1"`}},
		{"upstreams that are socksgate itself", `
lan: {interfaces: [eth1]}
listen:
  http: ["127.0.0.1:8080", "192.168.1.1:3128"]
  socks: ["localhost:1080", "[::1]:1081"]
  mixed: [":7890"]
upstreams:
  - {name: a, url: "socks5://127.0.0.1:1080"}
  - {name: b, url: "http://u:secret@localhost:8080"}
  - {name: c, url: "socks5://[::1]:7890"}
  - {name: d, url: "socks5://0.0.0.0:7890"}
  - {name: e, url: "http://192.168.1.1:3128"}
  - {name: f, url: "socks5://127.0.0.1:12345"}
  - {name: g, url: "socks4://LOCALHOST.:1081"}
  - {name: h, url: "socks5://[::]:8080"}
  - {name: i, url: "socks5://127.0.0.2:8080"}
  - {name: j, url: "socks5://127.0.0.1:3128"}
  - {name: k, url: "socks5://10.0.0.1:7890"}
  - {name: l, url: "socks5://127.0.0.1:1080", via: k}
rules: [{upstream: a}, {upstream: b}, {upstream: c}, {upstream: d}, {upstream: e}, {upstream: f}, {upstream: g}, {upstream: h}, {upstream: i}, {upstream: j}, {upstream: l}]`, []string{
			`upstreams[0].url: "127.0.0.1:1080" is socksgate's own listen.socks[0] ("localhost:1080"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[1].url: "localhost:8080" is socksgate's own listen.http[0] ("127.0.0.1:8080"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[2].url: "[::1]:7890" is socksgate's own listen.mixed[0] (":7890"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[3].url: "0.0.0.0:7890" is socksgate's own listen.mixed[0] (":7890"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[4].url: "192.168.1.1:3128" is socksgate's own listen.http[1] ("192.168.1.1:3128"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[5].url: "127.0.0.1:12345" is socksgate's own transparent.tcp_port: every flow through this upstream would come back to socksgate; change the upstream's address or that listener`,
			`upstreams[6].url: "LOCALHOST.:1081" is socksgate's own listen.socks[1] ("[::1]:1081"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`}},
		{"the default listeners as upstream", `upstreams: [{name: ssh, url: "socks5://127.0.0.1:1080"}]`, []string{
			`upstreams[0].url: "127.0.0.1:1080" is socksgate's own listen.socks[0] ("127.0.0.1:1080"): every flow through this upstream would come back to socksgate; change the upstream's address or that listener`}},
		{"listen users", `listen: {users: [{username: "", password: ""}, {username: "a:b", password: x}, {username: u, password: p}, {username: u, password: q}]}`, []string{
			`listen.users[0].username: required`,
			`listen.users[0].password: required`,
			`listen.users[1].username: must not contain ':'`,
			`listen.users[3].username: duplicate of listen.users[2]`}},
		{"upstream url scheme", ups + `  - {name: c, url: "sock5://10.0.0.3:1080"}`, []string{
			`upstreams[2].url: unsupported scheme "sock5" (want socks5, socks5h, socks4, socks4a, http, https, socks5+tls or direct)`}},
		{"upstream url shapes", `upstreams:
  - {name: a, url: "10.0.0.1:1080"}
  - {name: b, url: "socks5://10.0.0.1"}
  - {name: c, url: "socks5://:1080"}
  - {name: d, url: "http://h:0"}
  - {name: e, url: "direct://somewhere"}
  - {name: f, url: "socks4://u:p@h:1080"}
  - {name: g, url: "http://h:1/path?q=1"}
  - {name: h}
  - {name: i, url: "socks5://u:p@h:port"}
  - {name: j, url: "ftp://h:21"}
  - {name: k, url: "socks5://:pw@h:1"}
rules: [{action: direct}]`, []string{
			`upstreams[0].url: missing scheme (want e.g. "socks5://host:1080")`,
			`upstreams[1].url: missing port (e.g. socks5://10.0.0.1:1080)`,
			`upstreams[2].url: missing host`,
			`upstreams[3].url: invalid port "0"`,
			`upstreams[4].url: direct takes no host or credentials: write "direct://"`,
			`upstreams[5].url: socks4 carries no password (the username is sent as the user id)`,
			`upstreams[6].url: unexpected path, query or fragment`,
			`upstreams[7].url: required`,
			`upstreams[8].url: invalid URL: invalid port ":port" after host`,
			`upstreams[9].url: unsupported scheme "ftp" (want socks5, socks5h, socks4, socks4a, http, https, socks5+tls or direct)`,
			`upstreams[10].url: empty username (RFC 1929 needs 1-255 bytes)`}},
		{"upstream names", `upstreams:
  - {name: "", url: "direct://"}
  - {name: "bad name", url: "direct://"}
  - {name: x, url: "direct://"}
  - {name: x, url: "direct://"}
rules: [{action: direct}]`, []string{
			`upstreams[0].name: required`,
			`upstreams[1].name: "bad name" may hold only letters, digits, '-', '_' and '.'`,
			`upstreams[3].name: duplicate of upstreams[2]`}},
		{"via references", ups + `  - {name: c, url: "socks5://h:1", via: nowhere}
  - {name: d, url: "socks5://h:1", via: g}
  - {name: e, url: "direct://", via: main}
groups: [{name: g, upstreams: [main]}]
rules: [{action: proxy, upstream: g}]`, []string{
			`upstreams[2].via: no upstream named "nowhere"`,
			`upstreams[3].via: "g" is a group; via must name an upstream`,
			`upstreams[4].via: a direct upstream cannot have via`}},
		{"via cycle", `upstreams:
  - {name: main, url: "socks5://h:1", via: b}
  - {name: b, url: "http://h:2", via: main}
  - {name: c, url: "socks5://h:3", via: c}
  - {name: d, url: "socks5://h:4", via: main}
  - {name: e, url: "socks5://h:5", via: f}
  - {name: f, url: "socks5://h:6", via: g}
  - {name: g, url: "socks5://h:7", via: e}
rules: [{action: direct}]`, []string{
			`upstreams[0].via: cycle main -> b -> main`,
			`upstreams[2].via: cycle c -> c`,
			`upstreams[4].via: cycle e -> f -> g -> e`}},
		{"groups", ups + `groups:
  - {name: main, upstreams: [b]}
  - {name: g, upstreams: []}
  - {name: h, upstreams: [g, nope, b, b], health: {interval: 1s, timeout: 0, rise: 0, fall: 0, probe: "h"}}
  - {name: h, upstreams: [b], health: {probe: "h:0"}}
rules: [{upstream: h}]`, []string{
			`groups[0].name: "main" is already the name of upstreams[0]`,
			`groups[1].upstreams: at least one upstream required`,
			`groups[2].upstreams[0]: "g" is a group; groups hold upstreams only`,
			`groups[2].upstreams[1]: no upstream named "nope"`,
			`groups[2].upstreams[3]: duplicate of groups[2].upstreams[2]`,
			`groups[2].health.timeout: must be positive`,
			`groups[2].health.rise: must be at least 1`,
			`groups[2].health.fall: must be at least 1`,
			`groups[2].health.probe: "h" is not host:port`,
			`groups[3].name: duplicate of groups[2]`,
			`groups[3].health.probe: port must be 1-65535`}},
		{"rules", ups + `rules:
  - {name: r, domain: ["bad domain", "."], action: proxy}
  - {name: r, action: proxy, upstream: x}
  - {action: direct, upstream: main}
  - {dst_ports: [80]}
  - {action: proxy, upstream: b}`, []string{
			`rules[0].domain[0]: invalid domain pattern "bad domain" (want "example.com", ".example.com" or "*.example.com")`,
			`rules[0].domain[1]: invalid domain pattern "." (want "example.com", ".example.com" or "*.example.com")`,
			`rules[0].upstream: required for action proxy`,
			`rules[1].name: "r" is already the name of rules[0]`,
			`rules[1].upstream: no upstream or group named "x"`,
			`rules[2].upstream: only used with action proxy (action is direct)`,
			`rules[3].action: required (direct, proxy or block)`}},
		{"timeouts and limits", `timeouts: {dial: 0, handshake: 0}
limits: {max_flows: 10, max_flows_per_source: 11}
admin: "localhost"`, []string{
			`timeouts.dial: must be positive`,
			`timeouts.handshake: must be positive`,
			`limits.max_flows_per_source: exceeds limits.max_flows`,
			`admin: "localhost" is not host:port`}},
		// An enumerated value is read when the file is: one outside its
		// type is a problem of the document, with its line, and the allowed
		// values.
		{"enums", ups + `groups:
  - {name: g, policy: random, upstreams: [b], on_down: panic}
rules:
  - {protocol: [icmp], inbound: [redirect], upstream: g}
  - {action: allow}
on_crash: ajar
relay: teleport`, []string{
			`line 5: groups[0].policy: must be one of failover, round-robin, least-connections, select, url-test (got "random")`,
			`line 5: groups[0].on_down: must be one of block, direct (got "panic")`,
			`line 7: rules[0].protocol[0]: must be one of tcp, udp (got "icmp")`,
			`line 7: rules[0].inbound[0]: must be one of transparent, http, socks, dns, router (got "redirect")`,
			`line 8: rules[1].action: must be one of direct, proxy, block (got "allow")`,
			`line 9: on_crash: must be one of closed, open (got "ajar")`,
			`line 10: relay: must be one of auto, splice, buffered (got "teleport")`}},
		{"negative limits", `limits: {max_flows: -1, max_flows_per_source: -2}`, []string{
			`limits.max_flows: must not be negative`,
			`limits.max_flows_per_source: must not be negative`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			got := problemsOf(t, err)
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

// Problems in the document itself: syntax, unknown keys, malformed values,
// each with its line and field path, all reported together.
func TestDocumentProblems(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown top-level key", "log: {level: info}\nupstream: []\n", []string{
			`line 2: upstream: unknown key "upstream", did you mean "upstreams"?`}},
		{"unknown key with no near match", "wibble: 1\n", []string{
			`line 1: wibble: unknown key "wibble" (known: log, lan, transparent, router, listen, upstreams, groups, rules, rule_sets, timeouts, mark, on_crash, limits, relay, admin, dns, state_dir, devices, geoip, ha)`}},
		{"unknown nested keys, all at once", `transparent:
  snif: {enabled: true}
upstreams:
  - name: a
    ulr: "socks5://h:1"
groups:
  - name: g
    upstreams: [a]
    health: {intervall: 5s}
`, []string{
			`line 2: transparent.snif: unknown key "snif", did you mean "sniff"?`,
			`line 5: upstreams[0].ulr: unknown key "ulr", did you mean "url"?`,
			`line 9: groups[0].health.intervall: unknown key "intervall", did you mean "interval"?`}},
		{"malformed typed values", `lan:
  prefixes: [10.0.0.1, "10.0.0.0/33"]
transparent:
  tcp_port: 70000
  udp: maybe
  udp_idle: 10
  sniff: {ports: [0, "90-80", "x"], timeout: -1s}
listen: {http: {a: b}}
rules:
  - dst: {a: 1}
    action: [direct]
  -
mark: -1
`, []string{
			`line 2: lan.prefixes[0]: invalid prefix "10.0.0.1": want CIDR notation such as 192.0.2.0/24 or 2001:db8::/32`,
			`line 2: lan.prefixes[1]: invalid prefix "10.0.0.0/33": want CIDR notation such as 192.0.2.0/24 or 2001:db8::/32`,
			`line 4: transparent.tcp_port: expected an integer from 0 to 65535, got "70000"`,
			`line 5: transparent.udp: expected true or false, got "maybe"`,
			`line 6: transparent.udp_idle: duration "10" needs a unit, e.g. "10s"`,
			`line 7: transparent.sniff.ports[0]: port 0 in "0" is not a port`,
			`line 7: transparent.sniff.ports[1]: port range "90-80" is reversed`,
			`line 7: transparent.sniff.ports[2]: invalid port or port range "x" (want 443 or "1000-2000")`,
			`line 7: transparent.sniff.timeout: duration "-1s" must not be negative`,
			`line 8: listen.http: expected a host:port string or a list of them`,
			`line 10: rules[0].dst: expected a list`,
			`line 11: rules[0].action: expected a string`,
			`line 12: rules[1]: empty list entry`,
			`line 13: mark: expected an integer from 0 to 4294967295 (0x... allowed), got "-1"`}},
		{"integers are written as integers", `transparent: {tcp_port: 12345.9, udp_port: 1e3, udp_max_sessions: 4096.0, route_table: .inf, rule_priority: "100"}
limits: {max_flows: 1.5e3}
mark: 0x1
groups: [{name: g, upstreams: [a], health: {rise: 2.0, fall: 3}}]
`, []string{
			`line 1: transparent.tcp_port: expected an integer from 0 to 65535, got "12345.9": write a plain integer, without a fraction or exponent`,
			`line 1: transparent.udp_port: expected an integer from 0 to 65535, got "1e3": write a plain integer, without a fraction or exponent`,
			`line 1: transparent.udp_max_sessions: expected an integer, got "4096.0": write a plain integer, without a fraction or exponent`,
			`line 1: transparent.route_table: expected an integer, got ".inf": write a plain integer, without a fraction or exponent`,
			`line 1: transparent.rule_priority: expected an integer, got "100"`,
			`line 2: limits.max_flows: expected an integer, got "1.5e3": write a plain integer, without a fraction or exponent`,
			`line 4: groups[0].health.rise: expected an integer, got "2.0": write a plain integer, without a fraction or exponent`}},
		{"not a mapping", "- a\n- b\n", []string{
			`line 1: expected a mapping of keys (log, lan, transparent, listen, upstreams, ...) at the top level`}},
		{"section not a mapping", "log: info\n", []string{
			`line 1: log: expected a mapping`}},
		{"syntax error", "log:\n  level: info\n format: text\n", []string{
			`line 2: did not find expected key`}},
		{"duplicate key", "mark: 1\nmark: 2\n", []string{
			`line 2: mapping key "mark" already defined at line 1`}},
		{"two documents", "mark: 1\n---\nmark: 2\n", []string{
			`line 2: only one YAML document is allowed`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			got := problemsOf(t, err)
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

// Where a list of scalars is expected, one scalar is the list of that one
// value, for every such key (and the config is the same as with the list).
func TestScalarIsAListOfOne(t *testing.T) {
	const ups = "upstreams: [{name: main, url: \"socks5://10.0.0.1:1080\"}]\n"
	scalar := mustParse(t, ups+`
lan: {interfaces: eth1, prefixes: 192.168.1.0/24}
transparent: {bypass: 198.51.100.0/24, sniff: {ports: 443}}
listen: {http: "127.0.0.1:8080", allow: 10.0.0.0/8}
groups: [{name: g, upstreams: main}]
rules:
  - {protocol: udp, dst: 10.0.0.0/8, dst_ports: "1000-2000", src: 192.168.1.5/32, inbound: socks, domain: example.com, upstream: g}
  - {protocol: &p tcp, action: direct}
  - {protocol: *p, domain: &d ".example.org", action: block}
  - {name: *d, action: direct}
`)
	list := mustParse(t, ups+`
lan: {interfaces: [eth1], prefixes: [192.168.1.0/24]}
transparent: {bypass: [198.51.100.0/24], sniff: {ports: [443]}}
listen: {http: ["127.0.0.1:8080"], allow: [10.0.0.0/8]}
groups: [{name: g, upstreams: [main]}]
rules:
  - {protocol: [udp], dst: [10.0.0.0/8], dst_ports: ["1000-2000"], src: [192.168.1.5/32], inbound: [socks], domain: [example.com], upstream: g}
  - {protocol: [tcp], action: direct}
  - {protocol: [tcp], domain: [".example.org"], action: block}
  - {name: ".example.org", action: direct}
`)
	if !reflect.DeepEqual(scalar, list) {
		t.Errorf("scalar form differs from list form:\nscalar: %+v\nlist:   %+v", scalar, list)
	}
	// A null still means the default, and a bad scalar is reported at its
	// place in the list.
	if c := mustParse(t, "transparent: {sniff: {ports: ~}}"); !slices.Equal(c.Transparent.Sniff.Ports, defaultSniffPorts()) {
		t.Errorf("sniff.ports: ~ gave %v", c.Transparent.Sniff.Ports)
	}
	_, err := Parse([]byte("rules: [{dst: 10.0.0.1, protocol: icmp, action: direct}]"))
	want := []string{
		`line 1: rules[0].dst[0]: invalid prefix "10.0.0.1": want CIDR notation such as 192.0.2.0/24 or 2001:db8::/32`,
		`line 1: rules[0].protocol[0]: must be one of tcp, udp (got "icmp")`,
	}
	if got := problemsOf(t, err); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
	_, err = Parse([]byte("rules: [{protocol: icmp, action: direct}]"))
	want = []string{`line 1: rules[0].protocol[0]: must be one of tcp, udp (got "icmp")`}
	if got := problemsOf(t, err); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
}

func TestAnchorsAndMergeKeysAreStrict(t *testing.T) {
	// x-health is not a key of the schema: anchors must live where the
	// schema allows them.
	_, err := Parse([]byte("x: &h {interval: 3s}\n"))
	if err == nil {
		t.Fatal("unknown key holding an anchor accepted")
	}
	c := mustParse(t, `
upstreams:
  - &up {name: a, url: "socks5://h:1"}
groups:
  - name: g
    upstreams: [a]
    health: &health {interval: 3s, fall: 9}
  - name: h
    upstreams: [a]
    health:
      <<: *health
      rise: 4
rules: [{upstream: g}, {upstream: h}]
`)
	if h := c.Groups[1].Health; h.Interval.Std() != 3*time.Second || h.Fall != 9 || h.Rise != 4 {
		t.Errorf("merged health = %+v", h)
	}
	_, err = Parse([]byte(`
groups:
  - name: g
    upstreams: [a]
    health: &health {interval: 3s, bogus: 1}
`))
	if err == nil || !strings.Contains(err.Error(), `groups[0].health.bogus: unknown key "bogus"`) {
		t.Errorf("unknown key inside an anchored mapping: %v", err)
	}
}

func TestAliasBombIsRefused(t *testing.T) {
	doc := "lan:\n  interfaces: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a0"
	for i := 1; i < 30; i++ {
		name := fmt.Sprintf("a%d", i)
		doc = strings.Replace(doc, "lan:\n", fmt.Sprintf("lan:\n  prefixes: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n", name, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev), 1)
		prev = name
	}
	done := make(chan error, 1)
	go func() { _, err := Parse([]byte(doc)); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("alias bomb accepted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("alias bomb not refused within 10s")
	}
}

func TestPortRangeParsing(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{"443", PortRange{443, 443}, ""},
		{" 1000-2000 ", PortRange{1000, 2000}, ""},
		{"1 - 65535", PortRange{1, 65535}, ""},
		{"5-5", PortRange{5, 5}, ""},
		{"0", PortRange{}, `port 0 in "0" is not a port`},
		{"65536", PortRange{}, `invalid port or port range "65536" (want 443 or "1000-2000")`},
		{"2000-1000", PortRange{}, `port range "2000-1000" is reversed`},
		{"1-2-3", PortRange{}, `invalid port or port range "1-2-3" (want 443 or "1000-2000")`},
		{"-5", PortRange{}, `invalid port or port range "-5" (want 443 or "1000-2000")`},
		{"http", PortRange{}, `invalid port or port range "http" (want 443 or "1000-2000")`},
		{"", PortRange{}, `invalid port or port range "" (want 443 or "1000-2000")`},
	}
	for _, tt := range tests {
		got, err := ParsePortRange(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParsePortRange(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	c := mustParse(t, `rules: [{dst_ports: [443, "8443", "1000-2000"], action: direct}]`)
	if got, want := c.Rules[0].DstPorts, []PortRange{{443, 443}, {8443, 8443}, {1000, 2000}}; !slices.Equal(got, want) {
		t.Errorf("dst_ports = %v, want %v", got, want)
	}
	if r := (PortRange{1000, 2000}); !r.Contains(1000) || !r.Contains(2000) || r.Contains(999) || r.Contains(2001) {
		t.Error("Contains is not inclusive")
	}
	out, err := yaml.Marshal([]PortRange{{80, 80}, {1000, 2000}})
	if err != nil || string(out) != "- 80\n- 1000-2000\n" {
		t.Errorf("Marshal = %q, %v", out, err)
	}
}

func TestDurationParsing(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"10s", 10 * time.Second, ""},
		{"300ms", 300 * time.Millisecond, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0", 0, ""},
		{"0s", 0, ""},
		{"10", 0, `duration "10" needs a unit, e.g. "10s"`},
		{"1.5", 0, `duration "1.5" needs a unit, e.g. "1.5s"`},
		{"-1s", 0, `duration "-1s" must not be negative`},
		{"ten seconds", 0, `invalid duration "ten seconds" (want e.g. "300ms", "10s", "2h")`},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseDuration(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.Std() != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	c := mustParse(t, "timeouts: {idle: 0, grace: 1m}\n")
	if c.Timeouts.Idle != 0 || c.Timeouts.Grace.Std() != time.Minute {
		t.Errorf("timeouts = %+v", c.Timeouts)
	}
	if out, err := yaml.Marshal(map[string]Duration{"d": Duration(1500 * time.Millisecond)}); err != nil || string(out) != "d: 1.5s\n" {
		t.Errorf("Marshal = %q, %v", out, err)
	}
}

func TestParseListenAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    ListenAddr
		all     bool
		wantErr bool
	}{
		{"127.0.0.1:8080", ListenAddr{Host: "127.0.0.1", Port: 8080}, false, false},
		{"[::1]:1080", ListenAddr{Host: "::1", Port: 1080}, false, false},
		{"lan:8080", ListenAddr{Host: "lan", Port: 8080, LAN: true}, false, false},
		{"localhost:0", ListenAddr{Host: "localhost", Port: 0}, false, false},
		{":7890", ListenAddr{Port: 7890}, true, false},
		{"0.0.0.0:1", ListenAddr{Host: "0.0.0.0", Port: 1}, true, false},
		{"[::]:1", ListenAddr{Host: "::", Port: 1}, true, false},
		{"8080", ListenAddr{}, false, true},
		{"[::1:80", ListenAddr{}, false, true},
		{"[zz::1]:80", ListenAddr{}, false, true},
		{"999.1.1.1:80", ListenAddr{}, false, true},
		{"1.2.3:80", ListenAddr{}, false, true},
		{"127.0.0.1:-1", ListenAddr{}, false, true},
		{"127.0.0.1:http", ListenAddr{}, false, true},
		{"router.example:80", ListenAddr{Host: "router.example", Port: 80}, false, false},
		{"1.2.3.4.example:80", ListenAddr{Host: "1.2.3.4.example", Port: 80}, false, false},
	}
	for _, tt := range tests {
		got, err := ParseListenAddr(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want || (err == nil && got.AllAddresses() != tt.all) {
			t.Errorf("ParseListenAddr(%q) = %+v (all=%v), %v", tt.in, got, got.AllAddresses(), err)
		}
	}
}

// Listeners that can live side by side are not refused.
func TestListenersThatDoNotCollide(t *testing.T) {
	mustParse(t, `
listen:
  http: [":8080", "lan:8080", "127.0.0.1:8081", "[::1]:8081"]
  socks: ["127.0.0.1:1080", "127.0.0.2:1080", "localhost:0", "127.0.0.1:0"]
admin: "127.0.0.1:12345"`)
	mustParse(t, `
lan: {interfaces: [eth1]}
transparent: {udp: true, udp_port: 9091}
admin: "127.0.0.1:9091"`)
}

func TestMatchDomain(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com.", true},
		{"example.com", "www.example.com", false},
		{".example.com", "example.com", true},
		{".example.com", "a.b.example.com", true},
		{".example.com", "badexample.com", false},
		{".example.com", "com", false},
		{"*.example.com", "www.example.com", true},
		{".example.com", "", false},
	}
	for _, tt := range tests {
		if got := MatchDomain(tt.pattern, tt.name); got != tt.want {
			t.Errorf("MatchDomain(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestShadowedRuleWarnings(t *testing.T) {
	const ups = "upstreams: [{name: u, url: \"socks5://h:1\"}]\n"
	tests := []struct {
		name  string
		rules string
		want  []string // the shadowing warnings, exactly
	}{
		{"catch-all shadows everything after it",
			`[{name: all, action: direct}, {name: a, dst: [192.0.2.0/24], action: block}, {name: b, action: block}]`,
			[]string{
				`rules[1] ("a"): never matches: every flow it matches is taken first by rules[0] ("all")`,
				`rules[2] ("b"): never matches: every flow it matches is taken first by rules[0] ("all")`}},
		{"wider prefix shadows narrower",
			`[{name: wide, dst: [10.0.0.0/8, "2001:db8::/32"], action: direct}, {name: narrow, dst: [10.1.0.0/16, "2001:db8:1::/48"], action: block}, {action: proxy, upstream: u}]`,
			[]string{`rules[1] ("narrow"): never matches: every flow it matches is taken first by rules[0] ("wide")`}},
		{"narrower prefix does not shadow wider",
			`[{dst: [10.1.0.0/16], action: direct}, {dst: [10.0.0.0/8], action: block}, {action: proxy, upstream: u}]`, nil},
		{"one prefix outside is enough to escape",
			`[{dst: [10.0.0.0/8], action: direct}, {dst: [10.1.0.0/16, 192.0.2.0/24], action: block}, {action: proxy, upstream: u}]`, nil},
		{"every-address dst does not shadow an unconstrained rule (name-only flows)",
			`[{dst: [0.0.0.0/0, "::/0"], action: direct}, {domain: [x.example], action: block}, {action: proxy, upstream: u}]`, nil},
		{"port ranges merged",
			`[{dst_ports: ["1-1000", "1001-2000"], action: direct}, {dst_ports: [80, "900-1500"], action: block}, {action: proxy, upstream: u}]`,
			[]string{`rules[1] ("rule#2"): never matches: every flow it matches is taken first by rules[0] ("rule#1")`}},
		{"port range only partly covered",
			`[{dst_ports: ["1-1000"], action: direct}, {dst_ports: ["900-1500"], action: block}, {action: proxy, upstream: u}]`, nil},
		{"protocol and inbound sets",
			`[{protocol: [tcp, udp], inbound: [transparent], action: direct}, {protocol: [udp], inbound: [transparent], dst_ports: [53], action: block}, {protocol: [tcp], action: block}, {action: proxy, upstream: u}]`,
			[]string{`rules[1] ("rule#2"): never matches: every flow it matches is taken first by rules[0] ("rule#1")`}},
		{"protocol subset does not shadow superset",
			`[{protocol: [tcp], action: direct}, {dst_ports: [53], action: block}, {action: proxy, upstream: u}]`, nil},
		{"domain suffix shadows exact and deeper suffix",
			`[{domain: ["*.example.com"], action: direct}, {domain: [www.example.com, example.com], action: block}, {domain: [".a.example.com"], action: block}, {domain: [notexample.com], action: block}, {action: proxy, upstream: u}]`,
			[]string{
				`rules[1] ("rule#2"): never matches: every flow it matches is taken first by rules[0] ("rule#1")`,
				`rules[2] ("rule#3"): never matches: every flow it matches is taken first by rules[0] ("rule#1")`}},
		{"exact domain does not shadow suffix",
			`[{domain: [example.com], action: direct}, {domain: [".example.com"], action: block}, {action: proxy, upstream: u}]`, nil},
		{"domain rule does not shadow an address rule",
			`[{domain: [".com"], action: direct}, {dst: [192.0.2.0/24], action: block}, {action: proxy, upstream: u}]`, nil},
		{"all matchers must be supersets",
			`[{src: [192.168.1.0/24], dst_ports: [443], action: direct}, {src: [192.168.1.5/32], dst_ports: [443], dst: [192.0.2.0/24], action: block}, {src: [192.168.2.5/32], dst_ports: [443], action: block}, {action: proxy, upstream: u}]`,
			[]string{`rules[1] ("rule#2"): never matches: every flow it matches is taken first by rules[0] ("rule#1")`}},
		{"explicit every-protocol rule is a catch-all: no implicit rule",
			`[{protocol: [tcp, udp], action: direct}]`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, ups+"rules: "+tt.rules+"\n")
			var got []string
			for _, w := range c.Warnings() {
				if strings.Contains(w, "never matches") {
					got = append(got, w)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("shadow warnings:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
			if c.Rules[len(c.Rules)-1].Implicit {
				t.Errorf("implicit rule appended although the rules end with a catch-all")
			}
		})
	}
}

func TestOtherWarnings(t *testing.T) {
	c := mustParse(t, `
transparent: {udp: true}
upstreams:
  - {name: used, url: "socks5://h:1"}
  - {name: lonely, url: "socks5://h:2"}
  - {name: web, url: "http://h:3"}
  - {name: s5via, url: "socks5://h:4", via: web}
groups:
  - {name: idle, upstreams: [used]}
  - {name: mix, upstreams: [used, web]}
listen: {http: [], socks: []}
admin: "0.0.0.0:9091"
rules:
  - {protocol: [udp], inbound: [http], action: block}
  - {protocol: [tcp], upstream: web}
  - {dst_ports: [53], upstream: mix}
  - {upstream: s5via}
`)
	want := []string{
		`rules[0] ("rule#1"): never matches: UDP never arrives on the http inbound`,
		`upstreams[1] ("lonely"): not used by any rule, group or via`,
		`groups[0] ("idle"): not used by any rule`,
		`rules[2] ("rule#3"): upstream "web" cannot carry UDP; UDP flows it matches follow transparent.udp_without_support (block)`,
		`rules[3] ("rule#4"): upstream "s5via" cannot carry UDP; UDP flows it matches follow transparent.udp_without_support (block)`,
		`transparent.udp: has no effect without lan.interfaces`,
		`admin: "0.0.0.0:9091" is reachable from other hosts without a secret: anyone who reaches it sees the live flows and can close them, switch upstreams and reload the config; set admin.secret`,
		`nothing to serve: no lan.interfaces and no listen addresses`,
	}
	if got := c.Warnings(); !slices.Equal(got, want) {
		t.Errorf("warnings:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// relay: kernel (the removed sockmap relay) is still accepted, read as
// auto, with a warning naming the replacement.
func TestRelayKernelIsReadAsAutoWithAWarning(t *testing.T) {
	c := mustParse(t, "relay: kernel\n")
	if c.Relay != relay.Auto {
		t.Errorf("relay = %v, want %v", c.Relay, relay.Auto)
	}
	want := `relay: "kernel" is no longer available (the sockmap relay was removed: it loses or duplicates bytes on current kernels); using its replacement, auto: write relay: auto`
	if w := c.Warnings(); len(w) == 0 || w[0] != want {
		t.Errorf("warnings = %q, want first %q", w, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if w := mustParse(t, "relay: auto\n").Warnings(); slices.ContainsFunc(w, func(s string) bool { return strings.HasPrefix(s, "relay:") }) {
		t.Errorf("relay: auto warns: %q", w)
	}
	if _, err := Parse([]byte("relay: kernell\n")); err == nil || !slices.Contains(problemsOf(t, err), `line 1: relay: must be one of auto, splice, buffered (got "kernell")`) {
		t.Errorf("Parse of relay: kernell = %v", err)
	}
	if d := string(DefaultYAML()); strings.Contains(d, "| kernel") || strings.Contains(d, "relay: kernel") {
		t.Error("default.yaml still offers relay kernel")
	}
}

func TestSupportsUDP(t *testing.T) {
	c := mustParse(t, `upstreams:
  - {name: s5, url: "socks5://h:1"}
  - {name: s5h, url: "socks5h://h:1"}
  - {name: s4, url: "socks4a://h:1"}
  - {name: web, url: "http://h:1"}
  - {name: d, url: "direct://"}
  - {name: chained, url: "socks5://h:1", via: web}
rules: [{upstream: s5}, {upstream: s5h}, {upstream: s4}, {upstream: d}, {upstream: chained}]
`)
	want := map[string]bool{"s5": true, "s5h": true, "s4": false, "web": false, "d": true, "chained": false}
	for name, w := range want {
		if got := c.Upstream(name).SupportsUDP(); got != w {
			t.Errorf("%s.SupportsUDP() = %v, want %v", name, got, w)
		}
	}
}

func TestSecretsStayOutOfErrorsAndFormatting(t *testing.T) {
	const pw = "hunter2-SECRET"
	docs := []string{
		`upstreams: [{name: a, url: "sock5://user:` + pw + `@h:1"}]`,
		`upstreams: [{name: a, url: "socks5://user:` + pw + `@h:notaport"}]`,
		`upstreams: [{name: a, url: "socks4://user:` + pw + `@h:1"}]`,
		`upstreams: [{name: a, url: "socks5://user:` + pw + `@h"}]`,
		`upstreams: [{name: a, url: "socks5://user:` + pw + "\x01" + `@h:1"}]`,
	}
	for _, doc := range docs {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("Parse(%q) succeeded", doc)
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("error reveals the password: %v", err)
		}
	}
	c := mustParse(t, `
listen: {users: [{username: u, password: "`+pw+`"}]}
upstreams: [{name: a, url: "socks5://user:`+pw+`@h:1"}]`)
	for _, s := range []string{
		fmt.Sprintf("%v", c.Listen), fmt.Sprintf("%+v", c.Listen.Users), fmt.Sprintf("%#v", c.Listen.Users[0]),
		Redacted(c.Upstreams[0].URL),
	} {
		if strings.Contains(s, pw) {
			t.Errorf("formatting reveals the password: %s", s)
		}
	}
	if string(c.Listen.Users[0].Password) != pw {
		t.Error("password value lost")
	}
	if Redacted(nil) != "" {
		t.Error("Redacted(nil) != \"\"")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("mark: 0\ntransparent: {tproxy_mark: 0}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(bad)
	want := bad + ": transparent.tproxy_mark: must be non-zero"
	if err == nil || !strings.Contains(err.Error(), want+"\n"+bad+": mark: must be non-zero") {
		t.Errorf("Load error = %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want a not-exist error", err)
	}
}

// Issue 8 asks for a configuration reference that cannot drift from the
// schema: every key of the schema must appear in default.yaml or in one of
// the examples, and those must parse, so a new field without documentation
// fails here.
func TestEveryKeyIsDocumented(t *testing.T) {
	files := []string{"default.yaml"}
	ex, _ := filepath.Glob("examples/*.yaml")
	files = append(files, ex...)
	present := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var n yaml.Node
		if err := yaml.Unmarshal(data, &n); err != nil {
			t.Fatal(err)
		}
		collectKeys(n.Content[0], "", present)
	}
	for _, k := range schemaKeys(reflect.TypeFor[Config](), "") {
		if !present[k] {
			t.Errorf("key %s appears in no shipped config (default.yaml, examples/)", k)
		}
	}
}

func collectKeys(n *yaml.Node, path string, out map[string]bool) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			out[p] = true
			collectKeys(n.Content[i+1], p, out)
		}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			collectKeys(e, path+"[]", out)
		}
	}
}

func schemaKeys(t reflect.Type, path string) []string {
	var keys []string
	fields, names := yamlFields(t)
	for _, name := range names {
		p := name
		if path != "" {
			p = path + "." + name
		}
		keys = append(keys, p)
		ft := fields[name]
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct && ft != portRangeType && ft != prefixType && ft.PkgPath() == t.PkgPath():
			keys = append(keys, schemaKeys(ft, p)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && ft.Elem().PkgPath() == t.PkgPath() && ft.Elem() != portRangeType:
			keys = append(keys, schemaKeys(ft.Elem(), p+"[]")...)
		}
	}
	return keys
}

// Upstream is decoded through upstreamYAML; the two must list the same keys.
func TestUpstreamShadowMatchesSchema(t *testing.T) {
	_, a := yamlFields(reflect.TypeFor[Upstream]())
	_, b := yamlFields(reflect.TypeFor[upstreamYAML]())
	if !slices.Equal(a, b) {
		t.Errorf("Upstream keys %v, upstreamYAML keys %v", a, b)
	}
}

func TestUpstreamMarshalRoundTrip(t *testing.T) {
	c := mustParse(t, `upstreams: [{name: a, url: "socks5://u:p@h:1", via: b}, {name: b, url: "http://h:2"}]
rules: [{upstream: a}]`)
	out, err := yaml.Marshal(c.Upstreams)
	if err != nil {
		t.Fatal(err)
	}
	var back []Upstream
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c.Upstreams) {
		t.Errorf("round trip: %+v != %+v", back, c.Upstreams)
	}
}

func TestBypassPrefixes(t *testing.T) {
	c := mustParse(t, "lan: {prefixes: [192.0.2.0/24]}\ntransparent: {bypass: [198.51.100.0/24]}\n")
	got := c.BypassPrefixes()
	if len(got) != len(BuiltinBypass())+2 || !slices.Contains(got, netip.MustParsePrefix("10.0.0.0/8")) {
		t.Errorf("BypassPrefixes() = %v", got)
	}
	for _, p := range BuiltinBypass() {
		// The documentation ranges are what the test labs use as servers.
		for _, doc := range []string{"192.0.2.1", "198.51.100.1", "203.0.113.10", "2001:db8::1"} {
			if p.Contains(netip.MustParseAddr(doc)) {
				t.Errorf("builtin bypass %v covers documentation address %s", p, doc)
			}
		}
	}
	c = mustParse(t, "transparent: {bypass_builtin: false, bypass: [198.51.100.0/24]}\n")
	if got := c.BypassPrefixes(); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}) {
		t.Errorf("BypassPrefixes() without builtin = %v", got)
	}
}

func TestDefaultReturnsIndependentCopies(t *testing.T) {
	a, b := Default(), Default()
	*a.Transparent.BypassBuiltin = false
	a.Listen.HTTP[0] = "changed:1"
	a.Mark = 0
	if !b.Transparent.BypassBuiltinEnabled() || b.Listen.HTTP[0] != "127.0.0.1:8080" || b.Mark != 1 {
		t.Error("Default() shares state between calls")
	}
	if err := a.Validate(); err == nil || !slices.Contains(problemsOf(t, err), "mark: must be non-zero") {
		t.Errorf("Validate after modification = %v", err)
	}
}

// A huge value is quoted in a message only in part (maxQuoted bytes and
// "…"), wherever it is.
func TestHugeValuesAreClippedInMessages(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	digits := strings.Repeat("1", 1<<20)
	docs := []string{
		"log: {level: " + big + "}",
		"listen: {http: [" + big + "]}",
		"listen: {http: [\"" + big + ":1\"]}",
		"admin: \"" + digits + ".1:1\"",
		"rules: [{domain: [" + big + "], action: direct}]",
		"transparent: {tcp_port: " + digits + "}",
		"transparent: {udp_idle: " + digits + "}",
		"transparent: {sniff: {ports: [" + big + "]}}",
		"? " + big + "\n: 1\n",
		"transparent:\n  ? " + big + "\n  : 1\n",
		"lan: {prefixes: [" + big + "], interfaces: [" + big + "]}",
		"upstreams: [{name: a, url: \"socks5://h:" + digits + "\"}]",
		"upstreams: [{name: a, url: \"" + big + "://h:1\"}]",
		"upstreams: [{name: a, url: \"socks5://" + big + "\"}]",
		"upstreams: [{name: \"" + big + " \", url: \"direct://\", via: " + big + "}]",
		"groups: [{name: g, upstreams: [" + big + "], health: {probe: " + big + "}}]",
		"rules: [{upstream: " + big + "}]",
	}
	for i, doc := range docs {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("doc %d accepted", i)
			continue
		}
		for _, p := range problemsOf(t, err) {
			if len(p) > 400 {
				t.Errorf("doc %d: problem of %d bytes: %.200s", i, len(p), p)
			}
		}
	}
	c := mustParse(t, "rules: [{name: "+big+", action: direct}, {name: b, action: block}]")
	for _, w := range c.Warnings() {
		if len(w) > 400 {
			t.Errorf("warning of %d bytes: %.200s", len(w), w)
		}
	}
	if got := clip(strings.Repeat("é", 40)); got != strings.Repeat("é", 32)+"…" {
		t.Errorf("clip cuts inside a character: %q", got)
	}
}

// A grace period the shipped systemd unit's stop timeout has no room for is warned about, with
// the TimeoutStopSec it needs; one within it is not.
func TestGraceOverUnitStopTimeoutWarns(t *testing.T) {
	hasGraceWarning := func(w []string) string {
		for _, s := range w {
			if strings.HasPrefix(s, "timeouts.grace:") {
				return s
			}
		}
		return ""
	}
	if w := hasGraceWarning(mustParse(t, "timeouts: {grace: 15s}\n").Warnings()); w != "" {
		t.Errorf("grace 15s: %q", w)
	}
	w := hasGraceWarning(mustParse(t, "timeouts: {grace: 30s}\n").Warnings())
	if !strings.Contains(w, "TimeoutStopSec") || !strings.Contains(w, "35s here") {
		t.Errorf("grace 30s: %q, want TimeoutStopSec and 35s", w)
	}
}

// admin: takes the address alone or the long form; the long form's secret silences the
// warning about an endpoint reachable from other hosts, and its mistakes are reported.
func TestAdminForms(t *testing.T) {
	short := mustParse(t, "admin: 127.0.0.1:9091\n")
	long := mustParse(t, "admin: {listen: 127.0.0.1:9091}\n")
	if !short.Admin.Equal(long.Admin) || short.Admin.Listen != "127.0.0.1:9091" {
		t.Fatalf("short %+v, long %+v", short.Admin, long.Admin)
	}
	c := mustParse(t, `
admin:
  listen: "0.0.0.0:9091"
  secret: s3cret
  cors_origins: [http://192.168.1.1:8080, "*"]
`)
	if c.Admin.Listen != "0.0.0.0:9091" || c.Admin.Secret != "s3cret" || !slices.Equal(c.Admin.CORSOrigins, []string{"http://192.168.1.1:8080", "*"}) {
		t.Fatalf("long form: %+v", c.Admin)
	}
	for _, w := range c.Warnings() {
		if strings.HasPrefix(w, "admin:") {
			t.Errorf("warning with a secret: %s", w)
		}
	}
	if got := fmt.Sprint(c.Admin); strings.Contains(got, "s3cret") {
		t.Errorf("the secret formats in clear: %s", got)
	}
	one := mustParse(t, "admin: {listen: 127.0.0.1:9091, cors_origins: http://a.example}\n")
	if !slices.Equal(one.Admin.CORSOrigins, []string{"http://a.example"}) {
		t.Errorf("a single origin is not a list of one: %q", one.Admin.CORSOrigins)
	}
	for doc, want := range map[string]string{
		"admin: {secret: x}\n": "admin.listen: must be set",
		"admin: {listen: 127.0.0.1:9091, cors_origins: [foo]}\n":        "admin.cors_origins[0]",
		"admin: {listen: 127.0.0.1:9091, cors_origins: [ftp://h]}\n":    "scheme must be http or https",
		"admin: {listen: 127.0.0.1:9091, cors_origins: [http://h/x]}\n": "no path",
		"admin: {listen: 127.0.0.1:9091, secert: x}\n":                  `unknown key "secert", did you mean "secret"?`,
		"admin: {listen: lan:9091}\n":                                   "the lan keyword is for listen",
		"admin: [a]\n":                                                  "expected a mapping",
	} {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", doc, err, want)
		}
	}
}

// ha.vip: addresses, IPv4-mapped ones read as IPv4; without the admin endpoint nothing
// reports which router serves, and Warnings says so.
func TestHAVIP(t *testing.T) {
	c := mustParse(t, `ha: {vip: ["::ffff:192.0.2.1", "fd00:1::1"]}
listen: {http: ["127.0.0.1:8080"], socks: []}`)
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00:1::1")}; !slices.Equal(c.HA.VIP, want) {
		t.Errorf("ha.vip = %v, want %v", c.HA.VIP, want)
	}
	want := "ha.vip: has no effect without admin: which router serves is reported on the admin endpoint"
	if w := c.Warnings(); !slices.Contains(w, want) {
		t.Errorf("warnings %q lack %q", w, want)
	}
	c = mustParse(t, `ha: {vip: [192.0.2.1]}
admin: 127.0.0.1:9091
listen: {http: ["127.0.0.1:8080"], socks: []}`)
	if w := c.Warnings(); slices.Contains(w, want) {
		t.Errorf("warning %q with admin on", want)
	}
	if c := mustParse(t, `ha: {vip: []}`); c.HA.VIP != nil {
		t.Errorf("ha.vip: [] = %#v, want nil", c.HA.VIP)
	}
}
