package configs

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/socksgate/socksgate/dns"
)

// DNS configures socksgate's DNS on the gateway: a resolver for the LAN that routes every
// query by its name through the rules, and gives every flow to an answered address its name.
type DNS struct {
	// Listen are the addresses answered on, UDP and TCP, as in listen ("lan:53",
	// "127.0.0.1:5353" behind the router's own dnsmasq). Empty (default): no listener, so
	// that socksgate never fights dnsmasq for port 53 uninvited.
	Listen AddrList `yaml:"listen"`
	// Hijack captures the LAN's DNS to any address (UDP and TCP port 53, the router's own
	// addresses included) and answers it. Needs lan.interfaces.
	Hijack bool `yaml:"hijack"`
	// HijackPort is the port hijacked queries are redirected to (every address; the rules
	// accept only the LAN's queries on it). Default 15353.
	HijackPort uint16 `yaml:"hijack_port"`
	// Servers are the resolvers asked, through the rule's upstream, for names a proxy rule
	// decides: "1.1.1.1" (DNS over TCP through any upstream, over a UDP association with
	// proxy_udp), "tls://1.1.1.1:853#cloudflare-dns.com", "https://dns.google/dns-query#8.8.8.8".
	Servers []string `yaml:"servers"`
	// CAFile is a PEM file of the certificates that DoT and DoH servers (Servers, Direct,
	// Local) are verified against; empty: the system's roots.
	CAFile string `yaml:"ca_file"`
	// ProxyUDP asks Servers over UDP through SOCKS5 upstreams (UDP ASSOCIATE) instead of TCP.
	ProxyUDP bool `yaml:"proxy_udp"`
	// Direct are the resolvers for names a direct rule decides. Empty (default): the router's
	// own (OpenWrt's resolv.conf.auto, else /etc/resolv.conf), read at start and each reload.
	Direct []string `yaml:"direct"`
	// Local is the resolver of names local to the LAN (*.lan, *.local, *.home.arpa, single
	// labels, private reverse zones, LocalDomains): they never go upstream. Empty: the
	// router's own resolver in /etc/resolv.conf (on OpenWrt the dnsmasq holding the DHCP
	// names), else Direct.
	Local []string `yaml:"local"`
	// LocalDomains are more local domains (the DHCP domain, a home zone).
	LocalDomains []string `yaml:"local_domains"`
	// BlockAnswer is how a blocked name is answered: "nxdomain" (default) or "unspecified"
	// (0.0.0.0 and :: for A and AAAA; NXDOMAIN for the other types).
	BlockAnswer BlockAnswer `yaml:"block_answer"`
	// Timeout bounds one query, every server asked included. Default 5s.
	Timeout Duration `yaml:"timeout"`
	// Allow are the sources answered on Listen; the LAN's prefixes (lan.prefixes and the
	// addresses of lan.interfaces) and loopback when empty. Others get no answer.
	Allow []netip.Prefix `yaml:"allow"`
	// Rate is the queries per second each source may ask (bursts of twice that); over it,
	// queries are dropped. Default 200; -1: no limit.
	Rate int `yaml:"rate"`
	// Cache bounds the answer cache.
	Cache DNSCache `yaml:"cache"`
	// Names bounds the real-IP map: address -> name, per client, of every A/AAAA answer.
	Names DNSNames `yaml:"names"`
	// FakeIP answers A/AAAA from a private range instead of the real addresses.
	FakeIP FakeIP `yaml:"fake_ip"`
}

// DNSCache bounds the DNS cache.
type DNSCache struct {
	Entries int `yaml:"entries"` // answers kept; default 10000; 0 with MiB 0: no cache
	MiB     int `yaml:"max_mib"` // bytes kept, in MiB; default 8
}

// DNSNames bounds the real-IP map.
type DNSNames struct {
	Entries int      `yaml:"entries"` // mappings kept; default 100000
	Grace   Duration `yaml:"grace"`   // kept past the answer's TTL; default 5m
}

// FakeIP configures fake-ip mode.
type FakeIP struct {
	Enabled bool         `yaml:"enabled"`
	Range4  netip.Prefix `yaml:"range4"` // default 198.18.0.0/15
	Range6  netip.Prefix `yaml:"range6"` // default fc00::/18; AAAA for fake names has no data without one
	// Exclude are names answered with real addresses, on top of the built-in list (NTP and
	// time servers, STUN, connectivity checks, local names), in the rules' domain syntax
	// plus "+." (a domain and its subdomains) and "*" (one label).
	Exclude []string `yaml:"exclude"`
}

// LoadCertPool reads a PEM file of CA certificates.
func LoadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}

// DefaultHijackPort is where hijacked DNS is redirected to.
const DefaultHijackPort = 15353

// DefaultStateDir is where state that must survive a restart is kept.
const DefaultStateDir = "/var/lib/socksgate"

func defaultDNS() DNS {
	return DNS{
		HijackPort: DefaultHijackPort,
		Servers:    []string{"1.1.1.1", "8.8.8.8"},
		Timeout:    Duration(dns.DefaultTimeout),
		Rate:       dns.DefaultRate,
		Cache:      DNSCache{Entries: dns.DefaultCacheEntries, MiB: 8},
		Names:      DNSNames{Entries: dns.DefaultNamesEntries, Grace: Duration(5 * time.Minute)},
		FakeIP:     FakeIP{Range4: dns.DefaultFakeRange4, Range6: dns.DefaultFakeRange6},
	}
}

// On reports whether socksgate answers DNS at all.
func (d *DNS) On() bool { return len(d.Listen) > 0 || d.Hijack }

func (d *DNS) finish() {
	emptyToNil(&d.Listen)
	emptyToNil(&d.Direct)
	emptyToNil(&d.Local)
	emptyToNil(&d.LocalDomains)
	emptyToNil(&d.Allow)
	emptyToNil(&d.FakeIP.Exclude)
	maskAll(d.Allow)
	if d.FakeIP.Range4.IsValid() {
		d.FakeIP.Range4 = d.FakeIP.Range4.Masked()
	}
	if d.FakeIP.Range6.IsValid() {
		d.FakeIP.Range6 = d.FakeIP.Range6.Masked()
	}
}

func (c *Config) validateDNS(p *problems) {
	d := &c.DNS
	for i, s := range d.Listen {
		path := fmt.Sprintf("dns.listen[%d]", i)
		if _, err := ParseListenAddr(s); err != nil {
			p.add(path, "%v", err)
		}
	}
	if d.Hijack && len(c.LAN.Interfaces) == 0 {
		p.add("dns.hijack", "needs lan.interfaces: only the LAN's queries are hijacked")
	}
	if d.HijackPort == 0 {
		p.add("dns.hijack_port", "must be set")
	}
	endpoints := func(path string, list []string) {
		for i, s := range list {
			if _, err := dns.ParseEndpoint(s); err != nil {
				p.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
			}
		}
	}
	if len(d.Servers) == 0 && d.On() {
		p.add("dns.servers", "must name at least one resolver for the names proxy rules decide")
	}
	endpoints("dns.servers", d.Servers)
	endpoints("dns.direct", d.Direct)
	endpoints("dns.local", d.Local)
	for i, z := range d.LocalDomains {
		if _, err := normalizeDomain(z); err != nil {
			p.add(fmt.Sprintf("dns.local_domains[%d]", i), "%v", err)
		}
	}
	p.enum("dns.block_answer", d.BlockAnswer)
	p.positive("dns.timeout", d.Timeout)
	if d.CAFile != "" {
		if _, err := LoadCertPool(d.CAFile); err != nil {
			p.add("dns.ca_file", "%v", err)
		}
	}
	p.prefixes("dns.allow", d.Allow)
	if d.Rate < -1 || d.Rate == 0 {
		p.add("dns.rate", "must be positive, or -1 for no limit")
	}
	if d.Cache.Entries < 0 || d.Cache.MiB < 0 {
		p.add("dns.cache", "entries and max_mib must not be negative")
	}
	if d.Names.Entries < 0 {
		p.add("dns.names.entries", "must not be negative")
	}
	p.nonNegative("dns.names.grace", d.Names.Grace)
	f := &d.FakeIP
	if f.Enabled {
		if !f.Range4.IsValid() || !f.Range4.Addr().Is4() || f.Range4.Bits() > 30 {
			p.add("dns.fake_ip.range4", "must be an IPv4 prefix of /30 or wider")
		}
		if f.Range6.IsValid() && (!f.Range6.Addr().Is6() || f.Range6.Addr().Is4In6() || f.Range6.Bits() > 126) {
			p.add("dns.fake_ip.range6", "must be an IPv6 prefix of /126 or wider")
		}
		if _, err := dns.NewDomainMatcher(f.Exclude); err != nil {
			p.add("dns.fake_ip.exclude", "%v", err)
		}
	}
}
