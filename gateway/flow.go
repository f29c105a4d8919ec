// Package gateway decides where each flow goes and carries it there: the Flow model, the Router
// that maps a flow to a Decision, the Upstream interface every proxy kind implements, the relay,
// and Run, which wires listeners, kernel rules and shutdown together. It parses no wire protocol:
// captured and explicit inbounds hand it a connection and a Flow.
package gateway

import (
	"context"
	"net"
	"net/netip"
	"strconv"
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

// Upstream is one way out: a proxy (SOCKS5, SOCKS4/4a, HTTP CONNECT, possibly chained) or direct.
// Implementations must mark every socket they open so that socksgate's own traffic is never
// captured again.
type Upstream interface {
	// DialContext connects to address ("host:port") through the upstream.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens a UDP association; WriteTo carries the real destination. Upstreams
	// that cannot carry UDP return an error wrapping ErrUDPUnsupported.
	ListenPacket(ctx context.Context) (net.PacketConn, error)
	// String names the upstream for logs, with any password redacted.
	String() string
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
	Upstream Upstream // set for ActionProxy and ActionDirect
	Rule     string   // the rule that matched, for the flow log
	Member   string   // the group member that carried the flow, once dialed through a group
}

// Router maps a flow to a decision. It must be safe for concurrent use.
type Router interface {
	Route(ctx context.Context, f Flow) Decision
}
