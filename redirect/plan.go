package redirect

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/socksgate/socksgate/configs"
)

// ruleOp names one kind of rule in socksgate's table. The same value is turned
// into nft text (rule.String, used by Render) and into netlink expressions
// (the builders in rules_linux.go), so what `socksgate rules` prints is what
// Apply installs; a system test compares the two against `nft list`.
type ruleOp int

const (
	opOwnMarkReturn  ruleOp = iota // meta mark & M == M return
	opNotUnicast                   // meta pkttype != host return
	opLocalReturn                  // fib daddr type local return
	opBypass4Return                // ip daddr @bypass4 return
	opBypass6Return                // ip6 daddr @bypass6 return
	opRedirectTCP                  // iifname @lan_ifaces meta l4proto tcp redirect to :P
	opTransparentTCP               // iifname @lan_ifaces meta l4proto tcp socket transparent 1 meta mark set M accept
	opTProxy                       // iifname @lan_ifaces meta l4proto P meta nfproto F tproxy ipX to :P meta mark set M accept
	opDropUDP                      // iifname @lan_ifaces meta l4proto udp drop
	opRejectTCP                    // iifname @lan_ifaces meta l4proto tcp reject with tcp reset
	opReplyReturn                  // ct direction reply return
	opNotrackReplies               // meta mark & M == M meta l4proto udp fib saddr type != local notrack
	opDNSReturn                    // iifname @lan_ifaces meta l4proto P th dport 53 return
	opRedirectDNS                  // iifname @lan_ifaces meta l4proto P th dport 53 redirect to :P
	opLoopTProxy                   // iifname "lo" meta mark M meta l4proto P meta nfproto F tproxy ipX to :P accept
	opSkuidReturn                  // meta skuid N return
	opSkgidReturn                  // meta skgid N return
	opOutRedirectTCP               // meta l4proto tcp redirect to :P
	opOutMark                      // meta l4proto P meta mark set M
	opDropEcho                     // iifname @lan_ifaces icmp type echo-request drop (icmpv6 for family 6)
	opDropUnreach                  // iifname @lan_ifaces icmp type destination-unreachable icmp code != frag-needed drop (icmpv6 type destination-unreachable for family 6)
	opDirect4Return                // ip daddr @direct4 return
	opDirect6Return                // ip6 daddr @direct6 return
	opDropInvalidTCP               // iifname @lan_ifaces meta l4proto tcp ct state invalid drop
	opOffload4                     // iifname @lan_ifaces ip daddr @direct4 flow add @ft
	opOffload6                     // iifname @lan_ifaces ip6 daddr @direct6 flow add @ft
)

// IP protocol numbers and the address families of a TPROXY rule.
const (
	protoTCP = 6
	protoUDP = 17
)

type rule struct {
	op     ruleOp
	proto  uint8  // protoTCP or protoUDP (opTProxy)
	family int    // 4 or 6 (opTProxy)
	port   uint16 // opRedirectTCP, opTProxy
	mark   uint32 // opOwnMarkReturn: socksgate's mark; opTransparentTCP, opTProxy, opLoopTProxy, opOutMark: the TPROXY mark
	id     uint32 // opSkuidReturn, opSkgidReturn
}

type chainPlan struct {
	name     string
	typ      string // "filter", "nat" or "route"
	output   bool   // hook output; otherwise prerouting (or forward)
	forward  bool   // hook forward
	priority int32  // -150 (mangle), -100 (dstnat), -300 (raw) or 10 (after the filter)
	rules    []rule
}

type tablePlan struct {
	name             string
	owned            bool // NFT_TABLE_F_OWNER: on_crash open
	lan              []string
	bypass4, bypass6 []addrRange
	direct           bool // the direct sets exist (Spec.Direct is not empty)
	direct4, direct6 []addrRange
	// offload: flowtable ft exists, with the devices the install finds (Spec.offloadDevices).
	offload bool
	chains  []chainPlan
}

// plan turns a (defaulted, valid) Spec into the table's contents.
//
// Why the chains and their order look the way they do:
//
//   - Both chains hook prerouting, so they see traffic *forwarded* through the
//     router and traffic addressed to it, never what the router sends itself.
//   - The TPROXY chain is a filter chain at mangle priority (-150): TPROXY must
//     assign the socket and set the mark before the routing decision, and the
//     conventional mangle slot runs before nat's dstnat (-100), so a packet
//     TPROXY took is never also REDIRECTed. Conntrack (-200) has already run,
//     which the nat chain needs: it sees only the first packet of a connection,
//     and REDIRECT's translation is applied to the rest by conntrack.
//   - Each chain starts with the same exemptions, cheapest first, so nothing
//     that must not be captured reaches a capture rule:
//     1. packets carrying socksgate's own mark (its upstream and direct
//     sockets, if they are ever routed through prerouting, e.g. from a
//     container or a later output chain): capturing them would loop;
//     2. link-layer broadcast and multicast (DHCP, mDNS, SSDP...): they belong
//     to the LAN, and a TPROXY rule would steal a local daemon's broadcasts;
//     3. `fib daddr type local`: traffic to the router itself, such as its
//     explicit proxy ports, DNS or SSH, is delivered untouched;
//     4. the bypass sets, one per family; in an inet table an address match
//     is only meaningful after `meta nfproto` says which header it is.
//   - Then the capture rules, restricted to the LAN interfaces. TPROXY needs a
//     family per rule in an inet table, so there is one rule per family; each
//     sets the TPROXY mark (the policy rule routes it to `local default dev
//     lo`, which is what makes the forwarded packet local) and accepts.
//   - TPROXY for TCP is preceded by `socket transparent 1`: packets of an
//     established TPROXY connection already have a transparent socket and only
//     need the mark, which skips the listener lookup.
//   - The TPROXY chain also lets through packets conntrack has as replies (`ct
//     direction reply`): a LAN host answering a connection that came from
//     outside (a port forward, allowed inbound IPv6) is not a flow of its own.
//     The nat chain needs no such rule: it only sees a connection's first packet.
//   - Which in turn needs the raw output chain: a reply socket sends a full-cone
//     UDP reply from a remote the client never wrote to, and conntrack would
//     record that as a new connection, making the client's next datagram to that
//     remote a "reply" the TPROXY chain lets go direct. Reply sockets are the
//     only sockets of socksgate that send UDP from an address that is not the
//     router's (`fib saddr type != local`, with socksgate's mark): those packets
//     are not tracked.
//   - on_crash closed: a TPROXY rule whose socket is gone simply does not
//     match, and the packet would be forwarded as if there were no rule. So
//     after the TPROXY rules, LAN UDP is dropped and LAN TCP (tproxy mode) is
//     reset, the same prompt failure a REDIRECT to a closed port gives. With
//     on_crash open those rules are absent on purpose: the table vanishes with
//     the process anyway, and while it lives the listener takes everything.
//
// The router's own traffic (RouterCapture) never passes prerouting on its way
// out, so it is taken in the output hook, where TPROXY cannot work (it assigns
// a socket to a packet being received):
//   - TCP in REDIRECT mode: a nat output chain redirects it to the transparent
//     TCP port (REDIRECT in output rewrites the destination to loopback), and
//     SO_ORIGINAL_DST gives the original destination as for the LAN.
//   - UDP, and TCP in TPROXY mode: a route output chain sets the TPROXY mark.
//     A route chain re-runs the routing decision when it changes the mark, so
//     the fwmark rule sends the packet to `local default dev lo`; it comes back
//     in on lo, still marked, and the prerouting TPROXY chain's `iifname "lo"
//     meta mark M` rules hand it to the transparent listener. Nothing but
//     that mark makes a packet arrive on lo with a foreign destination.
//   - Both output chains start with the exemptions the LAN's have, minus what
//     means nothing for locally generated packets (pkttype): socksgate's own
//     mark (its upstream and direct sockets, its replies: no loop), the
//     excluded socket owners (meta skuid/skgid), the router's own addresses
//     and loopback (`fib daddr type local`: every reply a transparent listener
//     sends the router's own client goes there), and the bypass sets. The route
//     chain also lets replies through (`ct direction reply`): the router's
//     answers to connections that came from outside (its SSH, a port it
//     serves) are not flows of its own; the nat chain sees only first packets.
//   - on_crash closed holds here too without a rule of its own: a REDIRECT
//     to a closed port is reset, and a marked packet TPROXY found no socket
//     for is delivered locally, where no socket has its foreign address (a
//     reset, a port unreachable). Either way nothing leaves direct.
//
// REDIRECT sees a connection only through conntrack, and conntrack takes up a
// TCP connection it has not seen begin only from a packet that could continue
// one (an ACK, with or without data: nf_conntrack_tcp_loose). A FIN or a reset
// of a connection it does not know is invalid, has no conntrack entry, and so
// is never redirected: the router forwards it to its destination, from the LAN
// host's address, data a FIN carries included. That happens whenever the LAN
// host closes a connection this router never saw: one that went through the
// other router of an HA pair before the gateway address moved
// (TestHAPairFailover counted hundreds of such packets at wan), or one begun
// before a reboot. So in REDIRECT mode a filter chain in the forward hook drops
// LAN TCP that conntrack finds invalid, after the bypass sets (what is never
// captured is routed as it is); every other LAN TCP to a captured destination is
// redirected, and so never forwarded. (TPROXY needs no such rule: it takes every
// packet, whatever conntrack thinks, and the listener answers it with a reset.)
//
// ICMP is routed, not proxied. With transparent.icmp block, the same forward
// chain drops the LAN's ICMP echo requests and ICMPv6 echo requests:
//   - The forward hook sees exactly what the router would send on, so pings to
//     the router itself (its LAN address, a diagnostic everyone uses) pass
//     without an exemption, and nothing but forwarded packets can match.
//   - The bypass sets come first, as in the capture chains: a destination that
//     is never captured (the LAN's other subnets, private space, what the admin
//     listed) is reached directly by TCP and UDP too, so a ping there is no leak.
//     The fake-ip ranges are not in them (Capture): a ping there is dropped.
//   - Echo requests (type 8, ICMPv6 128) are dropped, and destination
//     unreachable (ICMPv6 type 1; IPv4 type 3 but for code 4, fragmentation
//     needed). A LAN host sends those about a datagram it received: for captured
//     UDP that is a datagram socksgate relayed from its reply socket (port
//     unreachable once the client closed its socket, measured in TestLeak with
//     quic-go's client), and conntrack relates the error to the captured flow,
//     so nothing tells it from one about a forwarded flow. The remote never sent
//     that datagram; forwarded, the error would reach it directly from the
//     router's address. Dropped, an inbound datagram to a closed LAN port looks
//     filtered instead of refused. Packet too big (ICMPv6 type 2, IPv4 code 4:
//     path MTU discovery), time exceeded and parameter problem pass, and so do
//     neighbour discovery and router advertisements, which are link-local and
//     never forwarded anyway.
//   - At mangle priority (-150), before a firewall's filter chains (0), so an
//     accept there (fw4's "lan to wan accept") cannot let them out: a drop in
//     any base chain is final.
//   - The router's own pings are left alone even with RouterCapture: watchdogs
//     and multi-WAN trackers (OpenWrt's watchcat, mwan3track) judge the uplink by
//     them and would reboot the router or fail over a healthy link. They are
//     the router's diagnostics, not a LAN host's traffic going around the proxy.
//
// transparent.offload puts the direct flows in a flowtable (nf_flow_table's software fast
// path), so that once established they cost the router what an offloaded flow costs (a lookup
// at the ingress hook and a transmit), less than plain routing with conntrack:
//   - `flow add @ft` in a forward chain of its own, for what arrives on a LAN interface bound
//     for the direct sets: only flows the rules send direct, whatever the kernel would do with
//     the rest; the reply direction is in the same conntrack entry, so it is offloaded too.
//   - At priority 10, after the firewall's filter chains (0): a packet fw4 or any filter drops
//     never reaches the rule, so no flow is offloaded that the firewall refused (an offloaded
//     flow skips the forward hook, and with it every later verdict).
//   - The kernel adds a connection only once it is established (TCP) or confirmed (UDP), not
//     after a FIN or a reset, and never one with a helper or sequence adjustment; NAT
//     (masquerade) is applied on the fast path from the conntrack entry.
//   - The flowtable's devices must exist when it is created: the LAN interfaces, the admin's
//     transparent.offload_devices and the devices of the default routes, those that exist.
//     A new default route on another device (a PPPoE link that came back as a new device)
//     re-installs the table; the kernel drops a device that goes away from the flowtable itself.
func (s Spec) plan() tablePlan {
	t := tablePlan{
		name:  s.Table,
		owned: s.OnCrash == configs.OnCrashOpen,
		lan:   s.lanInterfaces(),
	}
	t.bypass4, t.bypass6 = mergeBypass(s.Bypass)
	if len(s.Capture) > 0 {
		c4, c6 := mergeBypass(s.Capture)
		t.bypass4, t.bypass6 = subtractRanges(t.bypass4, c4), subtractRanges(t.bypass6, c6)
	}

	if len(s.Direct) > 0 {
		t.direct = true
		t.direct4, t.direct6 = mergeBypass(s.Direct)
		if len(s.Capture) > 0 {
			c4, c6 := mergeBypass(s.Capture)
			t.direct4, t.direct6 = subtractRanges(t.direct4, c4), subtractRanges(t.direct6, c6)
		}
	}

	exemptions := []rule{
		{op: opOwnMarkReturn, mark: s.Mark},
		{op: opNotUnicast},
		{op: opLocalReturn},
		{op: opBypass4Return},
		{op: opBypass6Return},
	}
	outExempt := []rule{{op: opLocalReturn}, {op: opBypass4Return}, {op: opBypass6Return}}
	if t.direct {
		// After the bypass sets, which hold what is never worth capturing and stay first.
		ds := []rule{{op: opDirect4Return}, {op: opDirect6Return}}
		exemptions = append(exemptions, ds...)
		outExempt = append(outExempt, ds...)
	}

	if s.needsPolicyRouting() {
		c := chainPlan{name: chainMangle, typ: "filter", priority: -150}
		c.rules = append(c.rules, exemptions[0], rule{op: opReplyReturn})
		if s.hijackDNS() {
			// Hijacked DNS is the nat chain's: TPROXY must not take it first.
			c.rules = append(c.rules, rule{op: opDNSReturn, proto: protoUDP}, rule{op: opDNSReturn, proto: protoTCP})
		}
		c.rules = append(c.rules, exemptions[1:]...)
		if s.tproxyTCP() {
			c.rules = append(c.rules,
				rule{op: opTransparentTCP, mark: s.TProxyMark},
				rule{op: opTProxy, proto: protoTCP, family: 4, port: s.TCPPort, mark: s.TProxyMark},
				rule{op: opTProxy, proto: protoTCP, family: 6, port: s.TCPPort, mark: s.TProxyMark},
			)
		}
		if s.captureUDP() {
			c.rules = append(c.rules,
				rule{op: opTProxy, proto: protoUDP, family: 4, port: s.UDPPort, mark: s.TProxyMark},
				rule{op: opTProxy, proto: protoUDP, family: 6, port: s.UDPPort, mark: s.TProxyMark},
			)
		}
		if s.routerTCP() && s.tproxyTCP() {
			c.rules = append(c.rules,
				rule{op: opLoopTProxy, proto: protoTCP, family: 4, port: s.TCPPort, mark: s.TProxyMark},
				rule{op: opLoopTProxy, proto: protoTCP, family: 6, port: s.TCPPort, mark: s.TProxyMark},
			)
		}
		if s.routerUDP() {
			c.rules = append(c.rules,
				rule{op: opLoopTProxy, proto: protoUDP, family: 4, port: s.UDPPort, mark: s.TProxyMark},
				rule{op: opLoopTProxy, proto: protoUDP, family: 6, port: s.UDPPort, mark: s.TProxyMark},
			)
		}
		if s.failClosed() {
			if s.captureUDP() {
				c.rules = append(c.rules, rule{op: opDropUDP})
			}
			if s.tproxyTCP() {
				c.rules = append(c.rules, rule{op: opRejectTCP})
			}
		}
		t.chains = append(t.chains, c)
	}
	if s.captureUDP() {
		t.chains = append(t.chains, chainPlan{name: chainRawOut, typ: "filter", output: true, priority: -300,
			rules: []rule{{op: opNotrackReplies, mark: s.Mark}}})
	}
	if s.redirectTCP() || s.hijackDNS() {
		c := chainPlan{name: chainNAT, typ: "nat", priority: -100}
		c.rules = append(c.rules, exemptions[0])
		if s.hijackDNS() {
			// Before the exemptions for the router's own addresses and the bypass: DNS to
			// any address is answered by socksgate, that of the router's dnsmasq included.
			// Conntrack gives the answers the address the client asked.
			c.rules = append(c.rules,
				rule{op: opRedirectDNS, proto: protoUDP, port: s.DNSPort},
				rule{op: opRedirectDNS, proto: protoTCP, port: s.DNSPort})
		}
		c.rules = append(c.rules, exemptions[1:]...)
		if s.redirectTCP() {
			c.rules = append(c.rules, rule{op: opRedirectTCP, port: s.TCPPort})
		}
		t.chains = append(t.chains, c)
	}
	// The router's own traffic: see above.
	owners := func() []rule {
		var rs []rule
		for _, u := range s.ExcludeUIDs {
			rs = append(rs, rule{op: opSkuidReturn, id: u})
		}
		for _, g := range s.ExcludeGIDs {
			rs = append(rs, rule{op: opSkgidReturn, id: g})
		}
		return rs
	}
	if s.routerUDP() || s.routerTCP() && s.tproxyTCP() {
		c := chainPlan{name: chainOutRte, typ: "route", output: true, priority: -150}
		c.rules = append(c.rules, exemptions[0], rule{op: opReplyReturn})
		c.rules = append(c.rules, owners()...)
		c.rules = append(c.rules, outExempt...)
		if s.routerTCP() && s.tproxyTCP() {
			c.rules = append(c.rules, rule{op: opOutMark, proto: protoTCP, mark: s.TProxyMark})
		}
		if s.routerUDP() {
			c.rules = append(c.rules, rule{op: opOutMark, proto: protoUDP, mark: s.TProxyMark})
		}
		t.chains = append(t.chains, c)
	}
	if s.routerTCP() && s.redirectTCP() {
		c := chainPlan{name: chainOutNAT, typ: "nat", output: true, priority: -100}
		c.rules = append(c.rules, exemptions[0])
		c.rules = append(c.rules, owners()...)
		c.rules = append(c.rules, outExempt...)
		c.rules = append(c.rules, rule{op: opOutRedirectTCP, port: s.TCPPort})
		t.chains = append(t.chains, c)
	}
	var fwd []rule
	if s.redirectTCP() {
		fwd = append(fwd, rule{op: opDropInvalidTCP})
	}
	if s.blockICMP() {
		fwd = append(fwd, rule{op: opDropEcho, family: 4}, rule{op: opDropEcho, family: 6},
			rule{op: opDropUnreach, family: 4}, rule{op: opDropUnreach, family: 6})
	}
	if len(fwd) > 0 {
		t.chains = append(t.chains, chainPlan{name: chainFwd, typ: "filter", forward: true, priority: -150,
			rules: append([]rule{{op: opBypass4Return}, {op: opBypass6Return}}, fwd...)})
	}
	if s.offload() {
		t.offload = true
		t.chains = append(t.chains, chainPlan{name: chainOffld, typ: "filter", forward: true, priority: 10,
			rules: []rule{{op: opOffload4}, {op: opOffload6}}})
	}
	return t
}

// withoutOffload is p without the flowtable and the chain that adds flows to it.
func (p tablePlan) withoutOffload() tablePlan {
	p.offload = false
	p.chains = slices.DeleteFunc(slices.Clone(p.chains), func(c chainPlan) bool { return c.name == chainOffld })
	return p
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// String renders r exactly as `nft list table` shows it.
func (r rule) String() string {
	const lan = "iifname @" + setLAN + " "
	switch r.op {
	case opOwnMarkReturn:
		return fmt.Sprintf("meta mark & 0x%08x == 0x%08x return", r.mark, r.mark)
	case opNotUnicast:
		return "meta pkttype != host return"
	case opLocalReturn:
		return "fib daddr type local return"
	case opBypass4Return:
		return "ip daddr @" + setBypass4 + " return"
	case opBypass6Return:
		return "ip6 daddr @" + setBypass6 + " return"
	case opDirect4Return:
		return "ip daddr @" + setDirect4 + " return"
	case opDirect6Return:
		return "ip6 daddr @" + setDirect6 + " return"
	case opRedirectTCP:
		return fmt.Sprintf(lan+"meta l4proto tcp redirect to :%d", r.port)
	case opTransparentTCP:
		return fmt.Sprintf(lan+"meta l4proto tcp socket transparent 1 meta mark set 0x%08x accept", r.mark)
	case opTProxy:
		nfproto, ip := "ipv4", "ip"
		if r.family == 6 {
			nfproto, ip = "ipv6", "ip6"
		}
		return fmt.Sprintf(lan+"meta l4proto %s meta nfproto %s tproxy %s to :%d meta mark set 0x%08x accept",
			protoName(r.proto), nfproto, ip, r.port, r.mark)
	case opDropUDP:
		return lan + "meta l4proto udp drop"
	case opRejectTCP:
		return lan + "meta l4proto tcp reject with tcp reset"
	case opReplyReturn:
		return "ct direction reply return"
	case opNotrackReplies:
		return fmt.Sprintf("meta mark & 0x%08x == 0x%08x meta l4proto udp fib saddr type != local notrack", r.mark, r.mark)
	case opDNSReturn:
		return fmt.Sprintf(lan+"%s dport 53 return", protoName(r.proto))
	case opRedirectDNS:
		return fmt.Sprintf(lan+"%s dport 53 redirect to :%d", protoName(r.proto), r.port)
	case opLoopTProxy:
		nfproto, ip := "ipv4", "ip"
		if r.family == 6 {
			nfproto, ip = "ipv6", "ip6"
		}
		return fmt.Sprintf(`iifname "lo" meta mark 0x%08x meta l4proto %s meta nfproto %s tproxy %s to :%d accept`,
			r.mark, protoName(r.proto), nfproto, ip, r.port)
	case opSkuidReturn:
		return fmt.Sprintf("meta skuid %d return", r.id)
	case opSkgidReturn:
		return fmt.Sprintf("meta skgid %d return", r.id)
	case opOutRedirectTCP:
		return fmt.Sprintf("meta l4proto tcp redirect to :%d", r.port)
	case opOutMark:
		return fmt.Sprintf("meta l4proto %s meta mark set 0x%08x", protoName(r.proto), r.mark)
	case opDropEcho:
		if r.family == 6 {
			return lan + "icmpv6 type echo-request drop"
		}
		return lan + "icmp type echo-request drop"
	case opDropUnreach:
		if r.family == 6 {
			return lan + "icmpv6 type destination-unreachable drop"
		}
		return lan + "icmp type destination-unreachable icmp code != frag-needed drop"
	case opDropInvalidTCP:
		return lan + "meta l4proto tcp ct state invalid drop"
	case opOffload4:
		return lan + "ip daddr @" + setDirect4 + " flow add @" + flowtableFT
	case opOffload6:
		return lan + "ip6 daddr @" + setDirect6 + " flow add @" + flowtableFT
	}
	return fmt.Sprintf("# unknown rule op %d", r.op)
}

// Render returns the ruleset in nft syntax (`table inet socksgate { ... }`),
// preceded by the policy routing it needs as comments (that part is installed
// with netlink, not nft). It is pure: no root, no kernel. An invalid Spec
// renders as a comment naming the problems; call Validate to get them as an error.
func (s Spec) Render() string {
	if err := s.Validate(); err != nil {
		return "# invalid spec: " + strings.ReplaceAll(err.Error(), "\n", "\n#   ") + "\n"
	}
	s = s.withDefaults()
	p := s.plan()
	var b strings.Builder
	fmt.Fprintf(&b, "# socksgate kernel steering (on_crash: %s", s.OnCrash)
	if p.owned {
		b.WriteString("; table owned by socksgate's netlink socket, NFT_TABLE_F_OWNER")
	}
	b.WriteString(")\n")
	if s.needsPolicyRouting() {
		b.WriteString("# policy routing for TPROXY (installed with netlink):\n")
		for _, pr := range s.policyLines() {
			b.WriteString("#   " + pr + "\n")
		}
	}
	if len(p.chains) == 0 {
		b.WriteString("# nothing is captured: no LAN interface, or no TCP and no UDP port\n")
	}
	fmt.Fprintf(&b, "table inet %s {\n", p.name)
	writeSet := func(name, typ string, interval bool, elems []string) {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", name, typ)
		if interval {
			b.WriteString("\t\tflags interval\n")
		}
		if len(elems) > 0 {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(elems, ", "))
		}
		b.WriteString("\t}\n")
	}
	var lan []string
	for _, n := range p.lan {
		lan = append(lan, strconv.Quote(n))
	}
	writeSet(setLAN, "ifname", false, lan)
	b.WriteString("\n")
	writeSet(setBypass4, "ipv4_addr", true, rangeStrings(p.bypass4))
	b.WriteString("\n")
	writeSet(setBypass6, "ipv6_addr", true, rangeStrings(p.bypass6))
	if p.direct {
		b.WriteString("\n")
		writeSet(setDirect4, "ipv4_addr", true, rangeStrings(p.direct4))
		b.WriteString("\n")
		writeSet(setDirect6, "ipv6_addr", true, rangeStrings(p.direct6))
	}
	if p.offload {
		devs := s.staticOffloadDevices()
		for i, d := range devs {
			devs[i] = strconv.Quote(d)
		}
		b.WriteString("\n\t# devices: these and those of the default routes, the ones that exist at install\n")
		fmt.Fprintf(&b, "\tflowtable %s {\n\t\thook ingress priority filter\n\t\tdevices = { %s }\n\t}\n", flowtableFT, strings.Join(devs, ", "))
	}
	for _, c := range p.chains {
		prio, hook := "mangle", "prerouting"
		switch {
		case c.priority == -100 && c.output:
			prio = "-100" // nft names dstnat in prerouting only
		case c.priority == -100:
			prio = "dstnat"
		case c.priority == -300:
			prio = "raw"
		case c.priority == 10:
			prio = "filter + 10"
		}
		switch {
		case c.output:
			hook = "output"
		case c.forward:
			hook = "forward"
		}
		fmt.Fprintf(&b, "\n\tchain %s {\n\t\ttype %s hook %s priority %s; policy accept;\n", c.name, c.typ, hook, prio)
		for _, r := range c.rules {
			b.WriteString("\t\t" + r.String() + "\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// policyLines describes the policy routing in `ip` syntax.
func (s Spec) policyLines() []string {
	return []string{
		fmt.Sprintf("ip -4 rule add fwmark 0x%x lookup %d priority %d", s.TProxyMark, s.RouteTable, s.RulePriority),
		fmt.Sprintf("ip -6 rule add fwmark 0x%x lookup %d priority %d", s.TProxyMark, s.RouteTable, s.RulePriority),
		fmt.Sprintf("ip -4 route add local 0.0.0.0/0 dev lo table %d", s.RouteTable),
		fmt.Sprintf("ip -6 route add local ::/0 dev lo table %d", s.RouteTable),
	}
}

func rangeStrings(rs []addrRange) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}
