// Package route decides where a flow goes: the Flow as the router sees it (network, source,
// destination address or name, inbound), the rules compiled into an index that answers in
// O(log n) without allocating, and the Decision (proxy through an upstream, direct, or block,
// with the rule that matched). It dials nothing: the gateway carries out the decision.
package route

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/upstream"
)

// Network is a flow's transport, of the one vocabulary rules are written in (a rule's
// protocol matcher is a list of them): "tcp" or "udp" in rules, logs and Go's dial functions.
type Network = configs.Network

const (
	TCP = configs.ProtocolTCP
	UDP = configs.ProtocolUDP
)

// Inbound is where a flow entered socksgate.
type Inbound uint8

const (
	Redirect Inbound = iota + 1 // transparent TCP, nftables REDIRECT
	TProxy                      // transparent TCP or UDP, nftables TPROXY
	HTTP                        // explicit HTTP proxy port
	SOCKS                       // explicit SOCKS port
	// FromRouter is what the router itself sent (router.capture), taken in the output hook
	// and delivered to a transparent listener (REDIRECT or TPROXY alike): rules call it "router".
	FromRouter
)

// String is the inbound's name in logs, metrics and the flow list.
func (in Inbound) String() string {
	switch in {
	case Redirect:
		return "redirect"
	case TProxy:
		return "tproxy"
	case HTTP:
		return "http"
	case SOCKS:
		return "socks"
	case FromRouter:
		return "router"
	}
	return "inbound(" + strconv.Itoa(int(in)) + ")"
}

// Transparent reports whether the flow was captured from the LAN (rules call both kinds
// "transparent"); the router's own captured flows are FromRouter.
func (in Inbound) Transparent() bool { return in == Redirect || in == TProxy }

// Flow is one client connection (TCP) or UDP session as the router sees it.
type Flow struct {
	Network Network
	Src     netip.AddrPort // the client
	Dst     netip.AddrPort // the destination address; zero when the client gave only a name
	Host    string         // destination name, when known (HTTP, SOCKS4a/5 domain, sniffed SNI/Host)
	Port    uint16         // destination port when Dst is zero (name-only flows); else Dst.Port()
	From    NameSource     // where Host came from
	Inbound Inbound
}

// NameSource is where a flow's name came from, in order of trust (the client said it, the
// gateway's DNS answered it, the flow's bytes claim it).
type NameSource uint8

const (
	NameClient NameSource = iota // the client gave it: SOCKS4a/5 domain, CONNECT host, absolute URI
	NameDNS                      // the client connected to an address socksgate's DNS gave it for the name
	NameFakeIP                   // the client connected to the fake address socksgate's DNS gave it
	NameSniff                    // sniffed from the flow's first bytes (TLS SNI, HTTP Host): a claim
)

var nameSources = [...]string{NameClient: "client", NameDNS: "dns", NameFakeIP: "fakeip", NameSniff: "sniff"}

func (s NameSource) String() string {
	if int(s) < len(nameSources) {
		return nameSources[s]
	}
	return "unknown"
}

// MarshalText implements encoding.TextMarshaler (the flow list shows it).
func (s NameSource) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Sniffed reports whether Host is only a claim the flow's bytes made (see DialAddress).
func (f Flow) Sniffed() bool { return f.Host != "" && f.From == NameSniff }

// DialAddress is what to ask an upstream for: Address, except for a sniffed name, which is used
// for routing and handed upstream only when override is set, so that the address the client
// chose (curl -4, a hosts-file entry) stands.
func (f Flow) DialAddress(override bool) string {
	if f.Sniffed() && !override && f.Dst.IsValid() {
		return f.Dst.String()
	}
	return f.Address()
}

// DstPort is the destination port, whether the flow has an address or only a name.
func (f Flow) DstPort() uint16 {
	if f.Dst.IsValid() {
		return f.Dst.Port()
	}
	return f.Port
}

// Address is the "host:port" to ask an upstream for: the name when the flow has one (so the
// upstream resolves it), else the address. A sniffed name is a claim: see DialAddress.
func (f Flow) Address() string {
	if f.Host != "" {
		return net.JoinHostPort(f.Host, strconv.Itoa(int(f.DstPort())))
	}
	return f.Dst.String()
}

// Action is what the router decided for a flow: the action of the rule that matched, of the
// same type.
type Action = configs.Action

const (
	ActionProxy  = configs.ActionProxy  // through Decision.Upstream
	ActionDirect = configs.ActionDirect // straight to the destination (Decision.Upstream is the direct dialer)
	ActionBlock  = configs.ActionBlock  // refuse the flow
)

// Decision is the router's answer for one flow.
type Decision struct {
	Action   Action
	Upstream upstream.Upstream // set for ActionProxy and ActionDirect
	Rule     string            // the rule that matched, for the flow log
	Way      string            // the upstream or group the rule names, by its config name; "direct" for a direct rule
	Member   string            // the group member that carried the flow, once dialed through a group
	// TLS is how the flow's TLS to its proxy began, once dialed through an https or socks5+tls
	// upstream: "resumed" (an earlier flow's session) or "full" (a full handshake); "" none.
	TLS string
	// Addr is the address a name-only flow's name was resolved to and matched by the rules
	// on addresses (see RuleRouter.Route); a direct dial goes to it, not to the name again.
	Addr netip.Addr
	// ByDst says the rule matched the destination's address with a dst matcher: it names
	// that destination explicitly (what a flow to the router itself needs, see the gateway).
	ByDst bool

	hits *atomic.Uint64 // the rule's hit counter (RuleRouter.Hits); nil: not a RuleRouter's
}

// CountHit counts one flow decided by the decision's rule, for RuleRouter.Hits. The gateway
// calls it once per flow (a flow may be routed more than once while it is dialled).
func (d Decision) CountHit() {
	if d.hits != nil {
		d.hits.Add(1)
	}
}

// Router maps a flow to a decision. It must be safe for concurrent use.
type Router interface {
	Route(ctx context.Context, f Flow) Decision
}

// MarshalText writes the name, so that logs and JSON show "socks", not 4.
func (in Inbound) MarshalText() ([]byte, error) { return []byte(in.String()), nil }
