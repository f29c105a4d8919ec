package gateway

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

// FuzzConfigKernelSpec checks that whatever the config loader accepts, and so `socksgate check`
// and a reload let through, also makes kernel rules the redirect package accepts: a config that
// passes the check must not fail when socksgate installs its rules.
func FuzzConfigKernelSpec(f *testing.F) {
	files, _ := filepath.Glob("../configs/examples/*.yaml")
	files = append(files, "../configs/default.yaml")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"lan: {interfaces: [br-lan, wlan0]}\ntransparent: {udp: true, tcp_mode: tproxy}",
		"lan: {interfaces: [\"eth*\"]}",
		"lan: {interfaces: [eth0]}\ntransparent: {udp: true, route_table: 3000000000}",
		"lan: {interfaces: [eth0]}\ntransparent: {udp: true, route_table: 2147483647, rule_priority: 32765}",
		"lan: {interfaces: [eth0]}\nmark: 0x80000000\ntransparent: {tproxy_mark: 0xffffffff}",
		"lan: {interfaces: [eth0], prefixes: [\"::/0\"]}\ntransparent: {bypass: [0.0.0.0/0]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := configs.Parse(data)
		if err != nil {
			return
		}
		if err := SpecFromConfig(c, nil).Validate(); err != nil {
			t.Errorf("the config loader accepted a config whose kernel rules are invalid: %v", err)
		}
	})
}
