package configs

import (
	"fmt"
	"strings"
)

// The enumerated settings are typed values, parsed once when the file is read
// (as Duration is): each type has one table of its names, its UnmarshalText
// refuses any other value with the allowed ones (the walk adds the line and the
// field path), and String and MarshalText give the name back. The zero value of
// each is its default, except Action and the rule matchers (Network, Inbound),
// whose zero value is "not set".

// symbol is one value of an enumerated type with its name in the file.
type symbol[T ~uint8] struct {
	v    T
	name string
}

// symbols is an enumerated type's one table, in the order messages list the
// names.
type symbols[T ~uint8] []symbol[T]

// name returns v's name, or kind(n) for a value outside the table.
func (s symbols[T]) name(v T, kind string) string {
	for _, e := range s {
		if e.v == v {
			return e.name
		}
	}
	return fmt.Sprintf("%s(%d)", kind, uint8(v))
}

// allowed lists the names: "a, b, c".
func (s symbols[T]) allowed() string {
	names := make([]string, len(s))
	for i, e := range s {
		names[i] = e.name
	}
	return strings.Join(names, ", ")
}

// marshal returns v's name, or an error for a value outside the table.
func (s symbols[T]) marshal(v T, kind string) ([]byte, error) {
	for _, e := range s {
		if e.v == v {
			return []byte(e.name), nil
		}
	}
	return nil, errorf("must be one of %s (got %s)", s.allowed(), s.name(v, kind))
}

// parse reads a name, case-insensitively and without surrounding space.
func (s symbols[T]) parse(text []byte) (T, error) {
	t := strings.ToLower(strings.TrimSpace(string(text)))
	for _, e := range s {
		if e.name == t {
			return e.v, nil
		}
	}
	return 0, errorf("must be one of %s (got %q)", s.allowed(), string(text))
}

// LogLevel is log.level. The zero value is LogInfo.
type LogLevel uint8

const (
	LogInfo LogLevel = iota
	LogDebug
	LogWarn
	LogError
)

var logLevels = symbols[LogLevel]{{LogDebug, "debug"}, {LogInfo, "info"}, {LogWarn, "warn"}, {LogError, "error"}}

func (v LogLevel) String() string                { return logLevels.name(v, "log.level") }
func (v LogLevel) MarshalText() ([]byte, error)  { return logLevels.marshal(v, "log.level") }
func (v *LogLevel) UnmarshalText(b []byte) error { return unmarshal(logLevels, v, b) }

// LogFormat is log.format. The zero value is LogText.
type LogFormat uint8

const (
	LogText LogFormat = iota
	LogJSON
)

var logFormats = symbols[LogFormat]{{LogText, "text"}, {LogJSON, "json"}}

func (v LogFormat) String() string                { return logFormats.name(v, "log.format") }
func (v LogFormat) MarshalText() ([]byte, error)  { return logFormats.marshal(v, "log.format") }
func (v *LogFormat) UnmarshalText(b []byte) error { return unmarshal(logFormats, v, b) }

// TCPMode is transparent.tcp_mode. The zero value is TCPModeRedirect.
type TCPMode uint8

const (
	// TCPModeRedirect is nat REDIRECT; the original destination comes from
	// SO_ORIGINAL_DST.
	TCPModeRedirect TCPMode = iota
	// TCPModeTProxy is TPROXY; the original destination is the accepted
	// socket's local address.
	TCPModeTProxy
)

var tcpModes = symbols[TCPMode]{{TCPModeRedirect, "redirect"}, {TCPModeTProxy, "tproxy"}}

func (v TCPMode) String() string                { return tcpModes.name(v, "tcp_mode") }
func (v TCPMode) MarshalText() ([]byte, error)  { return tcpModes.marshal(v, "tcp_mode") }
func (v *TCPMode) UnmarshalText(b []byte) error { return unmarshal(tcpModes, v, b) }

// UDPFallback is transparent.udp_without_support: what a UDP flow does when
// its route gives an upstream that cannot carry UDP. The zero value is
// UDPBlock.
type UDPFallback uint8

const (
	UDPBlock UDPFallback = iota
	UDPDirect
)

var udpFallbacks = symbols[UDPFallback]{{UDPBlock, "block"}, {UDPDirect, "direct"}}

func (v UDPFallback) String() string { return udpFallbacks.name(v, "udp_without_support") }
func (v UDPFallback) MarshalText() ([]byte, error) {
	return udpFallbacks.marshal(v, "udp_without_support")
}
func (v *UDPFallback) UnmarshalText(b []byte) error { return unmarshal(udpFallbacks, v, b) }

// QUICMode is transparent.quic: what captured UDP to port 443 (QUIC, HTTP/3) meets. The
// zero value is QUICSniff.
type QUICMode uint8

const (
	// QUICSniff: the server name of the client's Initial packets routes the session, on the
	// sniff ports (transparent.sniff), like TLS SNI on TCP.
	QUICSniff QUICMode = iota
	// QUICBlock: captured UDP to port 443 is dropped, so browsers fall back to TCP, where
	// every rule sees the TLS SNI.
	QUICBlock
)

var quicModes = symbols[QUICMode]{{QUICSniff, "sniff"}, {QUICBlock, "block"}}

func (v QUICMode) String() string                { return quicModes.name(v, "quic") }
func (v QUICMode) MarshalText() ([]byte, error)  { return quicModes.marshal(v, "quic") }
func (v *QUICMode) UnmarshalText(b []byte) error { return unmarshal(quicModes, v, b) }

// ICMPMode is transparent.icmp: what the LAN's pings to destinations that would be
// forwarded out (not the router, not the bypass) meet. ICMP is routed, not proxied: no
// SOCKS or HTTP upstream carries it. The zero value is ICMPPass.
type ICMPMode uint8

const (
	// ICMPPass: routed as usual; a ping reaches its destination directly.
	ICMPPass ICMPMode = iota
	// ICMPBlock: ICMP and ICMPv6 echo requests from the LAN interfaces that the router
	// would forward are dropped in socksgate's table, and so is destination unreachable
	// (but for IPv4's fragmentation needed): a LAN host sends it about a datagram
	// socksgate relayed, toward a remote that never sent it. Packet too big, time
	// exceeded, parameter problem, neighbour discovery and router advertisements are
	// left alone.
	ICMPBlock
)

var icmpModes = symbols[ICMPMode]{{ICMPPass, "pass"}, {ICMPBlock, "block"}}

func (v ICMPMode) String() string                { return icmpModes.name(v, "icmp") }
func (v ICMPMode) MarshalText() ([]byte, error)  { return icmpModes.marshal(v, "icmp") }
func (v *ICMPMode) UnmarshalText(b []byte) error { return unmarshal(icmpModes, v, b) }

// OnCrash is on_crash: what the kernel rules do when socksgate dies. The zero
// value is OnCrashClosed.
type OnCrash uint8

const (
	// OnCrashClosed: the rules outlive the process, so nothing leaks direct
	// while socksgate is down.
	OnCrashClosed OnCrash = iota
	// OnCrashOpen: the table is owned by the process and the kernel drops it
	// when socksgate dies.
	OnCrashOpen
)

var onCrashes = symbols[OnCrash]{{OnCrashClosed, "closed"}, {OnCrashOpen, "open"}}

func (v OnCrash) String() string                { return onCrashes.name(v, "on_crash") }
func (v OnCrash) MarshalText() ([]byte, error)  { return onCrashes.marshal(v, "on_crash") }
func (v *OnCrash) UnmarshalText(b []byte) error { return unmarshal(onCrashes, v, b) }

// Policy is a group's policy: how it picks a member. The zero value is
// PolicyFailover.
type Policy uint8

const (
	PolicyFailover Policy = iota
	PolicyRoundRobin
	PolicyLeastConnections
	PolicySelect  // the member chosen through the control API, kept across reloads and restarts
	PolicyURLTest // the member with the lowest health-check latency, within a tolerance
)

var policies = symbols[Policy]{
	{PolicyFailover, "failover"}, {PolicyRoundRobin, "round-robin"}, {PolicyLeastConnections, "least-connections"},
	{PolicySelect, "select"}, {PolicyURLTest, "url-test"}}

func (v Policy) String() string                { return policies.name(v, "policy") }
func (v Policy) MarshalText() ([]byte, error)  { return policies.marshal(v, "policy") }
func (v *Policy) UnmarshalText(b []byte) error { return unmarshal(policies, v, b) }

// OnDown is a group's on_down: what a flow does when every member is down.
// The zero value is OnDownBlock (fail closed).
type OnDown uint8

const (
	OnDownBlock OnDown = iota
	OnDownDirect
)

var onDowns = symbols[OnDown]{{OnDownBlock, "block"}, {OnDownDirect, "direct"}}

func (v OnDown) String() string                { return onDowns.name(v, "on_down") }
func (v OnDown) MarshalText() ([]byte, error)  { return onDowns.marshal(v, "on_down") }
func (v *OnDown) UnmarshalText(b []byte) error { return unmarshal(onDowns, v, b) }

// Network is a transport: a rule's protocol matcher, and a flow's network
// (route.Network is this type). The zero value is "not set".
type Network uint8

const (
	ProtocolTCP Network = iota + 1
	ProtocolUDP
)

var networks = symbols[Network]{{ProtocolTCP, "tcp"}, {ProtocolUDP, "udp"}}

// String is the network's name in rules, logs and Go's dial functions: "tcp"
// or "udp".
func (v Network) String() string                { return networks.name(v, "network") }
func (v Network) MarshalText() ([]byte, error)  { return networks.marshal(v, "network") }
func (v *Network) UnmarshalText(b []byte) error { return unmarshal(networks, v, b) }

// Inbound is a rule's inbound matcher: the kind of way in a flow took.
// InboundTransparent stands for both kinds of the LAN's capture (route.Redirect
// and route.TProxy), InboundRouter for the router's own (route.FromRouter); the mixed port's flows are http or socks by what the client
// spoke. The zero value is "not set".
type Inbound uint8

const (
	InboundTransparent Inbound = iota + 1
	InboundHTTP
	InboundSOCKS
	InboundDNS    // a DNS query to socksgate's resolver, routed by its name (RuleRouter.RouteQuery)
	InboundRouter // what the router itself sent, captured in the output hook (router.capture; route.FromRouter)
)

var inbounds = symbols[Inbound]{{InboundTransparent, "transparent"}, {InboundHTTP, "http"}, {InboundSOCKS, "socks"}, {InboundDNS, "dns"}, {InboundRouter, "router"}}

func (v Inbound) String() string                { return inbounds.name(v, "inbound") }
func (v Inbound) MarshalText() ([]byte, error)  { return inbounds.marshal(v, "inbound") }
func (v *Inbound) UnmarshalText(b []byte) error { return unmarshal(inbounds, v, b) }

// Action is what a rule does with the flows it matches (route.Action is this
// type). The zero value is "not set": Parse makes it ActionProxy when the rule
// names an upstream, and Validate refuses it otherwise.
type Action uint8

const (
	ActionProxy  Action = iota + 1 // through the rule's upstream or group
	ActionDirect                   // straight to the destination
	ActionBlock                    // refuse the flow
)

var actions = symbols[Action]{{ActionDirect, "direct"}, {ActionProxy, "proxy"}, {ActionBlock, "block"}}

func (v Action) String() string {
	if v == 0 {
		return ""
	}
	return actions.name(v, "action")
}
func (v Action) MarshalText() ([]byte, error) {
	if v == 0 {
		return []byte{}, nil
	}
	return actions.marshal(v, "action")
}
func (v *Action) UnmarshalText(b []byte) error { return unmarshal(actions, v, b) }

// unmarshal parses b into *v with the table s.
func unmarshal[T ~uint8](s symbols[T], v *T, b []byte) error {
	x, err := s.parse(b)
	if err != nil {
		return err
	}
	*v = x
	return nil
}

// BlockAnswer is dns.block_answer: how a name a rule blocks is answered. The zero value is
// BlockNXDOMAIN.
type BlockAnswer uint8

const (
	BlockNXDOMAIN    BlockAnswer = iota // NXDOMAIN for every type
	BlockUnspecified                    // 0.0.0.0 and :: for A and AAAA, NXDOMAIN for the rest
)

var blockAnswers = symbols[BlockAnswer]{{BlockNXDOMAIN, "nxdomain"}, {BlockUnspecified, "unspecified"}}

func (v BlockAnswer) String() string                { return blockAnswers.name(v, "block_answer") }
func (v BlockAnswer) MarshalText() ([]byte, error)  { return blockAnswers.marshal(v, "block_answer") }
func (v *BlockAnswer) UnmarshalText(b []byte) error { return unmarshal(blockAnswers, v, b) }
