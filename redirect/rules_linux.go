package redirect

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The builders below are pure: they turn one rule of the plan into the
// expressions the kernel evaluates. Register 1 is the only scratch register
// used; every value compared against a meta key is in host byte order, every
// value compared against packet bytes (addresses, ports) in network order.

// setRefs are the sets rules look up; ID and Name must match the sets added
// in the same batch.
type setRefs struct {
	lan, bypass4, bypass6 *nftables.Set
	direct4, direct6      *nftables.Set // nil: no direct sets
}

// exprs returns r's expressions.
func (r rule) exprs(sets setRefs) []expr.Any {
	switch r.op {
	case opOwnMarkReturn:
		return ownMarkReturn(r.mark)
	case opNotUnicast:
		return notUnicastReturn()
	case opLocalReturn:
		return localReturn()
	case opBypass4Return:
		return bypassReturn(4, sets.bypass4)
	case opBypass6Return:
		return bypassReturn(6, sets.bypass6)
	case opDirect4Return:
		return bypassReturn(4, sets.direct4)
	case opDirect6Return:
		return bypassReturn(6, sets.direct6)
	case opRedirectTCP:
		return redirectTCP(sets.lan, r.port)
	case opTransparentTCP:
		return transparentTCP(sets.lan, r.mark)
	case opTProxy:
		return tproxy(sets.lan, r.proto, r.family, r.port, r.mark)
	case opDropUDP:
		return dropUDP(sets.lan)
	case opRejectTCP:
		return rejectTCP(sets.lan)
	case opReplyReturn:
		return replyReturn()
	case opNotrackReplies:
		return notrackReplies(r.mark)
	case opDNSReturn:
		return append(dnsFromLAN(sets.lan, r.proto), &expr.Verdict{Kind: expr.VerdictReturn})
	case opRedirectDNS:
		return append(dnsFromLAN(sets.lan, r.proto),
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.port)},
			&expr.Redir{RegisterProtoMin: 1})
	case opLoopTProxy:
		return loopTProxy(r.proto, r.family, r.port, r.mark)
	case opSkuidReturn:
		return ownerReturn(expr.MetaKeySKUID, r.id)
	case opSkgidReturn:
		return ownerReturn(expr.MetaKeySKGID, r.id)
	case opOutRedirectTCP:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoTCP}},
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.port)},
			&expr.Redir{RegisterProtoMin: 1},
		}
	case opDropEcho:
		return dropEcho(sets.lan, r.family)
	case opDropUnreach:
		return dropUnreach(sets.lan, r.family)
	case opDropInvalidTCP:
		return dropInvalidTCP(sets.lan)
	case opOffload4:
		return offload(sets.lan, 4, sets.direct4)
	case opOffload6:
		return offload(sets.lan, 6, sets.direct6)
	case opOutMark:
		return append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
		}, setMark(r.mark)...)
	}
	return nil
}

// replyReturn: ct direction reply return
func replyReturn() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// notrackReplies: meta mark & M == M meta l4proto udp fib saddr type != local notrack
func notrackReplies(mark uint32) []expr.Any {
	e := ownMarkReturn(mark)
	e = e[:len(e)-1] // the mark match, without its return
	return append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoUDP}},
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Notrack{},
	)
}

// ownMarkReturn: meta mark & M == M return
func ownMarkReturn(mark uint32) []expr.Any {
	return []expr.Any{
		// meta mark
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		// & M
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mark),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		// == M
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		// return
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// notUnicastReturn: meta pkttype != host return
func notUnicastReturn() []expr.Any {
	return []expr.Any{
		// meta pkttype
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		// != host
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.PACKET_HOST}},
		// return
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// localReturn: fib daddr type local return
func localReturn() []expr.Any {
	return []expr.Any{
		// fib daddr type
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		// local
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		// return
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// bypassReturn: ip daddr @bypass4 return / ip6 daddr @bypass6 return (and the same with the
// direct sets)
func bypassReturn(family int, set *nftables.Set) []expr.Any {
	nfproto, offset, length := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
	if family == 6 {
		nfproto, offset, length = unix.NFPROTO_IPV6, 24, 16
	}
	return []expr.Any{
		// meta nfproto ipv4|ipv6 (the dependency nft adds, and hides, for ip/ip6 daddr)
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		// ip daddr | ip6 daddr
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length},
		// @bypass4 | @bypass6
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		// return
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// offload: iifname @lan_ifaces ip daddr @direct4 flow add @ft (ip6 daddr @direct6 for family 6)
func offload(lan *nftables.Set, family int, direct *nftables.Set) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: lan.Name, SetID: lan.ID},
	}
	match := bypassReturn(family, direct)
	e = append(e, match[:len(match)-1]...) // the address match, without its return
	return append(e, &expr.FlowOffload{Name: flowtableFT})
}

// fromLAN: iifname @lan_ifaces meta l4proto P
func fromLAN(lan *nftables.Set, proto uint8) []expr.Any {
	return []expr.Any{
		// iifname
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		// @lan_ifaces
		&expr.Lookup{SourceRegister: 1, SetName: lan.Name, SetID: lan.ID},
		// meta l4proto P
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// dnsFromLAN: iifname @lan_ifaces meta l4proto P th dport 53 (nft shows "udp dport 53")
func dnsFromLAN(lan *nftables.Set, proto uint8) []expr.Any {
	return append(fromLAN(lan, proto),
		// th dport
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		// 53
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(53)},
	)
}

// setMark: meta mark set M
func setMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// redirectTCP: iifname @lan_ifaces meta l4proto tcp redirect to :P
func redirectTCP(lan *nftables.Set, port uint16) []expr.Any {
	return append(fromLAN(lan, protoTCP),
		// :P
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		// redirect to
		&expr.Redir{RegisterProtoMin: 1},
	)
}

// transparentTCP: iifname @lan_ifaces meta l4proto tcp socket transparent 1 meta mark set M accept
func transparentTCP(lan *nftables.Set, mark uint32) []expr.Any {
	e := append(fromLAN(lan, protoTCP),
		// socket transparent 1
		&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
	)
	e = append(e, setMark(mark)...) // meta mark set M
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// tproxy: iifname @lan_ifaces meta l4proto P meta nfproto ipv4 tproxy ip to :port meta mark set M accept
// (or meta nfproto ipv6 tproxy ip6 ...). TPROXY only continues to the
// statements after it when it found a transparent socket for the packet.
func tproxy(lan *nftables.Set, proto uint8, family int, port uint16, mark uint32) []expr.Any {
	nfproto := byte(unix.NFPROTO_IPV4)
	if family == 6 {
		nfproto = unix.NFPROTO_IPV6
	}
	e := append(fromLAN(lan, proto),
		// meta nfproto ipv4|ipv6
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		// :port
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		// tproxy ip|ip6 to
		&expr.TProxy{Family: nfproto, TableFamily: unix.NFPROTO_INET, RegPort: 1},
	)
	e = append(e, setMark(mark)...) // meta mark set M
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// ownerReturn: meta skuid N return / meta skgid N return
func ownerReturn(key expr.MetaKey, id uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(id)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
}

// loopTProxy: iifname "lo" meta mark M meta l4proto P meta nfproto F tproxy ipX to :port accept:
// the router's own packets the route output chain marked, back in on lo.
func loopTProxy(proto uint8, family int, port uint16, mark uint32) []expr.Any {
	nfproto := byte(unix.NFPROTO_IPV4)
	if family == 6 {
		nfproto = unix.NFPROTO_IPV6
	}
	lo := make([]byte, unix.IFNAMSIZ)
	copy(lo, "lo")
	return []expr.Any{
		// iifname "lo"
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: lo},
		// meta mark M
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		// meta l4proto P
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		// meta nfproto ipv4|ipv6
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		// :port
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		// tproxy ip|ip6 to
		&expr.TProxy{Family: nfproto, TableFamily: unix.NFPROTO_INET, RegPort: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// dropUDP: iifname @lan_ifaces meta l4proto udp drop
func dropUDP(lan *nftables.Set) []expr.Any {
	return append(fromLAN(lan, protoUDP), &expr.Verdict{Kind: expr.VerdictDrop})
}

// dropInvalidTCP: iifname @lan_ifaces meta l4proto tcp ct state invalid drop
func dropInvalidTCP(lan *nftables.Set) []expr.Any {
	return append(fromLAN(lan, protoTCP),
		// ct state invalid
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitINVALID),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		// drop
		&expr.Verdict{Kind: expr.VerdictDrop})
}

// rejectTCP: iifname @lan_ifaces meta l4proto tcp reject with tcp reset
func rejectTCP(lan *nftables.Set) []expr.Any {
	return append(fromLAN(lan, protoTCP), &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
}

// dropEcho: iifname @lan_ifaces icmp type echo-request drop (family 4), or
// iifname @lan_ifaces icmpv6 type echo-request drop (family 6).
func dropEcho(lan *nftables.Set, family int) []expr.Any {
	if family == 6 {
		return icmpDrop(lan, 6, 128) // ICMPV6_ECHO_REQUEST
	}
	return icmpDrop(lan, 4, 8) // ICMP_ECHO
}

// dropUnreach: iifname @lan_ifaces icmp type destination-unreachable icmp code != frag-needed
// drop (family 4), or iifname @lan_ifaces icmpv6 type destination-unreachable drop (family 6,
// where packet too big is a type of its own).
func dropUnreach(lan *nftables.Set, family int) []expr.Any {
	if family == 6 {
		return icmpDrop(lan, 6, 1) // ICMPV6_DEST_UNREACH
	}
	e := icmpDrop(lan, 4, 3) // ICMP_DEST_UNREACH
	return append(e[:len(e)-1],
		// icmp code != frag-needed (ICMP_FRAG_NEEDED: path MTU discovery)
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 1, Len: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{4}},
		&expr.Verdict{Kind: expr.VerdictDrop})
}

// icmpDrop: iifname @lan_ifaces icmp type T drop, or icmpv6 for family 6. The nfproto match
// is the dependency nft adds, and hides, for icmp and icmpv6 in an inet table: an IPv6 packet
// carrying protocol 1 is not ICMP.
func icmpDrop(lan *nftables.Set, family int, typ byte) []expr.Any {
	nfproto, proto := byte(unix.NFPROTO_IPV4), byte(unix.IPPROTO_ICMP)
	if family == 6 {
		nfproto, proto = unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6
	}
	return []expr.Any{
		// iifname @lan_ifaces
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: lan.Name, SetID: lan.ID},
		// meta nfproto ipv4|ipv6
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		// meta l4proto icmp|ipv6-icmp
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		// icmp type | icmpv6 type: the first byte of the header
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		// drop
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}
