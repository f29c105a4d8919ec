package ruleset

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/socksgate/socksgate/configs"
)

// Stats says how a file was read.
type Stats struct {
	Format   configs.SetFormat // the format read (auto resolved to the one found)
	Entries  int               // entries taken: names, keywords, expressions or prefixes
	Bad      int               // lines that are not an entry of the set's kind, skipped
	BadLines []int             // the first MaxBadLines of them, 1-based
	// Other counts typed entries that are not for this set: a Clash classical list's
	// IP-CIDR lines in a domain set and DOMAIN lines in a cidr set, its rule types that are
	// no list entry (PROCESS-NAME, GEOIP), v2fly's include: lines, dnsmasq options other
	// than server, ipset, nftset, address and local. Skipped without a warning.
	Other int
}

// MaxBadLines is how many bad line numbers Stats keeps.
const MaxBadLines = 5

// BadSummary describes the bad lines for a log or `check` ("" when there are none).
func (s Stats) BadSummary() string {
	if s.Bad == 0 {
		return ""
	}
	nums := make([]string, len(s.BadLines))
	for i, n := range s.BadLines {
		nums[i] = strconv.Itoa(n)
	}
	more := ""
	if s.Bad > len(s.BadLines) {
		more = ", …"
	}
	return fmt.Sprintf("%d bad lines skipped (line %s%s)", s.Bad, strings.Join(nums, ", "), more)
}

// Set is one rule set's contents as read from its file: Domains for a domain set, CIDRs for
// a cidr set (the other is nil).
type Set struct {
	Kind    configs.SetKind
	Domains *Domains
	CIDRs   *CIDRs
	Stats   Stats
}

// Len is the number of entries.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	if s.Kind == configs.SetDomain {
		return s.Domains.Len()
	}
	return s.CIDRs.Len()
}

// empty is the set of kind with nothing in it.
func empty(kind configs.SetKind) *Set {
	if kind == configs.SetDomain {
		return &Set{Kind: kind, Domains: (&domainBuilder{}).build()}
	}
	return &Set{Kind: kind, CIDRs: &CIDRs{}}
}

// maxLine bounds a line; a longer one is a bad line.
const maxLine = 64 << 10

var utf8BOM = []byte("\ufeff")

// Parse reads a set of kind written in format from r; sizeHint, the file's size when known,
// sizes the buffers. Lines that are no entry are skipped and counted in Stats; the whole
// file is refused (an error) when it cannot be read, or when it has bad lines and no entry
// at all (the wrong kind or format, most likely). An empty file is an empty set.
func Parse(r io.Reader, kind configs.SetKind, format configs.SetFormat, sizeHint int64) (*Set, error) {
	p := parser{kind: kind, format: format}
	if kind == configs.SetDomain {
		if sizeHint > 0 && sizeHint < maxBlob {
			p.dom.blob = make([]byte, 0, sizeHint)
		}
	} else if kind != configs.SetCIDR {
		return nil, fmt.Errorf("unknown set kind %v", kind)
	}
	br := bufio.NewReaderSize(r, maxLine)
	for no := 1; ; no++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			p.bad(no)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			line = nil
		}
		if no == 1 {
			line = bytes.TrimPrefix(line, utf8BOM) // a Windows editor's byte order mark
		}
		if len(line) > 0 {
			p.line(no, line)
		}
		if err != nil {
			if err == io.EOF {
				break
			}
			return nil, err
		}
	}
	if p.stats.Entries == 0 && (p.stats.Bad > 0 || p.stats.Other > 0) {
		why := p.stats.BadSummary()
		if why == "" {
			why = fmt.Sprintf("%d entries of other kinds", p.stats.Other)
		}
		return nil, fmt.Errorf("no %s entry in the file (%s): is kind or format wrong?", kind, why)
	}
	if p.format == configs.SetFormatAuto {
		p.format = configs.SetFormatList
	}
	s := &Set{Kind: kind, Stats: p.stats}
	s.Stats.Format = p.format
	if kind == configs.SetDomain {
		s.Domains = p.dom.build()
	} else {
		s.CIDRs = p.cidr.build()
	}
	return s, nil
}

type parser struct {
	kind    configs.SetKind
	format  configs.SetFormat // SetFormatAuto until the first entry line says
	payload bool              // Clash YAML: inside the payload list
	stats   Stats
	dom     domainBuilder
	cidr    cidrBuilder
}

func (p *parser) bad(no int) {
	p.stats.Bad++
	if len(p.stats.BadLines) < MaxBadLines {
		p.stats.BadLines = append(p.stats.BadLines, no)
	}
}

func (p *parser) line(no int, raw []byte) {
	b := bytes.TrimSpace(raw)
	if len(b) == 0 || b[0] == '#' {
		return
	}
	s := string(b) // one short string a line; entries are copied into the blob
	if p.format == configs.SetFormatAuto {
		switch {
		case strings.HasPrefix(s, "payload:"):
			p.format = configs.SetFormatClash
		case dnsmasqLine(s):
			p.format = configs.SetFormatDnsmasq
		default:
			p.format = configs.SetFormatList
		}
	}
	var ok bool
	switch p.format {
	case configs.SetFormatDnsmasq:
		ok = p.dnsmasq(s)
	case configs.SetFormatClash:
		ok = p.clash(raw, s)
	default:
		ok = p.entry(stripComment(s), kindBoth)
	}
	if !ok {
		p.bad(no)
	}
}

// stripComment cuts a comment that follows an entry after white space.
func stripComment(s string) string {
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "\t#"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

var dnsmasqKeys = []string{"server=/", "ipset=/", "nftset=/", "address=/", "local=/"}

func dnsmasqLine(s string) bool {
	for _, k := range dnsmasqKeys {
		if strings.HasPrefix(s, k) {
			return true
		}
	}
	return false
}

// dnsmasq reads server=/a/b/…/VALUE and its kin: the names between the first and the last
// slash, each with every name under it (what dnsmasq matches). Other options are Other.
func (p *parser) dnsmasq(s string) bool {
	if !dnsmasqLine(s) {
		p.stats.Other++
		return true
	}
	s = s[strings.IndexByte(s, '/')+1:]
	end := strings.LastIndexByte(s, '/')
	if end < 0 {
		return false
	}
	ok := false
	for _, n := range strings.Split(s[:end], "/") {
		switch {
		case n == "" || n == "#":
			// "#" is every name not matched otherwise: no list entry.
			p.stats.Other++
			ok = true
		case p.name(n, kindBoth):
			ok = true
		}
	}
	return ok
}

// clash reads a Clash rule provider: the payload list of its YAML (block style, or a flow
// list on the payload line), or without a payload line the entries one a line (its text
// format). A bare name there is that name only, as Clash reads it.
func (p *parser) clash(raw []byte, s string) bool {
	if v, ok := strings.CutPrefix(s, "payload:"); ok {
		p.payload = true
		v = stripComment(v)
		if v == "" {
			return true
		}
		var items []string
		if yaml.Unmarshal([]byte(v), &items) != nil || len(items) == 0 {
			return false
		}
		good := false
		for _, it := range items {
			if p.entry(strings.TrimSpace(it), kindExact) {
				good = true
			}
		}
		return good
	}
	if item, ok := strings.CutPrefix(s, "-"); ok && (p.payload || raw[0] == ' ' || raw[0] == '-') {
		v, ok := yamlScalar(strings.TrimSpace(item))
		return ok && p.entry(v, kindExact)
	}
	if p.payload && raw[0] != ' ' && raw[0] != '\t' && yamlKey(s) {
		p.payload = false // another top-level key
		return true
	}
	if !p.payload && yamlKey(s) && !strings.Contains(s, ",") && raw[0] != ' ' {
		return true // a top-level key before the payload
	}
	return p.entry(stripComment(s), kindExact)
}

// yamlKey reports whether s starts as a YAML mapping key does ("key:" then a space or the
// end), which an IPv6 prefix of Clash's text format ("2001:db8::/32") does not.
func yamlKey(s string) bool {
	i := strings.IndexByte(s, ':')
	return i > 0 && (i == len(s)-1 || s[i+1] == ' ' || s[i+1] == '\t')
}

// yamlScalar unquotes a plain, single- or double-quoted YAML scalar written on one line.
func yamlScalar(v string) (string, bool) {
	if v == "" {
		return "", false
	}
	switch v[0] {
	case '\'':
		end := strings.LastIndexByte(v, '\'')
		if end == 0 {
			return "", false
		}
		return strings.ReplaceAll(v[1:end], "''", "'"), true
	case '"':
		end := strings.LastIndexByte(v, '"')
		if end == 0 {
			return "", false
		}
		u, err := strconv.Unquote(v[:end+1])
		if err != nil {
			return v[1:end], true
		}
		return u, true
	}
	return stripComment(v), true
}

// entry reads one entry of the set's kind; bare is the kind bits of a name without a prefix
// (the name and every name under it in a list, the name only in Clash's lists).
func (p *parser) entry(s string, bare uint32) bool {
	if s == "" {
		return false
	}
	if typ, rest, ok := strings.Cut(s, ","); ok && classicalType(typ) {
		return p.classical(typ, rest)
	}
	if p.kind == configs.SetCIDR {
		return p.prefix(firstField(s))
	}
	if f := strings.Fields(s); len(f) >= 2 {
		if _, err := netip.ParseAddr(f[0]); err == nil {
			// A hosts-file line: its names, each exactly.
			ok := false
			for _, n := range f[1:] {
				if strings.HasPrefix(n, "#") {
					break
				}
				if p.name(n, kindExact) {
					ok = true
				}
			}
			return ok
		}
	}
	s = firstField(s) // v2fly's attributes (" @cn") follow the entry, a regexp: one too
	if v, ok := strings.CutPrefix(s, "regexp:"); ok {
		return p.regexp(v)
	}
	if v, ok := strings.CutPrefix(s, "full:"); ok {
		return p.name(v, kindExact)
	}
	if v, ok := strings.CutPrefix(s, "domain:"); ok {
		return p.name(v, kindBoth)
	}
	if v, ok := strings.CutPrefix(s, "keyword:"); ok {
		return p.keyword(v)
	}
	if strings.HasPrefix(s, "include:") {
		p.stats.Other++ // another file of v2fly's collection: not followed
		return true
	}
	switch {
	case strings.HasPrefix(s, "+."):
		return p.name(s[2:], kindBoth)
	case strings.HasPrefix(s, "*."):
		return p.name(s[2:], kindUnder)
	case strings.HasPrefix(s, "."):
		return p.name(s[1:], kindUnder)
	}
	return p.name(s, bare)
}

func firstField(s string) string {
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		return s[:i]
	}
	return s
}

// classicalType reports whether typ is a Clash classical rule type (upper case, digits, '-').
func classicalType(typ string) bool {
	if typ == "" {
		return false
	}
	for i := 0; i < len(typ); i++ {
		c := typ[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// classical reads a Clash classical payload line: TYPE,VALUE[,OPTIONS].
func (p *parser) classical(typ, rest string) bool {
	v, _, _ := strings.Cut(rest, ",")
	v = strings.TrimSpace(v)
	domain := p.kind == configs.SetDomain
	switch typ {
	case "DOMAIN":
		if domain {
			return p.name(v, kindExact)
		}
	case "DOMAIN-SUFFIX":
		if domain {
			return p.name(strings.TrimPrefix(v, "."), kindBoth)
		}
	case "DOMAIN-KEYWORD":
		if domain {
			return p.keyword(v)
		}
	case "DOMAIN-REGEX":
		if domain {
			return p.regexp(v)
		}
	case "IP-CIDR", "IP-CIDR6":
		if !domain {
			return p.prefix(v)
		}
	}
	p.stats.Other++
	return true
}

// name adds a domain name with its kind bits, when it is one.
func (p *parser) name(n string, kind uint32) bool {
	if p.kind != configs.SetDomain {
		return false
	}
	n = strings.ToLower(strings.TrimSuffix(n, "."))
	if !validName(n) {
		return false
	}
	if !p.dom.addName(n, kind) {
		return false
	}
	p.stats.Entries++
	return true
}

func (p *parser) keyword(k string) bool {
	k = strings.ToLower(strings.TrimSpace(k))
	if p.kind != configs.SetDomain || k == "" {
		return false
	}
	p.dom.addKeyword(k)
	p.stats.Entries++
	return true
}

func (p *parser) regexp(expr string) bool {
	expr = strings.TrimSpace(expr)
	if p.kind != configs.SetDomain || expr == "" {
		return false
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return false
	}
	p.dom.regexps = append(p.dom.regexps, re)
	p.stats.Entries++
	return true
}

// prefix adds a prefix, or an address as the prefix of itself alone.
func (p *parser) prefix(s string) bool {
	if p.kind != configs.SetCIDR {
		return false
	}
	pr, err := netip.ParsePrefix(s)
	if err != nil {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return false
		}
		pr = netip.PrefixFrom(a, a.BitLen())
	}
	p.cidr.add(pr)
	p.stats.Entries++
	return true
}

// validName reports whether n (lowercase) is a DNS name a flow can have: letters, digits,
// '-' and '_' in dot-separated labels of 1-63 bytes, at most 253 bytes, the last label not
// all digits (that is an address).
func validName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	label, digits := 0, true
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label, digits = 0, true
			continue
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', c == '-', c == '_':
			digits = false
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0 && !digits
}
