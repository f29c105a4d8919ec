package dns

import (
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1.2.3.4", "1.2.3.4:53"},
		{"1.2.3.4:5353", "1.2.3.4:5353"},
		{"[::1]:53", "[::1]:53"},
		{"::1", "[::1]:53"},
		{"[2001:db8::1]", "[2001:db8::1]:53"},
		{"udp://1.2.3.4", "udp://1.2.3.4:53"},
		{"UDP://1.2.3.4:54", "udp://1.2.3.4:54"},
		{"tcp://[2001:db8::1]:53", "tcp://[2001:db8::1]:53"},
		{"tls://1.1.1.1#cloudflare-dns.com", "tls://1.1.1.1:853#cloudflare-dns.com"},
		{"tls://1.1.1.1:8853", "tls://1.1.1.1:8853"},
		{"tls://dns.quad9.net", "tls://dns.quad9.net:853"},
		{"https://dns.example/dns-query", "https://dns.example/dns-query"},
		{"https://dns.example", "https://dns.example/dns-query"},
		{"https://dns.example:8443/q#192.0.2.1", "https://dns.example:8443/q#192.0.2.1:8443"},
		{"https://1.1.1.1/dns-query", "https://1.1.1.1/dns-query"},
	} {
		e, err := ParseEndpoint(tc.in)
		if err != nil {
			t.Errorf("ParseEndpoint(%q): %v", tc.in, err)
			continue
		}
		if got := e.String(); got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %s, want %s", tc.in, got, tc.want)
		}
		if again, err := ParseEndpoint(e.String()); err != nil || again != e {
			t.Errorf("%q does not round-trip: %+v %v", e.String(), again, err)
		}
	}
}

func TestParseEndpointFields(t *testing.T) {
	e, _ := ParseEndpoint("tls://9.9.9.9#dns.quad9.net")
	if e.Proto != ProtoTLS || e.Addr.String() != "9.9.9.9:853" || e.ServerName != "dns.quad9.net" || e.Host != "" {
		t.Errorf("tls: %+v", e)
	}
	e, _ = ParseEndpoint("https://doh.test/dns-query#127.0.0.1")
	if e.Proto != ProtoHTTPS || e.Addr.String() != "127.0.0.1:443" || e.ServerName != "doh.test" || e.URL != "https://doh.test/dns-query" {
		t.Errorf("https: %+v", e)
	}
}

func TestParseEndpointErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{"dns.google", "not an IP address"},
		{"udp://dns.google", "not an IP address"},
		{"1.2.3.4:0", "port"},
		{"1.2.3.4:99999", "port"},
		{"quic://1.2.3.4", "unknown scheme"},
		{"udp://1.2.3.4/path", "IP[:port] only"},
		{"tls://1.1.1.1#bad name", "host name"},
		{"tls://bad_host!", "host name"},
		{"https://user:pw@dns.example/q", "credentials"},
		{"https:///dns-query", "no host"},
		{"https://dns.example/q#notanip", "after '#'"},
	} {
		_, err := ParseEndpoint(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEndpoint(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func TestExchangerNeedsUDPForUDP(t *testing.T) {
	e, _ := ParseEndpoint("udp://1.2.3.4")
	if _, err := e.Exchanger(Transport{Dial: directDial, NoUDP: true}); err == nil || !strings.Contains(err.Error(), "carries no UDP") {
		t.Errorf("udp:// over a TCP-only way out: %v", err)
	}
	if _, err := e.Exchanger(Transport{}); err == nil {
		t.Error("no dialer accepted")
	}
}
