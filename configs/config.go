// Package configs owns socksgate's configuration: the YAML schema with typed
// fields, its defaults, strict loading (unknown keys are errors), validation
// whose messages name the field path, non-fatal warnings (shadowed rules,
// unused upstreams), the embedded default.yaml and the example configs.
//
// Loading is a pipeline: the document is parsed into a node tree, walked
// against the schema (unknown keys and malformed scalars are reported with
// their line and field path, all at once), decoded over a Config that already
// holds every default (so a key that is absent keeps its default and a key that
// is present means exactly what it says, zero included), finished (rule names,
// the implicit default rule, normalised prefixes and domains), and validated.
//
// The package never touches the kernel and never logs.
package configs

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/relay"
)

// Config is the whole socksgate configuration. The zero value is not useful:
// obtain one from Load, Parse or Default.
type Config struct {
	// Log configures the process logger.
	Log Log `yaml:"log"`
	// LAN names where transparent capture happens.
	LAN LAN `yaml:"lan"`
	// Transparent configures the kernel capture (nftables, TPROXY) and the
	// transparent listeners.
	Transparent Transparent `yaml:"transparent"`
	// Router configures the capture of what the router itself sends.
	Router Router `yaml:"router"`
	// Listen configures the explicit proxy ports (HTTP, SOCKS, mixed).
	Listen Listen `yaml:"listen"`
	// Upstreams are the proxies (and direct) flows can leave through.
	Upstreams []Upstream `yaml:"upstreams"`
	// Groups combine upstreams under a policy with health checks.
	Groups []Group `yaml:"groups"`
	// Rules decide each flow: first match wins. After Parse the list is never
	// empty and its last rule is a catch-all (see Rule.Implicit).
	Rules []Rule `yaml:"rules"`
	// RuleSets are lists of domains or prefixes kept in files, named by rules (rulesets.go).
	RuleSets []RuleSet `yaml:"rule_sets"`
	// Timeouts bound dials, handshakes, idle flows and shutdown.
	Timeouts Timeouts `yaml:"timeouts"`
	// Mark is the SO_MARK set on every socket socksgate opens toward an
	// upstream or a destination; the kernel rules let packets carrying it
	// pass untouched. Default 0x1; must be non-zero.
	Mark uint32 `yaml:"mark"`
	// OnCrash is what the kernel rules do when socksgate dies: OnCrashClosed
	// (default, nothing leaks direct) or OnCrashOpen (the table vanishes with
	// the process).
	OnCrash OnCrash `yaml:"on_crash"`
	// Limits bound the number of flows.
	Limits Limits `yaml:"limits"`
	// Relay selects the TCP relay implementation: relay.Auto (default, the
	// gateway's measured choice), relay.Splice or relay.Buffered. The file may
	// still say "kernel" (the removed sockmap relay): Parse reads it as auto
	// and Warnings says so.
	Relay relay.Mode `yaml:"relay"`
	// Admin configures the admin endpoint (/metrics, /flows, the Clash-style
	// control API, /healthz): in YAML its host:port alone, or the long form
	// {listen, secret, cors_origins}. No listen address (default) disables it.
	Admin Admin `yaml:"admin"`
	// DNS configures the resolver on the gateway (dns.go).
	DNS DNS `yaml:"dns"`
	// StateDir holds what must survive a restart (the fake-ip pool), written atomically; a
	// missing or damaged file there never stops a start. Default /var/lib/socksgate.
	StateDir string `yaml:"state_dir"`
	// Devices configures the LAN's devices: names, bytes per device, src_mac and device
	// rules (devices.go).
	Devices Devices `yaml:"devices"`
	// GeoIP is the country database of the dst_geoip and src_geoip rules (geoip.go).
	GeoIP GeoIP `yaml:"geoip"`
	// HA names the LAN gateway addresses an HA pair moves between its routers.
	HA HA `yaml:"ha"`

	// deprecated are warnings about values that are still accepted but mean
	// something else now, found by Parse; Warnings returns them first.
	deprecated []string
}

// HA is this router's part in an HA pair: two routers that share the LAN's gateway address
// with VRRP (keepalived) and run socksgate with the same config.
type HA struct {
	// VIP are the addresses VRRP moves between the routers (the LAN hosts' gateway). The
	// router holding one of them on an interface now is the one serving: the admin endpoint
	// says so (/healthz, socksgate_serving). None (default): nothing is reported.
	VIP []netip.Addr `yaml:"vip"`
}

// Admin configures the admin endpoint. `admin: 127.0.0.1:9091` is the same as
// `admin: {listen: 127.0.0.1:9091}`.
type Admin struct {
	// Listen is the host:port to serve on; empty turns the endpoint off.
	Listen string `yaml:"listen"`
	// Secret, when set, is required from every client (Authorization: Bearer
	// SECRET, or ?token=SECRET for WebSocket clients) on every path but
	// /healthz and the dashboard's static /ui/ assets; 401 otherwise.
	Secret Secret `yaml:"secret"`
	// CORSOrigins are the origins (scheme://host[:port], or "*") whose pages
	// may call the API from a browser; none (default): no CORS headers.
	CORSOrigins []string `yaml:"cors_origins"`
}

// Equal reports whether a and b configure the same endpoint.
func (a Admin) Equal(b Admin) bool {
	return a.Listen == b.Listen && a.Secret == b.Secret && slices.Equal(a.CORSOrigins, b.CORSOrigins)
}

// UnmarshalYAML accepts the address alone or the long form.
func (a *Admin) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*a = Admin{Listen: strings.TrimSpace(n.Value)}
		return nil
	}
	type plain Admin
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	p.Listen = strings.TrimSpace(p.Listen)
	*a = Admin(p)
	return nil
}

// Log configures logging.
type Log struct {
	// Level is one of debug, info (default), warn, error.
	Level LogLevel `yaml:"level"`
	// Format is text (default) or json.
	Format LogFormat `yaml:"format"`
}

// LAN describes the local network socksgate is the gateway of.
type LAN struct {
	// Interfaces are where transparent capture happens. Empty (the default)
	// means no transparent capture and no kernel rules at all.
	Interfaces []string `yaml:"interfaces"`
	// Prefixes are extra "own LAN" prefixes. The running daemon adds the
	// interfaces' own prefixes. They are bypassed by the capture and are the
	// default source ACL of the explicit listeners.
	Prefixes []netip.Prefix `yaml:"prefixes"`
}

// Transparent configures transparent capture.
type Transparent struct {
	// TCPPort is the port captured TCP is redirected to. Default 12345.
	TCPPort uint16 `yaml:"tcp_port"`
	// TCPMode is TCPModeRedirect (default, nat redirect + SO_ORIGINAL_DST) or
	// TCPModeTProxy (TPROXY; the original destination is the local address).
	TCPMode TCPMode `yaml:"tcp_mode"`
	// UDP enables UDP capture with TPROXY. Default false.
	UDP bool `yaml:"udp"`
	// UDPPort is the transparent UDP listener's port. Default 12345.
	UDPPort uint16 `yaml:"udp_port"`
	// UDPIdle ends a UDP session after this long without traffic. Default 60s.
	UDPIdle Duration `yaml:"udp_idle"`
	// UDPMaxSessions bounds the UDP session table. Default 4096.
	UDPMaxSessions int `yaml:"udp_max_sessions"`
	// UDPOverTCPUpstream is what a UDP flow does when its route gives an
	// upstream without UDP (see Upstream.SupportsUDP): UDPBlock (default) or
	// UDPDirect.
	UDPOverTCPUpstream UDPFallback `yaml:"udp_without_support"`
	// DNSOverTCP carries UDP DNS (destination port 53) over TCP (RFC 7766
	// framing) when the route gives an upstream without UDP, instead of
	// applying udp_without_support. Default false.
	DNSOverTCP bool `yaml:"dns_over_tcp"`
	// QUIC is what captured UDP to port 443 meets: QUICSniff (default; the server name of
	// the client's QUIC Initial routes the session when 443 is a sniff port) or QUICBlock
	// (dropped, so browsers fall back to TCP).
	QUIC QUICMode `yaml:"quic"`
	// ICMP is what the LAN's ICMP and ICMPv6 echo requests (and destination unreachable
	// errors) that would be forwarded meet: ICMPPass (default; routed, not proxied) or
	// ICMPBlock (dropped in socksgate's table).
	ICMP ICMPMode `yaml:"icmp"`
	// Offload puts the flows the rules send direct by destination alone (the sets the kernel
	// routes itself, direct4 and direct6) in an nftables flowtable, nf_flow_table's software
	// fast path: once established they skip the netfilter hooks. Default false.
	Offload bool `yaml:"offload"`
	// OffloadDevices are the flowtable's devices besides the LAN interfaces and the devices
	// of the default routes (a second WAN without a default route of its own, say).
	OffloadDevices []string `yaml:"offload_devices"`
	// BypassBuiltin keeps BuiltinBypass() out of capture. Default true; after
	// Parse it is never nil. Use BypassBuiltinEnabled to read it.
	BypassBuiltin *bool `yaml:"bypass_builtin"`
	// Bypass are extra destination prefixes that are never captured.
	Bypass []netip.Prefix `yaml:"bypass"`
	// TProxyMark is the fwmark TPROXY puts on captured packets so policy
	// routing delivers them locally. Default 0x2; must differ from Mark.
	TProxyMark uint32 `yaml:"tproxy_mark"`
	// RouteTable is the policy-routing table holding the local default
	// route for TPROXY. Default 100.
	RouteTable int `yaml:"route_table"`
	// RulePriority is the priority of the "fwmark lookup table" rule.
	// Default 100.
	RulePriority int `yaml:"rule_priority"`
	// Sniff configures reading a name (TLS SNI, HTTP Host) from captured TCP.
	Sniff Sniff `yaml:"sniff"`
}

// Router configures the capture of the router's own traffic: what its own
// processes send (its dnsmasq's upstream queries, NTP, the package manager, a
// curl typed on it), taken in the output hook and delivered to the transparent
// listeners. Rules see these flows with inbound router.
type Router struct {
	// Capture turns it on: TCP always, UDP when transparent.udp is on. Needs
	// lan.interfaces (the transparent listeners). Default false.
	Capture bool `yaml:"capture"`
	// ExcludeUIDs and ExcludeGIDs are the socket owners (uid, gid) whose traffic
	// goes direct, never captured: services that must not depend on the upstream.
	ExcludeUIDs []uint32 `yaml:"exclude_uids"`
	ExcludeGIDs []uint32 `yaml:"exclude_gids"`
}

// BypassBuiltinEnabled reports whether the built-in bypass prefixes apply
// (nil means the default, true).
func (t *Transparent) BypassBuiltinEnabled() bool {
	return t.BypassBuiltin == nil || *t.BypassBuiltin
}

// Sniff configures name sniffing on captured TCP flows.
type Sniff struct {
	// Enabled turns sniffing on. Default true.
	Enabled bool `yaml:"enabled"`
	// Ports are the destination ports sniffed. Default [80, 443].
	Ports []PortRange `yaml:"ports"`
	// Timeout is how long to wait for the client's first bytes before
	// proceeding with the address alone. Default 300ms.
	Timeout Duration `yaml:"timeout"`
	// Override hands a proxy upstream the sniffed name instead of the address the client
	// chose. Default false: a sniffed name is the flow's claim, used for routing only; the
	// client's own choice of address (curl -4, a hosts-file entry, a pinned IP) stands.
	Override bool `yaml:"override"`
}

// Listen configures the explicit proxy listeners.
//
// Each address is host:port where host is an IP literal, a name
// ("localhost"), empty (every address: a warning), or the keyword "lan",
// which the daemon expands at runtime to the addresses of lan.interfaces
// (none when there are none). See ParseListenAddr.
type Listen struct {
	// HTTP proxy listeners. Default ["127.0.0.1:8080", "lan:8080"]; an
	// explicit empty list (http: []) or empty string disables.
	HTTP AddrList `yaml:"http"`
	// SOCKS4/4a/5 listeners. Default ["127.0.0.1:1080", "lan:1080"], same rules.
	SOCKS AddrList `yaml:"socks"`
	// Mixed listeners serve HTTP and SOCKS on one port, told apart by the
	// first byte. No default.
	Mixed AddrList `yaml:"mixed"`
	// Users, when non-empty, makes every explicit listener require
	// authentication (HTTP Basic, SOCKS5 username/password). SOCKS4 carries
	// no password, so SOCKS4/4a requests are refused while users are set.
	Users []User `yaml:"users"`
	// Allow is the source ACL of the explicit listeners. Empty (the default)
	// means loopback plus the LAN (lan.prefixes and the interfaces' own
	// prefixes); write [0.0.0.0/0, ::/0] to allow everyone.
	Allow []netip.Prefix `yaml:"allow"`
}

// User is one explicit-proxy credential.
type User struct {
	Username string `yaml:"username"`
	Password Secret `yaml:"password"`
}

// Upstream is one way out: a proxy or direct.
type Upstream struct {
	// Name identifies the upstream in rules, groups and via; unique among
	// upstreams and groups.
	Name string `yaml:"name"`
	// URL is the upstream's address. Schemes: socks5, socks5h (the same:
	// socksgate always sends the names it has), socks4, socks4a, http,
	// https (HTTP CONNECT over TLS), socks5+tls (SOCKS5 over TLS) and direct
	// ("direct://"). Credentials go in the userinfo; socks4/4a take a
	// username only (sent as the user id). Never log it: use Redacted.
	URL *url.URL `yaml:"url"`
	// Via names another upstream this one is reached through (chains of any
	// depth; no cycles).
	Via string `yaml:"via"`
	// TLS configures the TLS of an https or socks5+tls upstream; nil: the
	// defaults (UpstreamTLS's zero value). Refused on other schemes.
	TLS *UpstreamTLS `yaml:"tls"`

	urlErr string // why the url did not parse; reported by Validate
}

// Group is a set of upstreams used under a policy.
type Group struct {
	// Name identifies the group in rules; unique among upstreams and groups.
	Name string `yaml:"name"`
	// Policy is PolicyFailover (default, in order), PolicyRoundRobin,
	// PolicyLeastConnections, PolicySelect (the member chosen through the
	// control API; the first until one is) or PolicyURLTest (the member whose
	// health checks are fastest).
	Policy Policy `yaml:"policy"`
	// Tolerance is how much faster another member's checks must be before a
	// url-test group moves to it, so that it does not flap between members of
	// about the same latency. Default 50ms.
	Tolerance Duration `yaml:"tolerance"`
	// Upstreams are names of upstreams (not groups), at least one.
	Upstreams []string `yaml:"upstreams"`
	// OnDown is what a flow does when every member is down: OnDownBlock
	// (default, fail closed) or OnDownDirect.
	OnDown OnDown `yaml:"on_down"`
	// Health configures the members' health checks.
	Health Health `yaml:"health"`
}

// Health configures active health checks of a group's members. An upstream
// that fails a dial is marked down at once regardless.
type Health struct {
	// Probe is a host:port the check CONNECTs to through the upstream. Empty
	// (default) checks only that the upstream accepts a connection and
	// completes its greeting.
	Probe string `yaml:"probe"`
	// Interval between checks. Default 10s; 0 disables active checks.
	Interval Duration `yaml:"interval"`
	// Timeout of one check. Default 5s.
	Timeout Duration `yaml:"timeout"`
	// Rise is how many consecutive successes mark an upstream up. Default 2.
	Rise int `yaml:"rise"`
	// Fall is how many consecutive failures mark an upstream down. Default 3.
	Fall int `yaml:"fall"`
}

// Rule matches flows and decides them. Every non-empty matcher must match
// (AND); within one matcher any element may match (OR); an empty matcher
// matches everything.
type Rule struct {
	// Name appears in flow logs. Default "rule#N" (1-based position).
	Name string `yaml:"name"`
	// Protocol: tcp, udp.
	Protocol []Network `yaml:"protocol"`
	// Dst are destination prefixes.
	Dst []netip.Prefix `yaml:"dst"`
	// DstPorts are destination ports and ranges: 443, "443", "1000-2000".
	DstPorts []PortRange `yaml:"dst_ports"`
	// Src are source prefixes (which LAN hosts).
	Src []netip.Prefix `yaml:"src"`
	// SrcMAC are the MAC addresses of the LAN devices the rule is for (as the neighbour table
	// of lan.interfaces knows them). A flow whose source has no known MAC (the router
	// itself, a host beyond a router) never matches.
	SrcMAC []MAC `yaml:"src_mac"`
	// Device are device names (the DHCP hostname, else the reverse DNS name of the source's
	// MAC); see MatchDeviceName. A flow from a device without a name never matches.
	Device []string `yaml:"device"`
	// Inbound: transparent (redirect and tproxy capture), http, socks (the
	// mixed port's flows are http or socks by what the client spoke).
	Inbound []Inbound `yaml:"inbound"`
	// Domain matches the flow's name, when it has one: "example.com" exactly,
	// ".example.com" or "*.example.com" for example.com and every name under
	// it. Lowercased and stored in the "." form by Parse; see MatchDomain.
	// A rule with a domain matcher never matches a flow without a name.
	Domain []string `yaml:"domain"`
	// DomainSet, DstSet and SrcSet name rule sets (Config.RuleSets) of kind domain, cidr and
	// cidr: each is part of the domain, dst and src matcher, which matches when any of its
	// literal values or any entry of a named set does.
	DomainSet []string `yaml:"domain_set"`
	DstSet    []string `yaml:"dst_set"`
	SrcSet    []string `yaml:"src_set"`
	// User, DomainKeyword, DomainRegex, DstGeoIP and SrcGeoIP are described in matchers.go.
	User          []string     `yaml:"user"`
	DomainKeyword []string     `yaml:"domain_keyword"`
	DomainRegex   []Regexp     `yaml:"domain_regex"`
	DstGeoIP      []geoip.Code `yaml:"dst_geoip"`
	SrcGeoIP      []geoip.Code `yaml:"src_geoip"`
	// Action is ActionDirect, ActionProxy or ActionBlock. When empty and
	// Upstream is set, Parse makes it ActionProxy.
	Action Action `yaml:"action"`
	// Upstream is the upstream or group a proxy rule sends flows through.
	Upstream string `yaml:"upstream"`

	// Implicit marks the catch-all "default" rule Parse appends when the
	// configured rules have none (see Config.Rules).
	Implicit bool `yaml:"-"`
}

// Timeouts bound the stages of a flow and the shutdown.
type Timeouts struct {
	// Dial bounds reaching a destination: connecting to the upstream (every
	// hop of a chain) and its proxy handshake, or a direct connect. Default 10s.
	Dial Duration `yaml:"dial"`
	// Handshake bounds the client's protocol handshake on the explicit ports
	// (including reading HTTP headers). An upstream's handshake is part of its
	// dial and bounded by Dial. Default 10s.
	Handshake Duration `yaml:"handshake"`
	// Idle closes a TCP flow with no traffic in either direction for this
	// long. Default 2h; 0 disables.
	Idle Duration `yaml:"idle"`
	// Grace is how long live flows may finish at shutdown. Default 5s.
	Grace Duration `yaml:"grace"`
}

// Limits bound resource use.
type Limits struct {
	// MaxFlows bounds concurrent flows; beyond it new flows are refused at
	// once. Default 0: derived by the daemon from RLIMIT_NOFILE.
	MaxFlows int `yaml:"max_flows"`
	// MaxFlowsPerSource bounds concurrent flows per source address. Default
	// 0: off.
	MaxFlowsPerSource int `yaml:"max_flows_per_source"`
}

// URL schemes and keywords.
const (
	SchemeSOCKS5  = "socks5"
	SchemeSOCKS5H = "socks5h"
	SchemeSOCKS4  = "socks4"
	SchemeSOCKS4A = "socks4a"
	SchemeHTTP    = "http"
	SchemeDirect  = "direct"
	// SchemeHTTPS is HTTP CONNECT and SchemeSOCKS5TLS SOCKS5, each over TLS
	// to the proxy.
	SchemeHTTPS     = "https"
	SchemeSOCKS5TLS = "socks5+tls"

	// ListenLAN is the listen-address host keyword for "the addresses of
	// lan.interfaces".
	ListenLAN = "lan"

	// ImplicitRuleName is the name of the rule Parse appends when the
	// configured rules have no catch-all.
	ImplicitRuleName = "default"
)

// SupportsUDP reports whether the upstream can carry UDP: direct, or SOCKS5
// reached without a via chain (UDP ASSOCIATE needs UDP reach to the proxy).
// socks5+tls does not: its association's datagrams would travel in clear
// beside the TLS (docs/configuration.md says why that is not done).
func (u *Upstream) SupportsUDP() bool {
	if u.URL == nil {
		return false
	}
	switch u.URL.Scheme {
	case SchemeDirect:
		return true
	case SchemeSOCKS5, SchemeSOCKS5H:
		return u.Via == ""
	}
	return false
}

// Redacted returns u for logs with its password replaced ("" for nil).
func Redacted(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Redacted()
}

// BuiltinBypass returns the destination prefixes never captured while
// transparent.bypass_builtin is true: unspecified/"this network", loopback,
// link-local, private (RFC 1918, ULA), multicast and reserved (240/4,
// including broadcast). Documentation and benchmark ranges are NOT included.
func BuiltinBypass() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
		netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("ff00::/8"),
	}
}

// BypassPrefixes returns every configured destination prefix kept out of
// capture: BuiltinBypass (when enabled), transparent.bypass and lan.prefixes.
// The daemon adds the LAN interfaces' own prefixes.
func (c *Config) BypassPrefixes() []netip.Prefix {
	var out []netip.Prefix
	if c.Transparent.BypassBuiltinEnabled() {
		out = append(out, BuiltinBypass()...)
	}
	out = append(out, c.Transparent.Bypass...)
	out = append(out, c.LAN.Prefixes...)
	return out
}

// Upstream returns the upstream named name, or nil.
func (c *Config) Upstream(name string) *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// Group returns the group named name, or nil.
func (c *Config) Group(name string) *Group {
	for i := range c.Groups {
		if c.Groups[i].Name == name {
			return &c.Groups[i]
		}
	}
	return nil
}
