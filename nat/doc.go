// Package nat recovers where a captured flow was going. For TCP taken by an nftables REDIRECT it
// reads the conntrack original destination (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST); for flows
// taken by TPROXY the original destination is the socket's own local address. It makes no routing
// decision.
package nat
