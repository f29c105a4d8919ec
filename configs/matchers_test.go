package configs

import (
	"slices"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/geoip"
)

func TestMatchersParseAndNormalise(t *testing.T) {
	if !geoip.Built {
		t.Skip("built without GeoIP")
	}
	c := mustParse(t, `
listen: {users: [{username: alice, password: x}]}
geoip: {path: " /var/lib/GeoIP/country.mmdb "}
rules:
  - {name: a, user: alice, domain_keyword: [" Ads ", Tracker], domain_regex: '^(www\.)?example\.(com|net)$', action: block}
  - {name: b, dst_geoip: [cn, US], src_geoip: De, action: direct}
  - {name: rest, action: direct}
`)
	a, b := c.Rules[0], c.Rules[1]
	if !slices.Equal(a.User, []string{"alice"}) || !slices.Equal(a.DomainKeyword, []string{"ads", "tracker"}) {
		t.Errorf("user %q, domain_keyword %q", a.User, a.DomainKeyword)
	}
	if len(a.DomainRegex) != 1 || a.DomainRegex[0].Regexp() == nil || !a.DomainRegex[0].Regexp().MatchString("www.example.net") ||
		a.DomainRegex[0].String() != `^(www\.)?example\.(com|net)$` {
		t.Errorf("domain_regex %+v", a.DomainRegex)
	}
	if got := []string{b.DstGeoIP[0].String(), b.DstGeoIP[1].String(), b.SrcGeoIP[0].String()}; !slices.Equal(got, []string{"CN", "US", "DE"}) {
		t.Errorf("geoip codes %q", got)
	}
	if c.GeoIP.Path != "/var/lib/GeoIP/country.mmdb" {
		t.Errorf("geoip.path %q", c.GeoIP.Path)
	}
	if !b.UsesGeoIP() || a.UsesGeoIP() {
		t.Error("UsesGeoIP")
	}
	for i, r := range c.Rules[:2] {
		if r.IsCatchAll() {
			t.Errorf("rules[%d] is taken for a catch-all", i)
		}
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestMatchersProblems(t *testing.T) {
	if !geoip.Built {
		t.Skip("built without GeoIP")
	}
	for _, tc := range []struct{ doc, want string }{
		{"geoip: {path: /x}\nrules: [{dst_geoip: [usa], action: block}]", `line 2: rules[0].dst_geoip[0]: country code "usa": want two letters`},
		{"geoip: {path: /x}\nrules: [{src_geoip: [\"1a\"], action: block}]", `rules[0].src_geoip[0]: country code "1a"`},
		{"geoip: {path: /x}\nrules: [{dst_geoip: \"\", action: block}]", `rules[0].dst_geoip[0]: country code ""`},
		{"rules: [{dst_geoip: [cn], action: block}]", "rules[0].dst_geoip: needs geoip.path"},
		{"rules: [{src_geoip: [cn], action: block}]", "rules[0].src_geoip: needs geoip.path"},
		{"rules: [{name: ads, domain_regex: ['(ads'], action: block}]", `rules[0].domain_regex[0]: rule "ads": invalid regular expression "(ads": missing closing )`},
		{"rules: [{name: bad, domain_regex: ['a(?=b)'], action: block}]", `rule "bad": invalid regular expression`},
		{"rules: [{user: [\"\"], action: block}]", "rules[0].user[0]: empty user name"},
		{"rules: [{domain_keyword: [\"two words\"], action: block}]", `rules[0].domain_keyword[0]: "two words": want a part of a name`},
		{"rules: [{domain_keyword: [\" \"], action: block}]", `rules[0].domain_keyword[0]: "": want a part of a name`},
		{"geoip: /x.mmdb", "geoip: expected a mapping"},
		{"geoip: {file: /x.mmdb}", `geoip.file: unknown key "file"`},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}

func TestMatchersWarnings(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"rules: [{name: u, user: [alice], action: block}]", `rules[0] ("u"): never matches: user matches flows that authenticated on an explicit port, and listen.users is empty`},
		{"listen: {users: [{username: alice, password: x}]}\nrules: [{name: u, user: [bob], action: block}]", `rules[0] ("u"): user "bob" is not in listen.users`},
		{"listen: {users: [{username: alice, password: x}]}\nrules: [{name: u, user: [alice], inbound: [transparent], action: block}]", `never matches: users authenticate only on the http and socks inbounds`},
		{"geoip: {path: /x.mmdb}", "geoip.path: no rule has dst_geoip or src_geoip"},
		// A rule that covers a later one with the same new matchers shadows it ...
		{"rules: [{name: k, domain_keyword: [ads], action: block}, {name: k2, domain_keyword: [badads], dst_ports: [443], action: direct}]", `rules[1] ("k2"): never matches: every flow it matches is taken first by rules[0] ("k")`},
		{"listen: {users: [{username: a, password: x}]}\nrules: [{name: u, user: [a], action: block}, {name: u2, user: [a], protocol: tcp, action: direct}]", `rules[1] ("u2"): never matches`},
	} {
		if !geoip.Built && strings.Contains(tc.doc, "geoip") {
			continue
		}
		c := mustParse(t, tc.doc)
		if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, tc.want) {
			t.Errorf("%q: warnings\n%s\nwant %q", tc.doc, w, tc.want)
		}
	}
	// ... and a rule with one does not shadow a rule without it, nor the other way round.
	for _, doc := range []string{
		"listen: {users: [{username: a, password: x}]}\nrules: [{name: u, user: [a], action: block}, {name: all, action: direct}, {name: late, dst_ports: 80, action: block}]",
		"rules: [{name: k, domain_keyword: [ads], action: block}, {name: d, domain: [ads.example], action: direct}]",
		"rules: [{name: r, domain_regex: [ads], action: block}, {name: r2, domain_regex: [ads2], action: direct}]",
	} {
		c := mustParse(t, doc)
		for _, w := range c.Warnings() {
			if strings.Contains(w, "never matches") && !strings.Contains(w, `"late"`) {
				t.Errorf("%q: unexpected %q", doc, w)
			}
		}
	}
	// The rule after a catch-all is still found shadowed, past a rule with a user.
	c := mustParse(t, "listen: {users: [{username: a, password: x}]}\nrules: [{name: u, user: [a], action: block}, {name: all, action: direct}, {name: late, dst_ports: 80, action: block}]")
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, `rules[2] ("late"): never matches: every flow it matches is taken first by rules[1] ("all")`) {
		t.Errorf("the catch-all after a user rule shadows nothing:\n%s", w)
	}
}
