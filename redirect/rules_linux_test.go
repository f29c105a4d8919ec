package redirect

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var testSets = setRefs{
	lan:     &nftables.Set{Name: setLAN, ID: 1},
	bypass4: &nftables.Set{Name: setBypass4, ID: 2},
	bypass6: &nftables.Set{Name: setBypass6, ID: 3},
}

func TestRuleBuilders(t *testing.T) {
	native := binaryutil.NativeEndian.PutUint32
	lan := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: setLAN, SetID: 1},
	}
	l4 := func(p byte) []expr.Any {
		return append(append([]expr.Any{}, lan...),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	markSet := []expr.Any{
		&expr.Immediate{Register: 1, Data: native(0x2)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
	for _, tc := range []struct {
		rule rule
		want []expr.Any
	}{
		{rule{op: opOwnMarkReturn, mark: 0x100}, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(0x100), Xor: native(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native(0x100)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{rule{op: opNotUnicast}, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{rule{op: opLocalReturn}, []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native(unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{rule{op: opBypass4Return}, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: setBypass4, SetID: 2},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{rule{op: opBypass6Return}, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Lookup{SourceRegister: 1, SetName: setBypass6, SetID: 3},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{rule{op: opRedirectTCP, port: 12345}, cat(l4(unix.IPPROTO_TCP), []expr.Any{
			&expr.Immediate{Register: 1, Data: []byte{0x30, 0x39}},
			&expr.Redir{RegisterProtoMin: 1},
		})},
		{rule{op: opTransparentTCP, mark: 0x2}, cat(l4(unix.IPPROTO_TCP), []expr.Any{
			&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		}, markSet)},
		{rule{op: opTProxy, proto: protoUDP, family: 4, port: 12346, mark: 0x2}, cat(l4(unix.IPPROTO_UDP), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Immediate{Register: 1, Data: []byte{0x30, 0x3a}},
			&expr.TProxy{Family: unix.NFPROTO_IPV4, TableFamily: unix.NFPROTO_INET, RegPort: 1},
		}, markSet)},
		{rule{op: opTProxy, proto: protoTCP, family: 6, port: 12345, mark: 0x2}, cat(l4(unix.IPPROTO_TCP), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Immediate{Register: 1, Data: []byte{0x30, 0x39}},
			&expr.TProxy{Family: unix.NFPROTO_IPV6, TableFamily: unix.NFPROTO_INET, RegPort: 1},
		}, markSet)},
		{rule{op: opDropUDP}, cat(l4(unix.IPPROTO_UDP), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})},
		{rule{op: opRejectTCP}, cat(l4(unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})},
		{rule{op: opDropInvalidTCP}, cat(l4(unix.IPPROTO_TCP), []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native(expr.CtStateBitINVALID), Xor: native(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native(0)},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})},
		{rule{op: opDropEcho, family: 4}, cat(lan, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})},
		{rule{op: opDropUnreach, family: 4}, cat(lan, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{3}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 1, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{4}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})},
		{rule{op: opDropUnreach, family: 6}, cat(lan, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})},
		{rule{op: opDropEcho, family: 6}, cat(lan, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{128}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})},
	} {
		t.Run(tc.rule.String(), func(t *testing.T) {
			got := tc.rule.exprs(testSets)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("exprs differ\n got: %s\nwant: %s", dump(got), dump(tc.want))
			}
			// Every expression must also marshal for an inet table.
			for _, e := range got {
				if _, err := expr.Marshal(byte(nftables.TableFamilyINet), e); err != nil {
					t.Errorf("marshal %T: %v", e, err)
				}
			}
		})
	}
}

func dump(es []expr.Any) string {
	var s string
	for _, e := range es {
		s += fmt.Sprintf("\n\t%T %+v", e, e)
	}
	return s
}

func TestIntervalElements(t *testing.T) {
	v4, v6 := mergeBypass(pfx("10.0.0.0/8", "203.0.113.7/32", "240.0.0.0/4", "::/0"))
	got := intervalElements(v4)
	want := []nftables.SetElement{
		{Key: []byte{10, 0, 0, 0}}, {Key: []byte{11, 0, 0, 0}, IntervalEnd: true},
		{Key: []byte{203, 0, 113, 7}}, {Key: []byte{203, 0, 113, 8}, IntervalEnd: true},
		{Key: []byte{240, 0, 0, 0}}, // reaches 255.255.255.255: no end element
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v4 elements = %v, want %v", got, want)
	}
	if got := intervalElements(v6); len(got) != 1 || len(got[0].Key) != 16 || got[0].IntervalEnd {
		t.Errorf("::/0 elements = %v, want one open start element", got)
	}
}

func TestIfnameElementsArePadded(t *testing.T) {
	got := ifnameElements([]string{"eth1"})
	want := []nftables.SetElement{{Key: append([]byte("eth1"), make([]byte, 12)...)}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func newTableMsg(name string) netlink.Message {
	attrs, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(name + "\x00")},
		{Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 0}},
	})
	return netlink.Message{Header: netlink.Header{Type: msgNewTable}, Data: append([]byte{unix.NFPROTO_INET, 0, 0, 0}, attrs...)}
}

func tableFlagsOf(t *testing.T, m netlink.Message) (uint32, bool) {
	t.Helper()
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if a.Type == unix.NFTA_TABLE_FLAGS {
			return binaryutil.BigEndian.Uint32(a.Data), true
		}
	}
	return 0, false
}

func TestWithTableFlags(t *testing.T) {
	m := newTableMsg("socksgate")
	orig := append([]byte(nil), m.Data...)

	stripped, err := withTableFlags(m.Data, false, nftTableFlagOwner)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tableFlagsOf(t, netlink.Message{Data: stripped}); ok {
		t.Error("flags attribute kept on a NEWTABLE before the DELTABLE")
	}
	if got := tableMsgName(netlink.Message{Data: stripped}); got != "socksgate" {
		t.Errorf("name after rewrite = %q", got)
	}
	owned, err := withTableFlags(m.Data, true, nftTableFlagOwner)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := tableFlagsOf(t, netlink.Message{Data: owned}); !ok || f != nftTableFlagOwner {
		t.Errorf("flags = %#x, %v; want owner", f, ok)
	}
	if !reflect.DeepEqual(m.Data, orig) {
		t.Error("rewrite modified the library's message in place")
	}
}
