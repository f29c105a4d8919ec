// Package domain matches a flow's name against a rule's domain pattern. It is configs'
// MatchDomain, in a package of its own for the per-flow callers: cross.mk compiles configs
// without inlining (it runs once at start), which would take the inlining of strings' helpers
// out of a match that runs for every rule a flow is checked against.
package domain

import "strings"

// Match reports whether a flow's name matches a normalised rule domain pattern (as stored in
// configs.Rule.Domain by configs.Parse): "example.com" matches exactly that name;
// ".example.com" matches example.com and every name under it. The name is compared
// case-insensitively, a trailing dot ignored.
func Match(pattern, name string) bool {
	if name == "" || pattern == "" {
		return false
	}
	name = strings.TrimSuffix(name, ".")
	pattern = strings.TrimPrefix(pattern, "*")
	if pattern == "" {
		return false
	}
	if pattern[0] != '.' {
		return strings.EqualFold(name, pattern)
	}
	base := pattern[1:]
	if len(name) == len(base) {
		return strings.EqualFold(name, base)
	}
	return len(name) > len(pattern) && strings.EqualFold(name[len(name)-len(pattern):], pattern)
}
