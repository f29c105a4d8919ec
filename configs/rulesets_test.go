package configs

import (
	"strings"
	"testing"
)

func TestRuleSetsParse(t *testing.T) {
	c := mustParse(t, `
rule_sets:
  - {name: cn, kind: cidr, path: /etc/socksgate/cn.txt}
  - {name: ads, kind: domain, path: /etc/socksgate/ads.txt, format: dnsmasq}
rules:
  - {name: no-ads, domain_set: ads, action: block}
  - {name: cn, dst_set: [cn], action: direct}
  - {name: lab, src_set: [cn], dst: 192.0.2.0/24, action: direct}
  - {name: rest, action: direct}
`)
	if len(c.RuleSets) != 2 || c.RuleSets[0].Kind != SetCIDR || c.RuleSets[0].Format != SetFormatAuto || c.RuleSets[1].Format != SetFormatDnsmasq {
		t.Fatalf("rule_sets = %+v", c.RuleSets)
	}
	if r := c.Rules[0]; len(r.DomainSet) != 1 || r.DomainSet[0] != "ads" || r.IsCatchAll() {
		t.Errorf("rules[0] = %+v, catch-all %v", r, r.IsCatchAll())
	}
	if c.Rules[len(c.Rules)-1].Implicit {
		t.Error("an implicit rule was appended after a catch-all")
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}
}

func TestRuleSetsValidation(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"rules: [{name: r, dst_set: [nope], action: direct}]", `rules[0].dst_set[0]: rule "r": no rule set named "nope" (rule_sets: none)`},
		{"rule_sets: [{name: d, kind: domain, path: /x}]\nrules: [{name: r, dst_set: [d], action: direct}]", `rules[0].dst_set[0]: rule "r": "d" is a domain set; dst_set takes cidr sets`},
		{"rule_sets: [{name: c, kind: cidr, path: /x}]\nrules: [{name: r, domain_set: c, action: direct}]", `rules[0].domain_set[0]: rule "r": "c" is a cidr set; domain_set takes domain sets`},
		{"rule_sets: [{name: c, kind: cidr, path: /x}]\nrules: [{name: r, src_set: [c, c], action: direct}]", `rules[0].src_set[1]: rule "r": "c" is listed twice`},
		{"rule_sets: [{name: c, kind: cidr, path: /x}, {name: c, kind: cidr, path: /y}]", `rule_sets[1].name: "c" is already the name of rule_sets[0]`},
		{"rule_sets: [{name: c, path: /x}]", `rule_sets[0].kind: required (domain or cidr)`},
		{"rule_sets: [{name: c, kind: cidr, path: x.txt}]", `rule_sets[0].path: "x.txt": must be an absolute path`},
		{"rule_sets: [{name: c, kind: cidr}]", `rule_sets[0].path: required`},
		{"rule_sets: [{name: 'a b', kind: cidr, path: /x}]", `rule_sets[0].name: "a b" may hold only`},
		{"rule_sets: [{name: c, kind: ipset, path: /x}]", `must be one of domain, cidr`},
		{"rule_sets: [{name: c, kind: cidr, path: /x, format: json}]", `must be one of auto, list, dnsmasq, clash`},
		{"rule_sets: [{name: c, kind: cidr, path: /x, format: dnsmasq}]", `rule_sets[0].format: dnsmasq lines hold names`},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil {
			t.Errorf("%s: accepted", tc.doc)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.doc, err, tc.want)
		}
	}
}

func TestRuleSetWarnings(t *testing.T) {
	c := mustParse(t, `
rule_sets:
  - {name: a, kind: cidr, path: /a}
  - {name: b, kind: cidr, path: /b}
  - {name: idle, kind: domain, path: /c}
rules:
  - {name: ab, dst_set: [a, b], action: direct}
  - {name: a-only, dst_set: [a], action: block}
  - {name: a-lit, dst_set: [a], dst: 192.0.2.0/24, action: block}
  - {name: any, action: direct}
  - {name: after, dst: 10.0.0.0/8, action: block}
`)
	w := strings.Join(c.Warnings(), "\n")
	for _, want := range []string{
		`rules[1] ("a-only"): never matches: every flow it matches is taken first by rules[0] ("ab")`,
		`rules[4] ("after"): never matches: every flow it matches is taken first by rules[3] ("any")`,
		`rule_sets[2] ("idle"): not used by any rule`,
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	if strings.Contains(w, `rules[2]`) {
		t.Errorf("rules[2] (a literal beside the set) is not covered by a set alone:\n%s", w)
	}
}
