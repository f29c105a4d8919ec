package configs

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// RuleSet is one list of domains or address prefixes kept in a file of its own, named by
// rules (domain_set, dst_set, src_set). The file is read by the ruleset package at start
// and again whenever it changes; the configuration only says where it is and what it holds.
type RuleSet struct {
	// Name is how rules refer to the set; unique among rule_sets.
	Name string `yaml:"name"`
	// Kind is SetDomain (names, for domain_set) or SetCIDR (prefixes, for dst_set and
	// src_set). Required.
	Kind SetKind `yaml:"kind"`
	// Path is the file, an absolute path. A missing or unreadable file is an error of
	// `socksgate check`; at run time the set is empty until the file can be read.
	Path string `yaml:"path"`
	// Format is how the file is written: SetFormatAuto (default: told from its lines),
	// SetFormatList, SetFormatDnsmasq or SetFormatClash.
	Format SetFormat `yaml:"format"`
}

// SetKind is rule_sets[].kind. The zero value is "not set".
type SetKind uint8

const (
	SetDomain SetKind = iota + 1 // domain names
	SetCIDR                      // address prefixes
)

var setKinds = symbols[SetKind]{{SetDomain, "domain"}, {SetCIDR, "cidr"}}

func (v SetKind) String() string                { return setKinds.name(v, "kind") }
func (v SetKind) MarshalText() ([]byte, error)  { return setKinds.marshal(v, "kind") }
func (v *SetKind) UnmarshalText(b []byte) error { return unmarshal(setKinds, v, b) }

// SetFormat is rule_sets[].format. The zero value is SetFormatAuto.
type SetFormat uint8

const (
	// SetFormatAuto tells the format from the file: a `payload:` line makes it Clash YAML,
	// dnsmasq server=/ipset=/nftset=/address= lines make it dnsmasq, anything else a list.
	SetFormatAuto SetFormat = iota
	// SetFormatList is one entry a line, # comments: names (with v2fly's full:, domain:,
	// keyword:, regexp: prefixes and Clash's +. and .), hosts-file lines, or prefixes.
	SetFormatList
	// SetFormatDnsmasq reads the names of server=/a/b/…, ipset=/…/, nftset=/…/ and
	// address=/…/ lines (dnsmasq-china-list and its kin).
	SetFormatDnsmasq
	// SetFormatClash is a Clash rule provider: YAML with a payload list (domain, ipcidr or
	// classical entries), or the same entries one a line.
	SetFormatClash
)

var setFormats = symbols[SetFormat]{{SetFormatAuto, "auto"}, {SetFormatList, "list"}, {SetFormatDnsmasq, "dnsmasq"}, {SetFormatClash, "clash"}}

func (v SetFormat) String() string                { return setFormats.name(v, "format") }
func (v SetFormat) MarshalText() ([]byte, error)  { return setFormats.marshal(v, "format") }
func (v *SetFormat) UnmarshalText(b []byte) error { return unmarshal(setFormats, v, b) }

// RuleSet returns the rule set named name, or nil.
func (c *Config) RuleSet(name string) *RuleSet {
	for i := range c.RuleSets {
		if c.RuleSets[i].Name == name {
			return &c.RuleSets[i]
		}
	}
	return nil
}

// HasSets reports whether the rule names any rule set.
func (r *Rule) HasSets() bool {
	return len(r.DomainSet) > 0 || len(r.DstSet) > 0 || len(r.SrcSet) > 0
}

// finishRuleSets trims the names (of the sets and of the references to them).
func (c *Config) finishRuleSets() {
	emptyToNil(&c.RuleSets)
	for i := range c.RuleSets {
		c.RuleSets[i].Name = strings.TrimSpace(c.RuleSets[i].Name)
		c.RuleSets[i].Path = strings.TrimSpace(c.RuleSets[i].Path)
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		for _, l := range []*[]string{&r.DomainSet, &r.DstSet, &r.SrcSet} {
			emptyToNil(l)
			for j := range *l {
				(*l)[j] = strings.TrimSpace((*l)[j])
			}
		}
	}
}

// validateRuleSets checks rule_sets and every rule's references to them: each name known,
// of the kind the matcher takes.
func (c *Config) validateRuleSets(p *problems) {
	seen := map[string]int{}
	for i := range c.RuleSets {
		s := &c.RuleSets[i]
		path := fmt.Sprintf("rule_sets[%d]", i)
		checkName(p, path+".name", s.Name)
		if j, dup := seen[s.Name]; dup && s.Name != "" {
			p.add(path+".name", "%q is already the name of rule_sets[%d]", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		if s.Kind == 0 {
			p.add(path+".kind", "required (domain or cidr)")
		} else {
			p.enum(path+".kind", s.Kind)
		}
		p.enum(path+".format", s.Format)
		if s.Format == SetFormatDnsmasq && s.Kind == SetCIDR {
			p.add(path+".format", "dnsmasq lines hold names: a dnsmasq file makes a domain set (kind: domain)")
		}
		switch {
		case s.Path == "":
			p.add(path+".path", "required")
		case !filepath.IsAbs(s.Path):
			p.add(path+".path", "%q: must be an absolute path (socksgate's working directory is not the config's)", s.Path)
		}
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		for _, m := range []struct {
			key   string
			names []string
			kind  SetKind
		}{{"domain_set", r.DomainSet, SetDomain}, {"dst_set", r.DstSet, SetCIDR}, {"src_set", r.SrcSet, SetCIDR}} {
			for j, name := range m.names {
				path := fmt.Sprintf("rules[%d].%s[%d]", i, m.key, j)
				k, ok := seen[name]
				switch {
				case name == "":
					p.add(path, "rule %q: empty set name", r.Name)
				case !ok:
					p.add(path, "rule %q: no rule set named %q (rule_sets: %s)", r.Name, name, setNames(c.RuleSets))
				case c.RuleSets[k].Kind != 0 && c.RuleSets[k].Kind != m.kind:
					p.add(path, "rule %q: %q is a %s set; %s takes %s sets", r.Name, name, c.RuleSets[k].Kind, m.key, m.kind)
				}
				if slices.Index(m.names, name) < j {
					p.add(path, "rule %q: %q is listed twice", r.Name, name)
				}
			}
		}
	}
}

func setNames(sets []RuleSet) string {
	if len(sets) == 0 {
		return "none"
	}
	names := make([]string, len(sets))
	for i := range sets {
		names[i] = clip(sets[i].Name)
	}
	return strings.Join(names, ", ")
}

// ruleSetWarnings are the findings about rule sets: sets no rule names.
func (c *Config) ruleSetWarnings(add func(string, ...any)) {
	used := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		for _, l := range [][]string{r.DomainSet, r.DstSet, r.SrcSet} {
			for _, n := range l {
				used[n] = true
			}
		}
	}
	for i := range c.RuleSets {
		if !used[c.RuleSets[i].Name] {
			add("rule_sets[%d] (%q): not used by any rule (it is still loaded and watched)", i, c.RuleSets[i].Name)
		}
	}
}

// coversWithSets is covers for a matcher made of literal values and rule sets (dst and
// dst_set, src and src_set, domain and domain_set), which matches a flow when any of either
// does: a covers b when a has no such matcher, or when b has one and each of b's literals is
// covered by a's literals (lit) and each of b's sets is one of a's. A set's contents are not
// looked into (they change while socksgate runs), so a set never covers a literal.
func coversWithSets[T any](aLit, bLit []T, aSets, bSets []string, lit func(a, b []T) bool) bool {
	if len(aLit) == 0 && len(aSets) == 0 {
		return true
	}
	if len(bLit) == 0 && len(bSets) == 0 {
		return false
	}
	if len(bLit) > 0 && (len(aLit) == 0 || !lit(aLit, bLit)) {
		return false
	}
	for _, s := range bSets {
		if !slices.Contains(aSets, s) {
			return false
		}
	}
	return true
}
