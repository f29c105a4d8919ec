package configs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/socksgate/socksgate/internal/domain"
)

// maxQuoted is how many bytes of a value a message quotes at most: a value
// of 20 MB is an error, not something to echo.
const maxQuoted = 64

// clip returns s, or its first maxQuoted bytes (cut on a character
// boundary) followed by "…" when it is longer.
func clip(s string) string { return cut(s, maxQuoted) }

// cut returns s, or its first n bytes (cut on a character boundary)
// followed by "…" when it is longer.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// clipped is a string argument of a message: quoted (%q), it shows at most
// maxQuoted bytes; with other verbs it is printed whole.
type clipped string

// Format implements fmt.Formatter.
func (s clipped) Format(f fmt.State, verb rune) {
	v := string(s)
	if verb == 'q' {
		v = clip(v)
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), v)
}

// clipArgs makes every string argument clipped. Every message of this
// package quotes the values it echoes with %q, and formats them through
// errorf, sprintf or an add method, which call clipArgs.
func clipArgs(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		if s, ok := a.(string); ok {
			a = clipped(s)
		}
		out[i] = a
	}
	return out
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, clipArgs(args)...) }

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, clipArgs(args)...) }

// Duration is a time.Duration written in YAML as a Go duration string
// ("300ms", "10s", "1h30m"). The bare number 0 is accepted; other bare
// numbers are rejected because their unit would be a guess.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// ParseDuration parses a non-negative Go duration string, or "0".
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, errorf("duration %q needs a unit, e.g. %q", s, s+"s")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errorf("invalid duration %q (want e.g. \"300ms\", \"10s\", \"2h\")", s)
	}
	if d < 0 {
		return 0, errorf("duration %q must not be negative", s)
	}
	return Duration(d), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("expected a duration such as \"10s\"")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// PortRange is an inclusive range of ports, From <= To, both >= 1. In YAML:
// 443, "443" or "1000-2000".
type PortRange struct {
	From, To uint16
}

// ParsePortRange parses "443" or "1000-2000".
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	from, to, isRange := strings.Cut(s, "-")
	if !isRange {
		to = from
	}
	a, err := parsePort(from, s)
	if err != nil {
		return PortRange{}, err
	}
	b, err := parsePort(to, s)
	if err != nil {
		return PortRange{}, err
	}
	if a > b {
		return PortRange{}, errorf("port range %q is reversed", s)
	}
	return PortRange{From: a, To: b}, nil
}

func parsePort(p, whole string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
	if err != nil {
		return 0, errorf("invalid port or port range %q (want 443 or \"1000-2000\")", whole)
	}
	if n == 0 {
		return 0, errorf("port 0 in %q is not a port", whole)
	}
	return uint16(n), nil
}

// Contains reports whether p is in r. Per-flow code compares r.From and r.To itself: cross.mk
// compiles configs without inlining, so this is a call there.
func (r PortRange) Contains(p uint16) bool { return r.From <= p && p <= r.To }

// String formats r as "443" or "1000-2000".
func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (r *PortRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("expected a port or port range such as 443 or \"1000-2000\"")
	}
	v, err := ParsePortRange(n.Value)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (r PortRange) MarshalYAML() (any, error) {
	if r.From == r.To {
		return int(r.From), nil
	}
	return r.String(), nil
}

// AddrList is a list of listen addresses. In YAML it is a list or a single
// string; an empty string or an empty list is an explicit "none" (non-nil,
// empty), while an absent or null key keeps the default.
type AddrList []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *AddrList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if strings.TrimSpace(n.Value) == "" {
			*l = AddrList{}
		} else {
			*l = AddrList{n.Value}
		}
		return nil
	case yaml.SequenceNode:
		out := make(AddrList, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind == yaml.AliasNode {
				e = e.Alias
			}
			if e == nil || e.Kind != yaml.ScalarNode {
				return errors.New("expected a list of host:port strings")
			}
			out = append(out, e.Value)
		}
		*l = out
		return nil
	}
	return errors.New("expected a host:port string or a list of them")
}

// Secret is a string that formats as "xxxxx" so it cannot reach a log by
// accident; use string(s) for the value.
type Secret string

// String implements fmt.Stringer with the value redacted.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "xxxxx"
}

// GoString implements fmt.GoStringer with the value redacted.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalYAML implements yaml.Marshaler with the value redacted.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// ListenAddr is a parsed listen address.
type ListenAddr struct {
	// Host is an IP literal, a name, "" (every address) or ListenLAN.
	Host string
	// Port is the port; 0 picks a free one (tests).
	Port uint16
	// LAN is true when Host is the keyword "lan": listen on each address of
	// lan.interfaces (resolved by the daemon at runtime).
	LAN bool
}

// ParseListenAddr parses a listen address: "127.0.0.1:8080", "[::1]:1080",
// "localhost:8080", ":8080" (every address) or "lan:8080".
func ParseListenAddr(s string) (ListenAddr, error) {
	host, port, err := splitHostPort(s, true)
	if err != nil {
		return ListenAddr{}, err
	}
	return ListenAddr{Host: host, Port: port, LAN: host == ListenLAN}, nil
}

// AllAddresses reports whether a listens on every local address.
func (a ListenAddr) AllAddresses() bool {
	if a.Host == "" {
		return true
	}
	ip, err := netip.ParseAddr(a.Host)
	return err == nil && ip.IsUnspecified()
}

// splitHostPort checks host:port. The host may be empty only when
// emptyHostOK; it is an IP literal or a DNS name.
func splitHostPort(s string, emptyHostOK bool) (string, uint16, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errorf("%q is not host:port", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, errorf("%q: invalid port %q", s, port)
	}
	switch {
	case host == "":
		if !emptyHostOK {
			return "", 0, errorf("%q: missing host", s)
		}
	case strings.Contains(host, ":"):
		if _, err := netip.ParseAddr(host); err != nil {
			return "", 0, errorf("%q: invalid IPv6 address %q", s, host)
		}
	default:
		if _, err := netip.ParseAddr(host); err != nil {
			if numericHost(host) {
				return "", 0, errorf("%q: invalid IPv4 address %q", s, host)
			}
			if !validHostname(host) {
				return "", 0, errorf("%q: invalid host %q", s, host)
			}
		}
	}
	return host, uint16(n), nil
}

// numericHost reports whether h, which is not an IP literal, can only have
// been meant as one: its last label is all digits ("999.1.1.1", "10.1"). No
// top-level domain is numeric, so such a name would be looked up in vain.
func numericHost(h string) bool {
	h = strings.TrimSuffix(h, ".")
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" {
		return false
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// validHost reports whether h is an IP literal or a DNS name that can exist.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return validHostname(h) && !numericHost(h)
}

// validHostname reports whether h is a plausible DNS name (letters, digits,
// '-', '_', dot-separated non-empty labels, at most 253 bytes).
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// normalizeDomain lowercases a rule's domain pattern and rewrites the suffix
// forms ("*.example.com", ".example.com") to ".example.com".
func normalizeDomain(p string) (string, error) {
	d := strings.ToLower(strings.TrimSpace(p))
	suffix := false
	switch {
	case strings.HasPrefix(d, "*."):
		suffix, d = true, d[2:]
	case strings.HasPrefix(d, "."):
		suffix, d = true, d[1:]
	}
	d = strings.TrimSuffix(d, ".")
	if !validHostname(d) {
		return "", errorf("invalid domain pattern %q (want \"example.com\", \".example.com\" or \"*.example.com\")", p)
	}
	if suffix {
		return "." + d, nil
	}
	return d, nil
}

// MatchDomain reports whether a flow's name matches a normalised rule domain
// pattern (as stored in Rule.Domain by Parse): "example.com" matches exactly
// that name; ".example.com" matches example.com and every name under it.
// The name is compared case-insensitively, a trailing dot ignored. Per-flow code
// calls domain.Match, the same function, directly (see the domain package).
func MatchDomain(pattern, name string) bool { return domain.Match(pattern, name) }
