package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/geoip/geoiptest"
)

// withTestGeoIP writes a copy of the example config at path whose geoip.path is a small
// database of the test's own; "" in a build without GeoIP.
func withTestGeoIP(t *testing.T, path, data string) string {
	t.Helper()
	if !geoip.Built {
		return ""
	}
	db := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.WriteFile(db, geoiptest.Network{Prefix: "203.0.113.0/24", Country: "DE"}); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(\s*path:).*$`)
	out := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(out, []byte(re.ReplaceAllString(data, "${1} "+db)), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCheckFailsOnABrokenGeoIPDatabase(t *testing.T) {
	if !geoip.Built {
		t.Skip("built without GeoIP")
	}
	broken := filepath.Join(t.TempDir(), "broken.mmdb")
	os.WriteFile(broken, []byte("half a database"), 0o644)
	for _, db := range []string{broken, filepath.Join(t.TempDir(), "missing.mmdb")} {
		p := writeConfig(t, "geoip: {path: "+db+"}\nrules: [{dst_geoip: [cn], action: direct}, {name: rest, action: direct}]\n")
		code, _, errOut := runMain("check", "-c", p)
		if code != 1 || !strings.Contains(errOut, "geoip.path: ") {
			t.Errorf("check with %s: exit %d, %q", filepath.Base(db), code, errOut)
		}
	}
}

const explainMoreConfig = `listen: {users: [{username: alice, password: a}, {username: bob, password: b}]}
geoip: {path: DB}
upstreams:
  - {name: a, url: "socks5://192.0.2.10:1080"}
rules:
  - {name: alice, user: [alice], action: proxy, upstream: a}
  - {name: ads, domain_keyword: [ads], action: block}
  - {name: adn, domain_regex: ['^ad[0-9]+\.'], action: block}
  - {name: cn, dst_geoip: [cn], action: direct}
  - {name: from-us, src_geoip: [us], action: block}
  - {name: rest, action: proxy, upstream: a}
`

func explainMore(t *testing.T) string {
	t.Helper()
	db := countryDB(t, geoiptest.Network{Prefix: "203.0.113.0/25", Country: "US"},
		geoiptest.Network{Prefix: "203.0.113.128/25", Country: "CN"})
	return writeConfig(t, strings.Replace(explainMoreConfig, "DB", db, 1))
}

// countryDB writes a country database of nets for a test; a build without GeoIP (the
// nogeoip tag) skips it, as such a binary refuses the config.
func countryDB(t *testing.T, nets ...geoiptest.Network) string {
	t.Helper()
	if !geoip.Built {
		t.Skip("built without GeoIP")
	}
	db := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.WriteFile(db, nets...); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestExplainMoreMatchers(t *testing.T) {
	p := explainMore(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"10.0.1.2", "203.0.113.10:443", "--name", "www.example.com"}, []string{
			`user [alice]: the flow has no authenticated user (--user, on --inbound http or socks)`,
			`domain_keyword [ads] does not match www.example.com`, `domain_regex [^ad[0-9]+\.] does not match www.example.com`,
			`dst_geoip [CN]: 203.0.113.10 is in US`, `src_geoip [US]: 10.0.1.2 is in no country the database knows`,
			`rule 6 "rest": matches`}},
		{[]string{"10.0.1.2", "203.0.113.10:443", "--inbound", "socks", "--user", "bob"}, []string{
			"flow: tcp 10.0.1.2 (user bob) -> 203.0.113.10", `user [alice] does not include bob`, `domain_keyword [ads]: the flow has no name`}},
		{[]string{"10.0.1.2", "203.0.113.10:443", "--inbound", "http", "--user", "alice"}, []string{`rule 1 "alice": matches`}},
		{[]string{"10.0.1.2", "203.0.113.200:443"}, []string{`rule 4 "cn": matches`, "decision: direct"}},
		{[]string{"203.0.113.5", "198.51.100.1:443"}, []string{`dst_geoip [CN]: 198.51.100.1 is in no country the database knows`, `rule 5 "from-us": matches`}},
		{[]string{"10.0.1.2", "ad12.example:443", "--inbound", "socks"}, []string{`rule 3 "adn": matches`}},
		{[]string{"10.0.1.2", "cn.example:443", "--inbound", "socks"}, []string{
			"dst_geoip [CN]: the flow has only the name cn.example; the gateway resolves it to match this rule", "the gateway resolves cn.example"}},
		{[]string{"10.0.1.2", "--query", "ads.example"}, []string{`user [alice]: a DNS query has no user`, `rule 2 "ads": matches`}},
	} {
		code, out, errOut := runMain(append([]string{"explain", "-c", p}, tc.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	if code, _, errOut := runMain("explain", "-c", p, "--user", "bob", "10.0.1.2", "203.0.113.10:443"); code != 2 || !strings.Contains(errOut, "--user: only flows on the explicit ports") {
		t.Errorf("--user on a transparent flow: exit %d %q", code, errOut)
	}
}

// rules and explain hoist with the country database, as the gateway does: a proxy rule on a
// country claims its networks, a direct rule on one gives them.
func TestRulesAndExplainHoistCountries(t *testing.T) {
	db := countryDB(t, geoiptest.Network{Prefix: "203.0.113.0/25", Country: "US"},
		geoiptest.Network{Prefix: "198.51.100.0/24", Country: "DE"})
	cfg := writeConfig(t, `lan: {interfaces: [lan9]}
geoip: {path: `+db+`}
upstreams: [{name: main, url: "socks5://10.20.0.2:1080"}]
rules:
  - {name: us, dst_geoip: [us], upstream: main}
  - {name: de, dst_geoip: [de], action: direct}
  - {name: doc, dst: [203.0.113.0/24], action: direct}
  - {name: rest, upstream: main}
`)
	code, out, _ := runMain("rules", "-c", cfg)
	if code != 0 || !strings.Contains(out, "elements = { 198.51.100.0/24, 203.0.113.128/25 }") || !strings.Contains(out, "the destinations of rules de, doc") {
		t.Errorf("rules: exit %d\n%s", code, out)
	}
	code, out, _ = runMain("explain", "-c", cfg, "10.0.0.2", "203.0.113.5:443")
	if code != 0 || strings.Contains(out, "routed by the kernel") {
		t.Errorf("explain of a proxied country: exit %d\n%s", code, out)
	}
	code, out, _ = runMain("explain", "-c", cfg, "10.0.0.2", "198.51.100.5:443")
	if code != 0 || !strings.Contains(out, "routed by the kernel") {
		t.Errorf("explain of a hoisted country: exit %d\n%s", code, out)
	}
}
