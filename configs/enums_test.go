package configs

import (
	"encoding"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/relay"
)

// enumValue is what every enumerated setting is.
type enumValue interface {
	fmt.Stringer
	encoding.TextMarshaler
}

// Each enumerated type reads every one of its names (in any case, with
// surrounding space) and writes it back as it reads it.
func TestEnumsRoundTrip(t *testing.T) {
	check := func(name string, v enumValue, parse func([]byte) error, read func() enumValue) {
		t.Helper()
		b, err := v.MarshalText()
		if err != nil || string(b) != name || v.String() != name {
			t.Errorf("%T %v: MarshalText = %q, %v; String = %q; want %q", v, v, b, err, v.String(), name)
		}
		if err := parse([]byte(" " + strings.ToUpper(name) + " ")); err != nil {
			t.Errorf("%T: UnmarshalText(%q): %v", v, name, err)
		} else if got := read(); got != v {
			t.Errorf("%T: UnmarshalText(%q) = %v, want %v", v, name, got, v)
		}
	}
	for _, e := range logLevels {
		var x LogLevel
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range logFormats {
		var x LogFormat
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range tcpModes {
		var x TCPMode
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range udpFallbacks {
		var x UDPFallback
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range quicModes {
		var x QUICMode
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range icmpModes {
		var x ICMPMode
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range onCrashes {
		var x OnCrash
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range policies {
		var x Policy
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range onDowns {
		var x OnDown
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range networks {
		var x Network
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range inbounds {
		var x Inbound
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, e := range actions {
		var x Action
		check(e.name, e.v, x.UnmarshalText, func() enumValue { return x })
	}
	for _, m := range []relay.Mode{relay.Auto, relay.Splice, relay.Buffered} {
		var x relay.Mode
		check(m.String(), m, x.UnmarshalText, func() enumValue { return x })
	}
}

// The zero value of each setting with a default is that default, so a
// Config built in code means what an empty file means.
func TestEnumZeroValuesAreTheDefaults(t *testing.T) {
	d := Default()
	var g Group
	for _, c := range []struct {
		name      string
		zero, def enumValue
	}{
		{"log.level", LogLevel(0), d.Log.Level},
		{"log.format", LogFormat(0), d.Log.Format},
		{"transparent.tcp_mode", TCPMode(0), d.Transparent.TCPMode},
		{"transparent.udp_without_support", UDPFallback(0), d.Transparent.UDPOverTCPUpstream},
		{"transparent.quic", QUICMode(0), d.Transparent.QUIC},
		{"transparent.icmp", ICMPMode(0), d.Transparent.ICMP},
		{"on_crash", OnCrash(0), d.OnCrash},
		{"relay", relay.Mode(0), d.Relay},
		{"groups[].policy", g.Policy, defaultGroup().Policy},
		{"groups[].on_down", g.OnDown, defaultGroup().OnDown},
	} {
		if c.zero != c.def {
			t.Errorf("%s: zero value %v, default %v", c.name, c.zero, c.def)
		}
	}
}

// A value outside its type, set in code, is refused by Validate with the
// allowed values.
func TestValidateRefusesEnumValuesOutsideTheirType(t *testing.T) {
	c := mustParse(t, `upstreams: [{name: u, url: "socks5://h:1"}]
groups: [{name: g, upstreams: [u]}]
rules: [{protocol: tcp, inbound: http, upstream: g}]`)
	c.Log.Level, c.Transparent.TCPMode, c.Relay = 9, 9, 9
	c.Groups[0].Policy, c.Rules[0].Protocol[0], c.Rules[0].Inbound[0], c.Rules[0].Action = 9, 9, 9, 9
	want := []string{
		`log.level: must be one of debug, info, warn, error (got log.level(9))`,
		`transparent.tcp_mode: must be one of redirect, tproxy (got tcp_mode(9))`,
		`groups[0].policy: must be one of failover, round-robin, least-connections, select, url-test (got policy(9))`,
		`rules[0].protocol[0]: must be one of tcp, udp (got network(9))`,
		`rules[0].inbound[0]: must be one of transparent, http, socks, dns, router (got inbound(9))`,
		`rules[0].action: must be one of direct, proxy, block (got action(9))`,
		`relay: must be one of auto, splice, buffered (got mode(9))`,
	}
	if got := problemsOf(t, c.Validate()); !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// relay: kernel is read as auto in any case, as the other names are.
func TestRelayKernelInAnyCase(t *testing.T) {
	c := mustParse(t, "relay: \" Kernel\"\n")
	if c.Relay != relay.Auto || len(c.Warnings()) == 0 || !strings.HasPrefix(c.Warnings()[0], `relay: "kernel" is no longer available`) {
		t.Errorf("relay = %v, warnings %q", c.Relay, c.Warnings())
	}
}

// transparent.icmp is pass by default, block when asked, and anything else is refused with
// the allowed values and the line.
func TestTransparentICMP(t *testing.T) {
	if c := mustParse(t, "transparent: {icmp: block}\n"); c.Transparent.ICMP != ICMPBlock {
		t.Errorf("icmp: block read as %v", c.Transparent.ICMP)
	}
	if c := mustParse(t, "transparent: {icmp: PASS}\n"); c.Transparent.ICMP != ICMPPass {
		t.Errorf("icmp: PASS read as %v", c.Transparent.ICMP)
	}
	_, err := Parse([]byte("transparent:\n  icmp: drop\n"))
	want := []string{`line 2: transparent.icmp: must be one of pass, block (got "drop")`}
	if got := problemsOf(t, err); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
	c := mustParse(t, "transparent: {icmp: block}\n")
	if !slices.ContainsFunc(c.Warnings(), func(w string) bool {
		return strings.HasPrefix(w, "transparent.icmp: block has no effect without lan.interfaces")
	}) {
		t.Errorf("no warning for icmp: block without lan.interfaces: %q", c.Warnings())
	}
}
