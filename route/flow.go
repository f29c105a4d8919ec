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

	"github.com/socksgate/socksgate/upstream"
)

// Inbound kinds: where a flow entered socksgate.
const (
	InboundRedirect = "redirect" // transparent TCP, nftables REDIRECT
	InboundTProxy   = "tproxy"   // transparent TCP or UDP, nftables TPROXY
	InboundHTTP     = "http"     // explicit HTTP proxy port
	InboundSOCKS    = "socks"    // explicit SOCKS port
)

// Flow is one client connection (TCP) or UDP session as the router sees it.
type Flow struct {
	Network string         // "tcp" or "udp"
	Src     netip.AddrPort // the client
	Dst     netip.AddrPort // the destination address; zero when the client gave only a name
	Host    string         // destination name, when known (HTTP, SOCKS4a/5 domain, sniffed SNI/Host)
	Port    uint16         // destination port when Dst is zero (name-only flows); else Dst.Port()
	Inbound string         // one of the Inbound constants
}

// DstPort is the destination port, whether the flow has an address or only a name.
func (f Flow) DstPort() uint16 {
	if f.Dst.IsValid() {
		return f.Dst.Port()
	}
	return f.Port
}

// Address is the "host:port" to ask an upstream for: the name when the flow has one (so the
// upstream resolves it), else the address.
func (f Flow) Address() string {
	if f.Host != "" {
		return net.JoinHostPort(f.Host, strconv.Itoa(int(f.DstPort())))
	}
	return f.Dst.String()
}

// Action is what the router decided for a flow.
type Action int

const (
	ActionProxy  Action = iota // through Decision.Upstream
	ActionDirect               // straight to the destination (Decision.Upstream is the direct dialer)
	ActionBlock                // refuse the flow
)

func (a Action) String() string {
	switch a {
	case ActionProxy:
		return "proxy"
	case ActionDirect:
		return "direct"
	case ActionBlock:
		return "block"
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

// Decision is the router's answer for one flow.
type Decision struct {
	Action   Action
	Upstream upstream.Upstream // set for ActionProxy and ActionDirect
	Rule     string            // the rule that matched, for the flow log
	Member   string            // the group member that carried the flow, once dialed through a group
}

// Router maps a flow to a decision. It must be safe for concurrent use.
type Router interface {
	Route(ctx context.Context, f Flow) Decision
}
