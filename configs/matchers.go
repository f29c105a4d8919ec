package configs

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/socksgate/socksgate/geoip"
)

// The rule matchers of this file, besides those in config.go. Each takes a list, any element
// of which may match (OR), and a rule's matchers must all match (AND):
//
//   - user: the names of users that authenticated on an explicit port (listen.users: HTTP
//     proxy Basic auth, SOCKS5 username/password), compared exactly. A flow without an
//     authenticated user (captured, or on ports without listen.users) never matches.
//   - domain_keyword: words the flow's name contains (lowercased by Parse; the name is
//     compared lowercased, without a trailing dot).
//   - domain_regex: RE2 regular expressions (Go's regexp) the flow's name matches, compiled
//     once by Parse. They are matched as written, unanchored as mihomo's DOMAIN-REGEX is:
//     "google" matches www.google.com and googlemail.com; write ^ and $ to match the whole
//     name. The name is lowercased, without a trailing dot.
//   - dst_geoip, src_geoip: countries (ISO 3166-1 alpha-2 codes, either case) the
//     destination's or the source's address is in, by the database of geoip.path. An address
//     the database does not know is in no country. Like dst, dst_geoip is a matcher on
//     addresses: a flow with only a name is matched with the addresses the name resolves to.
//
// A rule with domain_keyword or domain_regex never matches a flow without a name, as one with
// domain does not.

// GeoIP configures the country database.
type GeoIP struct {
	// Path is a MaxMind-format database file (GeoLite2-Country or -City, GeoIP2, DB-IP's, a
	// Country.mmdb of Clash's, sing-box's geoip format). It is read whole into memory at start
	// and reloaded when the file changes (its directory is watched, so a rename into place is
	// seen); a file that does not load then leaves the version in force, with the error in the
	// log and in /metrics. Needed by dst_geoip and src_geoip rules; empty (default): none.
	Path string `yaml:"path"`
}

// Regexp is a domain_regex pattern, compiled when it is read. A pattern that does not compile
// is kept with its error, which Validate reports with the rule's name.
type Regexp struct {
	re  *regexp.Regexp
	src string
	err error
}

// CompileRegexp compiles s as a domain_regex pattern.
func CompileRegexp(s string) Regexp {
	re, err := regexp.Compile(s)
	return Regexp{re: re, src: s, err: err}
}

// Regexp is the compiled pattern; nil if it did not compile.
func (r Regexp) Regexp() *regexp.Regexp { return r.re }

// String is the pattern as written.
func (r Regexp) String() string { return r.src }

// UnmarshalText compiles the pattern; see Regexp.
func (r *Regexp) UnmarshalText(b []byte) error {
	*r = CompileRegexp(string(b))
	return nil
}

// MarshalText writes the pattern as written.
func (r Regexp) MarshalText() ([]byte, error) { return []byte(r.src), nil }

// UsesGeoIP reports whether a rule looks addresses up in the country database.
func (r *Rule) UsesGeoIP() bool { return len(r.DstGeoIP) > 0 || len(r.SrcGeoIP) > 0 }

// finishMatchers normalises the matchers of this file (see Config.finish).
func (r *Rule) finishMatchers() {
	emptyToNil(&r.User)
	emptyToNil(&r.DomainKeyword)
	emptyToNil(&r.DomainRegex)
	emptyToNil(&r.DstGeoIP)
	emptyToNil(&r.SrcGeoIP)
	for j, k := range r.DomainKeyword {
		r.DomainKeyword[j] = strings.ToLower(strings.TrimSpace(k))
	}
}

// validateMatchers checks the matchers of this file and geoip.
func (c *Config) validateMatchers(p *problems) {
	if c.GeoIP.Path != "" && !geoip.Built {
		p.add("geoip.path", "%v", geoip.ErrNotBuilt)
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		path := fmt.Sprintf("rules[%d]", i)
		for j, u := range r.User {
			if u == "" {
				p.add(fmt.Sprintf("%s.user[%d]", path, j), "empty user name")
			}
		}
		for j, k := range r.DomainKeyword {
			if k == "" || strings.ContainsAny(k, " \t\r\n") {
				p.add(fmt.Sprintf("%s.domain_keyword[%d]", path, j), "%q: want a part of a name, without spaces", k)
			}
		}
		for j, re := range r.DomainRegex {
			if re.err != nil {
				p.add(fmt.Sprintf("%s.domain_regex[%d]", path, j), "rule %q: invalid regular expression %q: %v",
					r.Name, cut(re.src, maxQuoted), clipMessage(strings.TrimPrefix(re.err.Error(), "error parsing regexp: ")))
			}
		}
		for _, m := range []struct {
			key   string
			codes []geoip.Code
		}{{"dst_geoip", r.DstGeoIP}, {"src_geoip", r.SrcGeoIP}} {
			switch {
			case len(m.codes) == 0:
			case !geoip.Built:
				p.add(path+"."+m.key, "%v", geoip.ErrNotBuilt)
			case c.GeoIP.Path == "":
				p.add(path+"."+m.key, "needs geoip.path, a MaxMind-format country database")
			}
		}
	}
}

// matcherWarnings are Warnings' findings about the matchers of this file.
func (c *Config) matcherWarnings() []string {
	var w []string
	add := func(format string, args ...any) { w = append(w, sprintf(format, args...)) }
	users := map[string]bool{}
	for _, u := range c.Listen.Users {
		users[u.Username] = true
	}
	geo := false
	for i := range c.Rules {
		r := &c.Rules[i]
		geo = geo || r.UsesGeoIP()
		if len(r.User) == 0 {
			continue
		}
		if len(c.Listen.Users) == 0 {
			add("rules[%d] (%q): never matches: user matches flows that authenticated on an explicit port, and listen.users is empty", i, r.Name)
			continue
		}
		for _, u := range r.User {
			if !users[u] {
				add("rules[%d] (%q): user %q is not in listen.users: no flow has that user", i, r.Name, u)
			}
		}
		if len(r.Inbound) > 0 && !slices.ContainsFunc(r.Inbound, func(in Inbound) bool { return in == InboundHTTP || in == InboundSOCKS }) {
			add("rules[%d] (%q): never matches: users authenticate only on the http and socks inbounds", i, r.Name)
		}
	}
	if c.GeoIP.Path != "" && !geo {
		add("geoip.path: no rule has dst_geoip or src_geoip; the database is loaded for nothing")
	}
	return w
}

// coversMatchers is covers for the matchers of this file.
func coversMatchers(a, b *Rule) bool {
	return coversList(a.User, b.User) &&
		coversKeywords(a.DomainKeyword, b.DomainKeyword) &&
		coversList(regexpSources(a.DomainRegex), regexpSources(b.DomainRegex)) &&
		coversList(a.DstGeoIP, b.DstGeoIP) &&
		coversList(a.SrcGeoIP, b.SrcGeoIP)
}

// coversKeywords: a name holding one of b's keywords holds one of a's when each of b's
// keywords contains one of a's.
func coversKeywords(a, b []string) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, kb := range b {
		if !slices.ContainsFunc(a, func(ka string) bool { return strings.Contains(kb, ka) }) {
			return false
		}
	}
	return true
}

func regexpSources(rs []Regexp) []string {
	if len(rs) == 0 {
		return nil
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.src
	}
	return out
}

// matchersKey tells apart, for the shadow index, rules whose matchers of this file differ.
func (r *Rule) matchersKey() string {
	if len(r.User)+len(r.DomainKeyword)+len(r.DomainRegex)+len(r.DstGeoIP)+len(r.SrcGeoIP) == 0 {
		return ""
	}
	return fmt.Sprint(sortedSet(r.User), sortedSet(r.DomainKeyword), sortedSet(regexpSources(r.DomainRegex)),
		sortedSet(codeStrings(r.DstGeoIP)), sortedSet(codeStrings(r.SrcGeoIP)))
}

// codeStrings writes country codes as strings (sorting them as such keeps a sort of uint16
// out of the binary).
func codeStrings(cs []geoip.Code) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}
