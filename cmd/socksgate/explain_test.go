package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

const explainConfig = `upstreams:
  - {name: a, url: "socks5://192.0.2.10:1080"}
  - {name: b, url: "http://user:secret@192.0.2.11:3128"}
groups:
  - {name: pool, upstreams: [a, b]}
  - {name: rr, policy: round-robin, upstreams: [a, b]}
rules:
  - {name: kids-udp, protocol: [udp], src: [10.0.1.64/26], action: block}
  - {name: cdn, dst: [198.51.100.0/24], dst_ports: [443], action: direct}
  - {name: ads, domain: [.ads.example], inbound: [http], action: block}
  - {name: home, inbound: [dns], domain: [home.example], action: direct}
  - {name: games, dst_ports: [3074], action: proxy, upstream: rr}
  - {name: web, dst_ports: [80], action: proxy, upstream: b}
  - {name: rest, action: proxy, upstream: pool}
`

func TestExplainTextNamesTheFailedMatchers(t *testing.T) {
	p := writeConfig(t, explainConfig)
	code, out, errOut := runMain("explain", "-c", p, "10.0.1.70", "203.0.113.5:443", "--name", "x.ads.example")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		`rule 1 "kids-udp": no`, "protocol [udp] does not include tcp",
		"dst [198.51.100.0/24] does not contain 203.0.113.5",
		"inbound [http] does not include transparent (redirect)",
		"dst_ports [3074] does not include 443",
		`rule 7 "rest": matches`,
		`decision: proxy through group "pool" (failover: a, b)`, "a, the first member that is up",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestExplainJSONAndGroupsAndQueries(t *testing.T) {
	p := writeConfig(t, explainConfig)
	var rep explainReport
	decode := func(args ...string) {
		t.Helper()
		code, out, errOut := runMain(append([]string{"explain", "-c", p, "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		rep = explainReport{}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	decode("10.0.1.70", "198.51.100.7:443", "--proto", "udp")
	if rep.Decision.Rule != "kids-udp" || rep.Decision.Action != "block" || len(rep.Rules) != 1 {
		t.Errorf("udp from a kid: %+v", rep)
	}
	decode("10.0.1.2", "[2001:db8::1]:3074")
	if g := rep.Decision.Group; g == nil || g.Pick != "" || !strings.Contains(g.Chosen, "chosen at dial time by policy round-robin") {
		t.Errorf("round-robin group: %+v", rep.Decision)
	}
	decode("10.0.1.2", "192.0.2.99:80", "--inbound", "socks")
	if rep.Decision.Upstream != "b" || strings.Contains(rep.Decision.URL, "secret") || !strings.Contains(rep.Decision.URL, "192.0.2.11:3128") {
		t.Errorf("upstream b, redacted: %+v", rep.Decision)
	}
	decode("10.0.1.2", "--query", "home.example")
	if rep.Query == nil || rep.Decision.Rule != "home" || len(rep.Rules) != 4 || rep.Rules[1].Failed[0].Matcher != "dst" {
		t.Errorf("query: %+v", rep)
	}
	decode("10.0.1.2", "www.home.example", "--inbound", "dns")
	if rep.Decision.Rule != "rest" {
		t.Errorf("--inbound dns for another name: %+v", rep.Decision)
	}
	decode("10.0.1.2", "cdn.example:443")
	if !rep.WouldResolve || rep.Decision.Rule != "rest" || rep.Resolved != nil {
		t.Errorf("name-only flow behind a dst rule: %+v", rep)
	}
}

// With --resolve the name's addresses decide as Route would; the lookup is injected here.
func TestExplainResolvesOnlyWhenAsked(t *testing.T) {
	cfg, err := configs.Parse([]byte(explainConfig))
	if err != nil {
		t.Fatal(err)
	}
	ups, err := upstream.NewUpstreamsIdle(cfg, upstream.Direct{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := route.NewRouter(cfg, ups)
	if err != nil {
		t.Fatal(err)
	}
	f, err := explainFlowOf(cfg, netip.MustParseAddrPort("10.0.1.2:0"), "cdn.example:443", "", "tcp", "transparent")
	if err != nil {
		t.Fatal(err)
	}
	asked := 0
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		asked++
		return []netip.Addr{netip.MustParseAddr("198.51.100.9")}, nil
	}
	rep := explainRoute(cfg, r, f, lookup)
	if asked != 1 || rep.Decision.Rule != "cdn" || rep.Decision.Addr != "198.51.100.9" || !rep.Rules[len(rep.Rules)-1].Matched {
		t.Errorf("resolved: asked %d, %+v", asked, rep)
	}
	failing := func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("nxdomain") }
	if rep := explainRoute(cfg, r, f, failing); rep.Decision.Rule != "rest" || !strings.Contains(rep.Note, "did not resolve") {
		t.Errorf("unresolvable: %+v", rep)
	}
}

func TestExplainRefusesBadArguments(t *testing.T) {
	p := writeConfig(t, explainConfig)
	for _, args := range [][]string{
		{"explain", "10.0.1.2", "1.2.3.4:80"},
		{"explain", "-c", p, "10.0.1.2"},
		{"explain", "-c", p, "nope", "1.2.3.4:80"},
		{"explain", "-c", p, "10.0.1.2", "1.2.3.4:99999"},
		{"explain", "-c", p, "10.0.1.2", "1.2.3.4:80", "--proto", "sctp"},
		{"explain", "-c", p, "10.0.1.2", "1.2.3.4:80", "--inbound", "tun"},
		{"explain", "-c", p, "10.0.1.2", "a.example:80", "--name", "b.example"},
	} {
		if code, _, errOut := runMain(args...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, errOut)
		}
	}
}

// --inbound router explains the router's own traffic (router.capture): rules for inbound router
// match it, rules for transparent do not.
func TestExplainRouterInbound(t *testing.T) {
	p := writeConfig(t, `upstreams:
  - {name: a, url: "socks5://192.0.2.10:1080"}
rules:
  - {name: lan, inbound: [transparent], action: proxy, upstream: a}
  - {name: router-direct, inbound: [router], action: direct}
`)
	code, out, errOut := runMain("explain", "-c", p, "10.0.2.1", "203.0.113.5:443", "--inbound", "router")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"inbound router", "inbound [transparent] does not include router", `rule 2 "router-direct": matches`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// transparent.quic: block decides captured UDP to port 443 before any rule: explain says so,
// for the LAN and the router's own, and not for other ports, TCP, or without UDP capture.
func TestExplainQUICBlock(t *testing.T) {
	cfg := `lan: {interfaces: [br-lan]}
transparent: {udp: true, quic: block}
upstreams:
  - {name: a, url: "socks5://192.0.2.10:1080"}
rules:
  - {name: rest, action: proxy, upstream: a}
`
	p := writeConfig(t, cfg)
	code, out, errOut := runMain("explain", "-c", p, "10.0.1.2", "203.0.113.5:443", "--proto", "udp", "--name", "www.example")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"flow: udp 10.0.1.2 -> 203.0.113.5 (name www.example) port 443", "no rule is asked: transparent.quic decides",
		`decision: block, rule "transparent.quic"`, "browsers fall back to TCP"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var rep explainReport
	decode := func(path string, args ...string) {
		t.Helper()
		code, out, errOut := runMain(append([]string{"explain", "-c", path, "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		rep = explainReport{}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	decode(p, "10.0.2.1", "[2001:db8::1]:443", "--proto", "udp", "--inbound", "router")
	if rep.Decision.Rule != "transparent.quic" || rep.Decision.Action != "block" || len(rep.Rules) != 0 {
		t.Errorf("router's own QUIC: %+v", rep)
	}
	for _, args := range [][]string{
		{"10.0.1.2", "203.0.113.5:443"},                                         // TCP: the rules
		{"10.0.1.2", "203.0.113.5:4433", "--proto", "udp"},                      // another port
		{"10.0.1.2", "203.0.113.5:443", "--proto", "udp", "--inbound", "socks"}, // not captured
	} {
		decode(p, args...)
		if rep.Decision.Rule != "rest" || len(rep.Rules) != 1 {
			t.Errorf("%v: %+v", args, rep)
		}
	}
	decode(writeConfig(t, strings.Replace(cfg, "quic: block", "quic: sniff", 1)), "10.0.1.2", "203.0.113.5:443", "--proto", "udp")
	if rep.Decision.Rule != "rest" {
		t.Errorf("quic: sniff: %+v", rep)
	}
	decode(writeConfig(t, strings.Replace(cfg, "udp: true", "udp: false", 1)), "10.0.1.2", "203.0.113.5:443", "--proto", "udp")
	if rep.Decision.Rule != "transparent.quic" || rep.Decision.Action != "direct" || !strings.Contains(rep.Note, "transparent.udp is off") {
		t.Errorf("quic: block without udp capture: %+v", rep)
	}
}

// --proto icmp: no rule decides a ping; transparent.icmp does. block drops the LAN's pings to
// destinations outside the bypass, in both families; the router's own, bypassed destinations
// and pass are routed.
func TestExplainICMP(t *testing.T) {
	cfg := `lan: {interfaces: [br-lan]}
transparent: {icmp: block, bypass: [198.51.100.0/24]}
upstreams:
  - {name: a, url: "socks5://192.0.2.10:1080"}
rules:
  - {name: rest, action: proxy, upstream: a}
`
	p := writeConfig(t, cfg)
	code, out, errOut := runMain("explain", "-c", p, "--proto", "icmp", "10.0.1.2", "203.0.113.5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"flow: icmp 10.0.1.2 -> 203.0.113.5, inbound transparent", "no rule is asked: transparent.icmp decides",
		`decision: block, rule "transparent.icmp"`, "echo requests the router would forward"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, tc := range []struct {
		path            string
		args            []string
		network, action string
		note            string
	}{
		{p, []string{"fd00:1::2", "2001:db8:3::10"}, "icmpv6", "block", "icmpv6 echo requests"},
		{p, []string{"10.0.1.2", "[2001:db8:3::10]"}, "icmpv6", "block", ""},
		{p, []string{"10.0.2.1", "203.0.113.5", "--inbound", "router"}, "icmp", "direct", "the router's own pings pass"},
		{p, []string{"10.0.1.2", "198.51.100.7"}, "icmp", "direct", "bypassed destination"},
		{p, []string{"10.0.1.2", "192.168.5.5"}, "icmp", "direct", "bypassed destination"},
		{writeConfig(t, strings.Replace(cfg, "icmp: block", "icmp: pass", 1)), []string{"10.0.1.2", "203.0.113.5"}, "icmp", "direct", "routed, not proxied"},
		{writeConfig(t, strings.Replace(cfg, "[br-lan]", "[]", 1)), []string{"10.0.1.2", "203.0.113.5"}, "icmp", "direct", "no effect without lan.interfaces"},
	} {
		code, out, errOut := runMain(append([]string{"explain", "-c", tc.path, "--json", "--proto", "icmp"}, tc.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		var rep explainReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Flow == nil || rep.Flow.Network != tc.network || rep.Decision.Rule != "transparent.icmp" || rep.Decision.Action != tc.action ||
			len(rep.Rules) != 0 || !strings.Contains(rep.Note, tc.note) {
			t.Errorf("%v: %+v", tc.args, rep)
		}
	}
	for _, args := range [][]string{
		{"10.0.1.2", "203.0.113.5:80"},
		{"10.0.1.2", "www.example"},
		{"10.0.1.2", "203.0.113.5", "--inbound", "socks"},
		{"10.0.1.2", "--query", "www.example"},
	} {
		if code, _, errOut := runMain(append([]string{"explain", "-c", p, "--proto", "icmp"}, args...)...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, errOut)
		}
	}
}

func TestExplainDeviceMatchers(t *testing.T) {
	p := writeConfig(t, `lan: {interfaces: [eth1]}
rules:
  - {name: tablet, src_mac: ["aa:bb:cc:dd:ee:01"], action: block}
  - {name: tv, device: [tv], action: direct}
  - {name: rest, action: direct}
`)
	code, out, errOut := runMain("explain", "-c", p, "10.0.1.70", "203.0.113.5:443")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		`src_mac [aa:bb:cc:dd:ee:01]: the source's MAC is not given (--src-mac)`,
		`device [tv]: the source device's name is not given (--device)`, `rule 3 "rest": matches`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = runMain("explain", "-c", p, "10.0.1.70", "203.0.113.5:443", "--src-mac", "AA:BB:CC:DD:EE:02", "--device", "tv.lan")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"(device aa:bb:cc:dd:ee:02 tv.lan)",
		"src_mac [aa:bb:cc:dd:ee:01] does not include aa:bb:cc:dd:ee:02", `rule 2 "tv": matches`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code, _, errOut := runMain("explain", "-c", p, "10.0.1.70", "203.0.113.5:443", "--src-mac", "nope"); code != 2 || !strings.Contains(errOut, "invalid MAC") {
		t.Errorf("bad --src-mac: exit %d: %s", code, errOut)
	}
}
