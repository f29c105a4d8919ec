package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func setsConfig(t *testing.T) (cfg, dir string) {
	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, "cn.txt"), []byte("192.0.2.0/24\njunk\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "ads.yaml"), []byte("payload:\n  - '+.ads.example'\n"), 0o644)
	return writeConfig(t, fmt.Sprintf(`lan: {interfaces: [lan9]}
upstreams: [{name: main, url: "socks5://10.20.0.2:1080"}]
rule_sets:
  - {name: cn, kind: cidr, path: %q}
  - {name: ads, kind: domain, path: %q}
  - {name: later, kind: domain, path: %q}
rules:
  - {name: cn, dst_set: [cn], action: direct}
  - {name: ads, domain_set: [ads, later], action: block}
  - {name: rest, upstream: main}
`, filepath.Join(dir, "cn.txt"), filepath.Join(dir, "ads.yaml"), filepath.Join(dir, "later.txt"))), dir
}

// check reads the sets: their sizes, their bad lines, and a missing file is an error, or with
// -sets=warn (the service files) a warning.
func TestCheckReadsRuleSets(t *testing.T) {
	cfg, dir := setsConfig(t)
	code, out, errOut := runMain("check", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, `error: rule_sets[2] ("later"): open`) || !strings.Contains(out, `rule set "cn": 1 prefixes`) ||
		!strings.Contains(out, `warning: rule_sets[0] ("cn"): `+filepath.Join(dir, "cn.txt")+`: 1 bad lines skipped (line 2)`) {
		t.Errorf("check: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runMain("check", "-sets=warn", "-c", cfg)
	if code != 0 || !strings.Contains(out, `warning: rule_sets[2] ("later"): open`) || !strings.Contains(out, ": ok") {
		t.Errorf("check -sets=warn: exit %d\n%s%s", code, out, errOut)
	}
	os.WriteFile(filepath.Join(dir, "later.txt"), []byte("later.example\n"), 0o644)
	if code, out, errOut := runMain("check", "-c", cfg); code != 0 {
		t.Errorf("check with every file: exit %d\n%s%s", code, out, errOut)
	}
}

// rules shows the direct sets; explain names the set that matched and says the kernel
// carries a hoisted destination.
func TestRulesAndExplainWithSets(t *testing.T) {
	cfg, _ := setsConfig(t)
	code, out, _ := runMain("rules", "-c", cfg)
	if code != 0 || !strings.Contains(out, "set direct4") || !strings.Contains(out, "elements = { 192.0.2.0/24 }") ||
		!strings.Contains(out, "ip daddr @direct4 return") || !strings.Contains(out, "# direct4/direct6: the destinations of rules cn") {
		t.Errorf("rules: exit %d\n%s", code, out)
	}
	code, out, _ = runMain("explain", "-c", cfg, "10.0.0.2", "192.0.2.5:443")
	if code != 0 || !strings.Contains(out, `rule 1 "cn": matches (dst in set "cn")`) || !strings.Contains(out, "routed by the kernel") {
		t.Errorf("explain: exit %d\n%s", code, out)
	}
	code, out, _ = runMain("explain", "-c", cfg, "10.0.0.2", "198.51.100.1:443", "--name", "x.ads.example")
	if code != 0 || !strings.Contains(out, `dst [set cn] does not contain 198.51.100.1`) || !strings.Contains(out, `matches (domain in set "ads")`) {
		t.Errorf("explain: exit %d\n%s", code, out)
	}
}
