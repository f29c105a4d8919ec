package dns

import (
	"fmt"
	"strings"
)

// DomainMatcher matches canonical names against patterns in mihomo's fake-ip-filter syntax:
//
//	example.com      that name only
//	+.example.com    that name and every name below it
//	.example.com     every name below it, not the name itself
//	*.example.com    one label below it
//	time.*.com       '*' stands for exactly one label, anywhere
//
// The zero DomainMatcher matches nothing.
type DomainMatcher struct {
	patterns []domainPattern
}

type domainPattern struct {
	labels []string // reversed: "com", "*", "time"
	below  int      // 0: exact; 1: one or more labels may precede; 2: zero or more
}

// NewDomainMatcher compiles patterns; an empty or malformed pattern is an error.
func NewDomainMatcher(patterns []string) (*DomainMatcher, error) {
	m := &DomainMatcher{}
	for _, p := range patterns {
		dp, err := compilePattern(p)
		if err != nil {
			return nil, err
		}
		m.patterns = append(m.patterns, dp)
	}
	return m, nil
}

func compilePattern(p string) (domainPattern, error) {
	s := CanonicalName(strings.TrimSpace(p))
	var dp domainPattern
	switch {
	case strings.HasPrefix(s, "+."):
		dp.below, s = 2, s[2:]
	case strings.HasPrefix(s, "."):
		dp.below, s = 1, s[1:]
	}
	if s == "" {
		return dp, fmt.Errorf("domain pattern %q: empty", p)
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || (l != "*" && checkHostname(l) != nil) {
			return dp, fmt.Errorf("domain pattern %q: bad label %q", p, l)
		}
	}
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	dp.labels = labels
	return dp, nil
}

// Match reports whether the canonical name matches any pattern.
func (m *DomainMatcher) Match(name string) bool {
	if m == nil || len(m.patterns) == 0 || name == "" {
		return false
	}
	labels := strings.Split(name, ".")
	for _, p := range m.patterns {
		if p.match(labels) {
			return true
		}
	}
	return false
}

func (p domainPattern) match(labels []string) bool {
	n := len(labels)
	extra := n - len(p.labels)
	switch {
	case extra < 0, extra == 0 && p.below == 1, extra > 0 && p.below == 0:
		return false
	}
	for i, pl := range p.labels {
		if pl != "*" && pl != labels[n-1-i] {
			return false
		}
	}
	return true
}
