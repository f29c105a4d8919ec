// Package redirect owns socksgate's kernel steering: the nftables table
// `inet socksgate` that sends LAN traffic to socksgate's listeners (REDIRECT for
// TCP, TPROXY for UDP and optionally TCP), the policy routing TPROXY needs, and
// the SO_MARK hook that keeps socksgate's own sockets out of its rules.
//
// Everything the kernel state depends on is a Spec. The rules are built from
// it by pure functions (Spec.Render shows them in nft syntax without root);
// Apply installs them in one netlink batch, Ruleset.Close and Remove take them
// away again. The package never logs; every error says what was being done.
package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/socksgate/socksgate/configs"
)

// Defaults used by Spec for fields left at their zero value (Mark has none: it
// must be the same value the dialers put on their sockets, so the caller owns
// it; DefaultMark is offered to configuration code).
const (
	DefaultTable        = "socksgate"
	DefaultMark         = 0x5347 // "SG": socksgate's own outgoing sockets
	DefaultTProxyMark   = 0x5348 // packets taken by TPROXY, routed to the local table
	DefaultRouteTable   = 100
	DefaultRulePriority = 100 // after "local" (0), well before "main" (32766)
)

// Names inside the table.
const (
	setLAN      = "lan_ifaces"
	setBypass4  = "bypass4"
	setBypass6  = "bypass6"
	setDirect4  = "direct4" // destinations the rules send direct (Spec.Direct)
	setDirect6  = "direct6"
	chainNAT    = "prerouting_nat"
	chainMangle = "prerouting_mangle"
	chainRawOut = "output_raw"
	chainOutNAT = "output_nat"      // the router's own TCP, REDIRECT mode
	chainOutRte = "output_route"    // the router's own UDP (and TCP in TPROXY mode): marked, rerouted to lo
	chainFwd    = "forward_filter"  // transparent.icmp block: the LAN's pings the router would forward
	chainOffld  = "forward_offload" // transparent.offload: the direct flows, into flowtable ft
	flowtableFT = "ft"
)

// Spec is everything the kernel rules depend on.
type Spec struct {
	Table         string          // nftables table name, family inet; default DefaultTable
	LANInterfaces []string        // iifname match; empty => no capture rules at all
	TCPPort       uint16          // listener for captured TCP (0 => no TCP capture)
	TCPMode       configs.TCPMode // configs.TCPModeRedirect (the zero value) or configs.TCPModeTProxy
	UDPPort       uint16          // TPROXY listener for captured UDP (0 => no UDP capture)
	// Mark is socksgate's own outgoing-socket mark (see MarkControl): packets
	// carrying all its bits are never captured. Required when anything is captured.
	Mark uint32
	// TProxyMark is the fwmark the TPROXY rules set; the policy rule sends it
	// to RouteTable, whose only route is "local default dev lo".
	TProxyMark   uint32
	RouteTable   int             // policy routing table id; default DefaultRouteTable
	RulePriority int             // ip rule priority; default DefaultRulePriority
	Bypass       []netip.Prefix  // destinations never captured, IPv4 and IPv6 mixed, may overlap
	OnCrash      configs.OnCrash // configs.OnCrashClosed (the zero value) or configs.OnCrashOpen
	// Capture are destinations always captured, taken out of Bypass and Direct: the fake-ip
	// ranges, which lie in space the built-in bypass holds private (fc00::/7).
	Capture []netip.Prefix
	// Direct are destinations socksgate's rules send direct whatever else a flow to them is
	// (route.RuleRouter.Hoisted): like Bypass they are never captured, so the kernel routes
	// those flows, but they live in sets of their own (direct4, direct6), which exist only
	// when Direct is not empty, and the ICMP chain does not exempt them.
	Direct []netip.Prefix
	// DNSPort, when set, hijacks the LAN's DNS: UDP and TCP to port 53 at any address (the
	// router's own included) is redirected to this port, where socksgate answers it.
	DNSPort uint16
	// RouterCapture captures what the router itself sends (output hook): TCP the way LAN TCP
	// is (REDIRECT, or TPROXY through lo), UDP when UDPPort is set. Needs LANInterfaces: the
	// listeners it delivers to are those of the LAN's capture.
	RouterCapture bool
	// ExcludeUIDs and ExcludeGIDs are the socket owners (meta skuid, skgid) whose traffic
	// RouterCapture leaves alone.
	ExcludeUIDs, ExcludeGIDs []uint32
	// ICMP configs.ICMPBlock drops the ICMP and ICMPv6 echo requests that arrive on
	// LANInterfaces and would be forwarded (not those to this host or to Bypass); the zero
	// value, configs.ICMPPass, leaves ICMP routed as usual.
	ICMP configs.ICMPMode
	// Offload adds the flows to Direct (from LANInterfaces) to a flowtable (`flow add @ft`,
	// nf_flow_table's software fast path): once conntrack has seen a connection established,
	// its packets go from the ingress hook of one device straight to the other, past the
	// prerouting, forward and postrouting hooks, this table's and the firewall's alike. The
	// flowtable's devices are LANInterfaces, OffloadDevices and the devices of the default
	// routes, those that exist when the table is installed. A kernel without flowtables
	// (CONFIG_NF_FLOW_TABLE) gets the table without them: Ruleset.Offload says why.
	Offload        bool
	OffloadDevices []string
}

// withDefaults returns s with zero fields replaced by their defaults.
func (s Spec) withDefaults() Spec {
	if s.Table == "" {
		s.Table = DefaultTable
	}
	if s.TProxyMark == 0 {
		s.TProxyMark = DefaultTProxyMark
	}
	if s.RouteTable == 0 {
		s.RouteTable = DefaultRouteTable
	}
	if s.RulePriority == 0 {
		s.RulePriority = DefaultRulePriority
	}
	return s
}

// hijackDNS reports whether the LAN's DNS is redirected to socksgate.
func (s Spec) hijackDNS() bool { return len(s.LANInterfaces) > 0 && s.DNSPort != 0 }

// captureTCP reports whether TCP is captured at all.
func (s Spec) captureTCP() bool { return len(s.LANInterfaces) > 0 && s.TCPPort != 0 }

// captureUDP reports whether UDP is captured.
func (s Spec) captureUDP() bool { return len(s.LANInterfaces) > 0 && s.UDPPort != 0 }

// tproxyTCP reports whether TCP is captured by TPROXY rather than REDIRECT.
func (s Spec) tproxyTCP() bool { return s.captureTCP() && s.TCPMode == configs.TCPModeTProxy }

// redirectTCP reports whether TCP is captured by the nat REDIRECT rule.
func (s Spec) redirectTCP() bool { return s.captureTCP() && s.TCPMode != configs.TCPModeTProxy }

// routerTCP reports whether the router's own TCP is captured.
func (s Spec) routerTCP() bool { return s.RouterCapture && s.captureTCP() }

// routerUDP reports whether the router's own UDP is captured.
func (s Spec) routerUDP() bool { return s.RouterCapture && s.captureUDP() }

// blockICMP reports whether the LAN's forwarded echo requests are dropped.
func (s Spec) blockICMP() bool { return len(s.LANInterfaces) > 0 && s.ICMP == configs.ICMPBlock }

// offload reports whether the direct flows are added to the flowtable.
func (s Spec) offload() bool { return s.Offload && len(s.Direct) > 0 && len(s.LANInterfaces) > 0 }

// staticOffloadDevices are the flowtable's devices the spec names: the LAN interfaces and
// OffloadDevices, each once, in that order.
func (s Spec) staticOffloadDevices() []string {
	var out []string
	for _, d := range append(slices.Clone(s.LANInterfaces), s.OffloadDevices...) {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// needsPolicyRouting reports whether any TPROXY rule is installed, and with it
// the fwmark rule and local route that deliver TPROXY'd packets to this host.
func (s Spec) needsPolicyRouting() bool { return s.captureUDP() || s.tproxyTCP() }

// failClosed reports whether LAN traffic that TPROXY did not take is stopped.
func (s Spec) failClosed() bool { return s.OnCrash != configs.OnCrashOpen }

// Validate reports every problem in s (after defaults) in one joined error;
// each message names the field.
func (s Spec) Validate() error {
	s = s.withDefaults()
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if len(s.Table) > 255 || strings.ContainsAny(s.Table, "\x00 \t\n{}\"") {
		add("table: invalid nftables table name %q", s.Table)
	}
	if _, err := s.TCPMode.MarshalText(); err != nil {
		add("tcp_mode: %v", err)
	}
	if _, err := s.OnCrash.MarshalText(); err != nil {
		add("on_crash: %v", err)
	}
	if _, err := s.ICMP.MarshalText(); err != nil {
		add("icmp: %v", err)
	}
	for i, name := range s.LANInterfaces {
		if !validIfname(name) {
			add("lan_interfaces[%d]: invalid interface name %q", i, name)
		}
	}
	for i, name := range s.OffloadDevices {
		if !validIfname(name) {
			add("offload_devices[%d]: invalid interface name %q", i, name)
		}
	}
	capture := s.captureTCP() || s.captureUDP() || s.hijackDNS()
	if capture && s.Mark == 0 {
		add("mark: must be non-zero when traffic is captured (socksgate's own sockets must be told apart)")
	}
	if s.needsPolicyRouting() {
		if s.TProxyMark == s.Mark {
			add("tproxy_mark: %#x must differ from mark", s.TProxyMark)
		}
		switch {
		case s.RouteTable < 1 || s.RouteTable > 1<<31-1:
			add("route_table: %d out of range", s.RouteTable)
		case s.RouteTable >= 253 && s.RouteTable <= 255:
			add("route_table: %d is a system table (default, main or local)", s.RouteTable)
		}
		if s.RulePriority < 1 || s.RulePriority > 32765 {
			add("rule_priority: %d must be between 1 and 32765 (before the main table's rule)", s.RulePriority)
		}
	}
	if s.RouterCapture {
		if len(s.LANInterfaces) == 0 || (s.TCPPort == 0 && s.UDPPort == 0) {
			add("router_capture: needs the transparent listeners (lan_interfaces and a TCP or UDP port)")
		}
		if s.needsPolicyRouting() && s.Mark != 0 && s.TProxyMark&s.Mark == s.Mark {
			add("tproxy_mark: %#x holds every bit of mark %#x: the router's captured packets would pass as socksgate's own", s.TProxyMark, s.Mark)
		}
	}
	for i, u := range s.ExcludeUIDs {
		if u == 1<<32-1 {
			add("exclude_uids[%d]: %d is no user id (it is (uid_t)-1)", i, u)
		}
	}
	for i, g := range s.ExcludeGIDs {
		if g == 1<<32-1 {
			add("exclude_gids[%d]: %d is no group id (it is (gid_t)-1)", i, g)
		}
	}
	for i, p := range s.Bypass {
		if !p.IsValid() {
			add("bypass[%d]: invalid prefix", i)
		}
	}
	for i, p := range s.Capture {
		if !p.IsValid() {
			add("capture[%d]: invalid prefix", i)
		}
	}
	for i, p := range s.Direct {
		if !p.IsValid() {
			add("direct[%d]: invalid prefix", i)
		}
	}
	return errors.Join(errs...)
}

// validIfname reports whether name can be a Linux interface name (IFNAMSIZ is 16 with the
// terminating NUL).
func validIfname(name string) bool {
	return name != "" && len(name) <= 15 && !strings.ContainsAny(name, "/\x00 \t\n\"*") && name != "." && name != ".."
}

// BuiltinBypass returns the destinations that are never worth capturing:
// this host and this network, private and shared address space reserved for
// the LAN itself, link-local, multicast, reserved and broadcast, for IPv4 and IPv6.
func BuiltinBypass() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
		netip.MustParsePrefix("10.0.0.0/8"),         // RFC 1918
		netip.MustParsePrefix("127.0.0.0/8"),        // loopback
		netip.MustParsePrefix("169.254.0.0/16"),     // link-local
		netip.MustParsePrefix("172.16.0.0/12"),      // RFC 1918
		netip.MustParsePrefix("192.168.0.0/16"),     // RFC 1918
		netip.MustParsePrefix("224.0.0.0/4"),        // multicast
		netip.MustParsePrefix("240.0.0.0/4"),        // reserved
		netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
		netip.MustParsePrefix("::1/128"),            // loopback
		netip.MustParsePrefix("::/128"),             // unspecified
		netip.MustParsePrefix("fe80::/10"),          // link-local
		netip.MustParsePrefix("fc00::/7"),           // unique local
		netip.MustParsePrefix("ff00::/8"),           // multicast
	}
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ first, last netip.Addr }

// mergeBypass splits prefixes by family and merges overlapping and adjacent
// ones into sorted, disjoint inclusive ranges: the shape an nftables interval
// set needs (the kernel refuses overlapping intervals). IPv4-mapped IPv6
// prefixes (::ffff:0:0/96 and longer) count as IPv4. Invalid prefixes are skipped
// (Validate reports them).
func mergeBypass(prefixes []netip.Prefix) (v4, v6 []addrRange) {
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		r := addrRange{first: p.Addr(), last: lastAddr(p)}
		if r.first.Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	return mergeRanges(v4), mergeRanges(v6)
}

// subtractRanges returns rs (sorted, disjoint) without the addresses of cut (sorted, disjoint,
// of the same family).
func subtractRanges(rs, cut []addrRange) []addrRange {
	out := make([]addrRange, 0, len(rs))
	for _, r := range rs {
		for _, c := range cut {
			if c.last.Less(r.first) || r.last.Less(c.first) {
				continue
			}
			if r.first.Less(c.first) {
				out = append(out, addrRange{r.first, c.first.Prev()})
			}
			if !c.last.Less(r.last) {
				r.first = netip.Addr{} // nothing of r is left
				break
			}
			r.first = c.last.Next()
		}
		if r.first.IsValid() {
			out = append(out, r)
		}
	}
	return out
}

func mergeRanges(rs []addrRange) []addrRange {
	if len(rs) == 0 {
		return nil
	}
	sort.Slice(rs, func(i, j int) bool {
		if c := rs[i].first.Compare(rs[j].first); c != 0 {
			return c < 0
		}
		return rs[i].last.Compare(rs[j].last) < 0
	})
	out := []addrRange{rs[0]}
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		next := cur.last.Next() // invalid when cur reaches the top of the family
		if !next.IsValid() || r.first.Compare(next) <= 0 {
			if r.last.Compare(cur.last) > 0 {
				cur.last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// lastAddr returns the highest address in the masked prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// rangeString renders r the way `nft list` shows an interval element: a
// single address, a prefix when r is exactly one, else "first-last".
func (r addrRange) String() string {
	if r.first == r.last {
		return r.first.String()
	}
	for bits := r.first.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(r.first, bits)
		if p.Masked().Addr() != r.first {
			break
		}
		if lastAddr(p) == r.last {
			return p.String()
		}
	}
	return r.first.String() + "-" + r.last.String()
}

// lanInterfaces returns the interface names sorted and without duplicates.
func (s Spec) lanInterfaces() []string {
	names := slices.Clone(s.LANInterfaces)
	slices.Sort(names)
	return slices.Compact(names)
}
