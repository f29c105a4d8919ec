package configs

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, and that whatever it
// accepts is valid, ends with a catch-all rule and survives Warnings.
func FuzzParse(f *testing.F) {
	f.Add(defaultYAML)
	files, _ := filepath.Glob("examples/*.yaml")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"", "{}", "~", "[]", "- a", "log: info", "mark: 0x1\n---\nmark: 2",
		"upstreams: [{name: a, url: \"socks5://u:p@h:1\", via: a}]",
		"upstreams: [{name: a, url: \"%zz://\"}]",
		"rules: [{dst_ports: [\"1-\"], domain: [\"*.\"]}]",
		"groups: [{name: g, upstreams: [g], health: {<<: {interval: 1s}}}]",
		"a: &a [*a]", "listen: {http: [*x]}", "listen: {http: &x [1, *x]}",
		"transparent: {sniff: {ports: [[1]]}}",
		"rules: [{protocol: udp, dst: 10.0.0.0/8, dst_ports: 53, domain: &d x.example, src: *d}]",
		"groups: [{name: g, upstreams: main}]\nlan: {interfaces: &i eth1, prefixes: *i}",
		"transparent: {tcp_port: 12345.9, udp_port: 1e3, route_table: .nan}\nmark: 0x1_0",
		"listen: {http: [\":8080\", \"127.0.0.1:8080\", \"999.1.1.1:1\"], mixed: lan:8080}\nadmin: \"[::]:8080\"",
		"relay: kernel\nupstreams: [{name: a, url: \"socks5://localhost:1080\"}, {name: b, url: \"socks5://0.0.0.0:8080\", via: a}]",
		"upstreams: [{name: a, url: \"https://u:p@h:443\", tls: {server_name: h, pin_sha256: sha256//AAAA, insecure: true}}, {name: b, url: \"socks5+tls://h:1\", via: a, tls: {ca: /nonexistent}}]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error message")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Errorf("Parse accepted a config Validate rejects: %v", err)
		}
		if len(c.Rules) == 0 || !c.Rules[len(c.Rules)-1].IsCatchAll() {
			t.Errorf("rules do not end with a catch-all: %+v", c.Rules)
		}
		_ = c.Warnings()
		_ = c.BypassPrefixes()
	})
}
