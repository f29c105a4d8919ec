package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Proto is how a resolver is spoken to.
type Proto uint8

const (
	// ProtoDNS is plain DNS written without a scheme ("1.2.3.4"): UDP, retried over TCP when the
	// answer is truncated, or TCP alone when the way out carries no UDP.
	ProtoDNS   Proto = iota
	ProtoUDP         // udp://: UDP, retried over TCP when truncated
	ProtoTCP         // tcp://: TCP only
	ProtoTLS         // tls://: DNS over TLS (RFC 7858)
	ProtoHTTPS       // https://: DNS over HTTPS (RFC 8484)
)

func (p Proto) String() string {
	switch p {
	case ProtoDNS:
		return "dns"
	case ProtoUDP:
		return "udp"
	case ProtoTCP:
		return "tcp"
	case ProtoTLS:
		return "tls"
	case ProtoHTTPS:
		return "https"
	}
	return "unknown"
}

// Endpoint is a resolver as configured, parsed once by ParseEndpoint.
type Endpoint struct {
	Proto Proto
	// Addr is the address to connect to. Plain DNS, udp:// and tcp:// always have one; tls://
	// and https:// have one when the server was given by address (tls://IP, https://IP/...) or,
	// for https://, pinned after '#' so that no lookup of the host is made.
	Addr netip.AddrPort
	// Host is the name to connect to when Addr is not set (tls://dns.example, https://dns.example/…):
	// the dialer resolves it (a proxy resolves it on its side).
	Host string
	Port uint16
	// ServerName is the name the TLS certificate must carry (tls://, https://).
	ServerName string
	// URL is the DoH URL, without the fragment.
	URL string
}

// Default ports.
const (
	portDNS   = 53
	portTLS   = 853
	portHTTPS = 443
)

// ParseEndpoint parses a resolver: "1.2.3.4", "1.2.3.4:53", "[::1]:53", "udp://1.2.3.4:53",
// "tcp://[2001:db8::1]", "tls://1.1.1.1:853#cloudflare-dns.com", "tls://dns.quad9.net",
// "https://dns.example/dns-query", "https://dns.example/dns-query#192.0.2.1" (connect to that
// address, no lookup of the host). Plain DNS, UDP and TCP servers are IP addresses: a name
// would need a resolver to find the resolver.
func ParseEndpoint(s string) (Endpoint, error) {
	e, err := parseEndpoint(strings.TrimSpace(s))
	if err != nil {
		return Endpoint{}, fmt.Errorf("dns server %q: %w", s, err)
	}
	return e, nil
}

func parseEndpoint(s string) (Endpoint, error) {
	if s == "" {
		return Endpoint{}, errors.New("empty")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		ap, err := parseIPPort(s, portDNS)
		return Endpoint{Proto: ProtoDNS, Addr: ap}, err
	}
	switch strings.ToLower(scheme) {
	case "udp", "tcp":
		if strings.ContainsAny(rest, "/?#@") {
			return Endpoint{}, errors.New("want udp:// or tcp:// followed by IP[:port] only")
		}
		ap, err := parseIPPort(rest, portDNS)
		p := ProtoUDP
		if strings.EqualFold(scheme, "tcp") {
			p = ProtoTCP
		}
		return Endpoint{Proto: p, Addr: ap}, err
	case "tls":
		hostport, name, _ := strings.Cut(rest, "#")
		if strings.ContainsAny(hostport, "/?@") {
			return Endpoint{}, errors.New("want tls://HOST[:port][#servername]")
		}
		e := Endpoint{Proto: ProtoTLS}
		host, port, err := splitHostPort(hostport, portTLS)
		if err != nil {
			return Endpoint{}, err
		}
		e.Port = port
		if ip, err := netip.ParseAddr(host); err == nil {
			e.Addr = netip.AddrPortFrom(ip, port)
			e.ServerName = ip.WithZone("").String()
		} else if err := checkHostname(host); err != nil {
			return Endpoint{}, err
		} else {
			e.Host, e.ServerName = strings.ToLower(host), strings.ToLower(host)
		}
		if name != "" {
			if err := checkHostname(name); err != nil {
				return Endpoint{}, fmt.Errorf("server name: %w", err)
			}
			e.ServerName = strings.ToLower(name)
		}
		return e, nil
	case "https":
		u, err := url.Parse(s)
		if err != nil {
			return Endpoint{}, err
		}
		if u.User != nil {
			return Endpoint{}, errors.New("credentials in a DoH URL are not supported")
		}
		if u.Host == "" {
			return Endpoint{}, errors.New("no host")
		}
		host, port, err := splitHostPort(u.Host, portHTTPS)
		if err != nil {
			return Endpoint{}, err
		}
		e := Endpoint{Proto: ProtoHTTPS, Port: port}
		if ip, err := netip.ParseAddr(host); err == nil {
			e.Addr = netip.AddrPortFrom(ip, port)
			e.ServerName = ip.WithZone("").String()
		} else if err := checkHostname(host); err != nil {
			return Endpoint{}, err
		} else {
			e.Host, e.ServerName = strings.ToLower(host), strings.ToLower(host)
		}
		if u.Fragment != "" {
			pin, err := parseIPPort(u.Fragment, port)
			if err != nil {
				return Endpoint{}, fmt.Errorf("address after '#': %w", err)
			}
			e.Addr = pin
		}
		if u.Path == "" {
			u.Path = "/dns-query"
		}
		u.Fragment, u.RawFragment = "", ""
		e.URL = u.String()
		return e, nil
	}
	return Endpoint{}, fmt.Errorf("unknown scheme %q: want udp, tcp, tls or https", scheme)
}

// parseIPPort parses "IP", "IP:port", "[IPv6]" or "[IPv6]:port".
func parseIPPort(s string, defPort uint16) (netip.AddrPort, error) {
	host, port, err := splitHostPort(s, defPort)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address (a server is given by address)", host)
	}
	return netip.AddrPortFrom(ip, port), nil
}

// splitHostPort splits "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address.
func splitHostPort(s string, defPort uint16) (string, uint16, error) {
	if s == "" {
		return "", 0, errors.New("no address")
	}
	if ip, err := netip.ParseAddr(s); err == nil { // bare IPv4 or IPv6, no port
		return ip.String(), defPort, nil
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return s[1 : len(s)-1], defPort, nil
	}
	if !strings.Contains(s, ":") {
		return s, defPort, nil
	}
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", ps)
	}
	return host, uint16(p), nil
}

// checkHostname accepts a DNS name made of letters, digits, '-', '_' and dots.
func checkHostname(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("%q is not a host name", h)
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a host name", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q is not a host name", h)
			}
		}
	}
	return nil
}

// target is the "host:port" to dial.
func (e Endpoint) target() string {
	if e.Addr.IsValid() {
		return e.Addr.String()
	}
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// String is the endpoint in the form ParseEndpoint reads.
func (e Endpoint) String() string {
	switch e.Proto {
	case ProtoDNS:
		return e.Addr.String()
	case ProtoUDP, ProtoTCP:
		return e.Proto.String() + "://" + e.Addr.String()
	case ProtoTLS:
		s := "tls://" + e.target()
		if e.Addr.IsValid() && e.ServerName != e.Addr.Addr().WithZone("").String() {
			s += "#" + e.ServerName
		}
		return s
	case ProtoHTTPS:
		if e.Host != "" && e.Addr.IsValid() {
			return e.URL + "#" + e.Addr.String()
		}
		return e.URL
	}
	return "invalid"
}
