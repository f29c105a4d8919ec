package configs

import (
	"strings"
	"testing"
)

func TestDeviceMatchersParseAndValidate(t *testing.T) {
	c, err := Parse([]byte(`lan: {interfaces: [eth1]}
rules:
  - {name: a, src_mac: AA-BB-CC-DD-EE-01, action: block}
  - {name: b, device: [Laptop.], action: direct}
`))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Rules[0].SrcMAC; len(m) != 1 || m[0].String() != "aa:bb:cc:dd:ee:01" {
		t.Errorf("src_mac = %v", m)
	}
	if d := c.Rules[1].Device; len(d) != 1 || d[0] != "laptop" {
		t.Errorf("device = %q", d)
	}
	if c.Rules[0].IsCatchAll() || c.Rules[1].IsCatchAll() {
		t.Error("a rule with src_mac or device is taken for a catch-all")
	}
	if !c.Devices.On(true) || c.Devices.Max != 1024 || !c.Devices.ReverseDNS {
		t.Errorf("devices defaults: %+v", c.Devices)
	}
	for _, tc := range []struct{ doc, want string }{
		{"lan: {interfaces: [eth1]}\nrules: [{src_mac: [nonsense], action: block}]\n", `rules[0].src_mac[0]: invalid MAC address "nonsense"`},
		{"lan: {interfaces: [eth1]}\nrules: [{src_mac: [\"aa:bb:cc:dd:ee:ff:00:11\"], action: block}]\n", "invalid MAC address"},
		{"lan: {interfaces: [eth1]}\nrules: [{device: [\"two words\"], action: block}]\n", `rules[0].device[0]: "two words": want a host name`},
		{"rules: [{src_mac: [\"aa:bb:cc:dd:ee:ff\"], action: block}]\n", "rules[0]: src_mac and device need devices on"},
		{"lan: {interfaces: [eth1]}\ndevices: {enabled: false}\nrules: [{device: [tv], action: block}]\n", "need devices on"},
		{"devices: {max: 0, sample: 100ms, metrics_top: -1, resolver: \"nohost\"}\n", "devices.max: must be at least 1"},
		{"devices: {sample: 100ms}\n", "devices.sample: must be at least 1s"},
		{"devices: {resolver: \"127.0.0.1\"}\n", "devices.resolver"},
		{"devices: {leases: [\" \"]}\n", "devices.leases[0]: empty file name"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
	// devices.enabled: true turns them on without capture, for the explicit ports' clients.
	if _, err := Parse([]byte("devices: {enabled: true}\nrules: [{src_mac: [\"aa:bb:cc:dd:ee:ff\"], action: block}]\n")); err != nil {
		t.Errorf("devices on without capture: %v", err)
	}
}

func TestMatchDeviceName(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"laptop", "laptop", true},
		{"laptop", "LAPTOP.lan.", true},
		{"laptop", "laptop2.lan", false},
		{"laptop.lan", "laptop.lan", true},
		{"laptop.lan", "laptop", false},
		{"laptop", "", false},
		{"lan", "laptop.lan", false},
	} {
		if got := MatchDeviceName(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchDeviceName(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

func TestShadowedDeviceRuleIsReported(t *testing.T) {
	c, err := Parse([]byte(`lan: {interfaces: [eth1]}
rules:
  - {name: a, src_mac: ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"], action: block}
  - {name: b, src_mac: ["aa:bb:cc:dd:ee:02"], action: direct}
  - {name: c, src_mac: ["aa:bb:cc:dd:ee:03"], action: direct}
`))
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	if !strings.Contains(w, `"b"`) || strings.Contains(w, `"c"`) {
		t.Errorf("warnings:\n%s", w)
	}
}
