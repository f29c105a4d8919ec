package redirect

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftTableFlagOwner is NFT_TABLE_F_OWNER: the table belongs to the netlink
// socket that created it and the kernel deletes it when that socket closes.
// google/nftables v0.3.0 has no constant for it and always sends flags 0.
const nftTableFlagOwner = 0x2

// flushTimeout bounds how long one batch may wait for the kernel's acks.
const flushTimeout = 10 * time.Second

var (
	msgNewTable = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE)
	msgDelTable = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE)
)

// tableConn is an nftables connection whose every batch travels over one real
// NETLINK_NETFILTER socket, held for as long as the tableConn lives.
//
// google/nftables v0.3.0 cannot create a table with flags, and an owned table
// can only be changed through the socket that owns it. Both are solved by
// handing the library a dial function (WithTestDial: its only hook that sees
// the messages) that forwards each batch to our socket, after fixing up its
// NEWTABLE messages:
//   - a NEWTABLE that re-creates tableName after that table's DELTABLE in
//     the same batch carries tableFlags (nftTableFlagOwner for on_crash open);
//   - every other NEWTABLE (the "make sure it exists so the delete cannot
//     fail" step) is sent without a flags attribute, so it neither tries to
//     change a live table's flags (the kernel refuses to add or drop the owner
//     flag of an existing table) nor fails on a table we own.
//
// Replies are passed through unchanged. Only batches (Flush) go through this
// connection; reads use a plain one (see listConn), because the library's
// dump handling expects the test dialer's framing rather than a socket's.
type tableConn struct {
	nft  *nftables.Conn
	sock *netlink.Conn

	mu         sync.Mutex // serialises batches; guards tableName, tableFlags
	tableName  string
	tableFlags uint32
}

// dialTable opens the socket (in netns when non-zero) and the library
// connection on top of it.
func dialTable(netns int) (*tableConn, error) {
	sock, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	tc := &tableConn{sock: sock}
	// A batch with large sets (the direct sets can hold a country's 10,000 ranges, or a
	// list's 200,000) is one sendmsg of several MiB: the socket's send buffer must hold it.
	// The kernel acks each message of a batch, by default with the message inside; capped
	// acks carry only its header, so they never overflow the receive buffer (ENOBUFS).
	_ = sock.SetOption(netlink.CapAcknowledge, true)
	forceBuffers(sock, socketBuffer)
	nft, err := nftables.New(nftables.AsLasting(), nftables.WithTestDial(tc.roundTrip))
	if err != nil {
		_ = sock.Close()
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	tc.nft = nft
	return tc, nil
}

// roundTrip is the nltest.Func the library dials: a non-nil req is a batch to
// send, a nil req asks for the next reply.
func (tc *tableConn) roundTrip(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		return tc.sock.Receive()
	}
	out := make([]netlink.Message, len(req))
	deleted := map[string]bool{}
	for i, m := range req {
		m.Header.PID = 0 // let the real socket fill in its own port id
		switch m.Header.Type {
		case msgDelTable:
			deleted[tableMsgName(m)] = true
		case msgNewTable:
			name := tableMsgName(m)
			var err error
			m.Data, err = withTableFlags(m.Data, deleted[name] && name == tc.tableName, tc.tableFlags)
			if err != nil {
				return nil, err
			}
			m.Header.Length = 0 // recomputed by the real socket
		}
		out[i] = m
	}
	if _, err := tc.sock.SendMessages(out); err != nil {
		return nil, err
	}
	return nil, nil
}

// tableMsgName returns NFTA_TABLE_NAME of a NEWTABLE/DELTABLE message.
func tableMsgName(m netlink.Message) string {
	if len(m.Data) < 4 {
		return ""
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_TABLE_NAME {
			return ad.String()
		}
	}
	return ""
}

// withTableFlags rewrites a NEWTABLE payload (nfgenmsg + attributes): the
// flags attribute is dropped, and when set is true added back as flags.
func withTableFlags(data []byte, set bool, flags uint32) ([]byte, error) {
	attrs, err := netlink.UnmarshalAttributes(data[4:])
	if err != nil {
		return nil, fmt.Errorf("decode NEWTABLE: %w", err)
	}
	kept := attrs[:0]
	for _, a := range attrs {
		if a.Type != unix.NFTA_TABLE_FLAGS {
			kept = append(kept, a)
		}
	}
	if set {
		kept = append(kept, netlink.Attribute{Type: unix.NFTA_TABLE_FLAGS, Data: binaryutil.BigEndian.PutUint32(flags)})
	}
	b, err := netlink.MarshalAttributes(kept)
	if err != nil {
		return nil, fmt.Errorf("encode NEWTABLE: %w", err)
	}
	return append(data[:4:4], b...), nil
}

// flush sends the library's queued messages as one batch; the table called
// name is (re)created with flags.
func (tc *tableConn) flush(name string, flags uint32) error {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.tableName, tc.tableFlags = name, flags
	if err := tc.sock.SetReadDeadline(time.Now().Add(flushTimeout)); err != nil {
		return fmt.Errorf("set netlink deadline: %w", err)
	}
	defer func() { _ = tc.sock.SetReadDeadline(time.Time{}) }()
	if err := tc.nft.Flush(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w (the table may be owned by another running socksgate, or CAP_NET_ADMIN is missing)", err)
		}
		return err
	}
	return nil
}

func (tc *tableConn) close() error {
	_ = tc.nft.CloseLasting() // closes the test dialer's conn, not our socket
	return tc.sock.Close()
}

// install replaces the table in one batch: AddTable, DelTable, AddTable, the
// sets, the flowtable (with devices, when p.offload), the chains and their rules. oldName,
// when it differs from the plan's table, is deleted in the same batch (a Replace that renames).
func (tc *tableConn) install(p tablePlan, oldName string, devices []string) error {
	c := tc.nft
	if oldName != "" && oldName != p.name {
		old := &nftables.Table{Name: oldName, Family: nftables.TableFamilyINet}
		c.AddTable(old)
		c.DelTable(old)
	}
	t := &nftables.Table{Name: p.name, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	// Set IDs only need to be unique within the batch; fixed ones keep the
	// library's global allocator (unsynchronised across connections) out of it.
	sets := setRefs{
		// ifname keys are strings in host order; the user data saying so lets
		// nft print them as names.
		lan:     &nftables.Set{Table: t, Name: setLAN, ID: 1, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian},
		bypass4: &nftables.Set{Table: t, Name: setBypass4, ID: 2, KeyType: nftables.TypeIPAddr, Interval: true},
		bypass6: &nftables.Set{Table: t, Name: setBypass6, ID: 3, KeyType: nftables.TypeIP6Addr, Interval: true},
	}
	if err := c.AddSet(sets.lan, ifnameElements(p.lan)); err != nil {
		return fmt.Errorf("add set %s: %w", setLAN, err)
	}
	if err := addSet(c, sets.bypass4, intervalElements(p.bypass4)); err != nil {
		return fmt.Errorf("add set %s: %w", setBypass4, err)
	}
	if err := addSet(c, sets.bypass6, intervalElements(p.bypass6)); err != nil {
		return fmt.Errorf("add set %s: %w", setBypass6, err)
	}
	if p.direct {
		sets.direct4 = &nftables.Set{Table: t, Name: setDirect4, ID: 4, KeyType: nftables.TypeIPAddr, Interval: true}
		sets.direct6 = &nftables.Set{Table: t, Name: setDirect6, ID: 5, KeyType: nftables.TypeIP6Addr, Interval: true}
		if err := addSet(c, sets.direct4, intervalElements(p.direct4)); err != nil {
			return fmt.Errorf("add set %s: %w", setDirect4, err)
		}
		if err := addSet(c, sets.direct6, intervalElements(p.direct6)); err != nil {
			return fmt.Errorf("add set %s: %w", setDirect6, err)
		}
	}
	if p.offload {
		c.AddFlowtable(&nftables.Flowtable{
			Table: t, Name: flowtableFT,
			Hooknum: nftables.FlowtableHookIngress, Priority: nftables.FlowtablePriorityFilter,
			Devices: devices,
		})
	}
	for _, cp := range p.chains {
		typ := nftables.ChainTypeFilter
		switch cp.typ {
		case "nat":
			typ = nftables.ChainTypeNAT
		case "route":
			typ = nftables.ChainTypeRoute
		}
		policy := nftables.ChainPolicyAccept
		hook := nftables.ChainHookPrerouting
		switch {
		case cp.output:
			hook = nftables.ChainHookOutput
		case cp.forward:
			hook = nftables.ChainHookForward
		}
		ch := c.AddChain(&nftables.Chain{
			Name:     cp.name,
			Table:    t,
			Type:     typ,
			Hooknum:  hook,
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(cp.priority)),
			Policy:   &policy,
		})
		for _, r := range cp.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs(sets)})
		}
	}
	var flags uint32
	if p.owned {
		flags = nftTableFlagOwner
	}
	if err := tc.flush(p.name, flags); err != nil {
		return fmt.Errorf("replace nftables table inet %s: %w", p.name, err)
	}
	return nil
}

// deleteTable removes the table in one batch (AddTable then DelTable, so a
// missing table is not an error).
func (tc *tableConn) deleteTable(name string) error {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	tc.nft.AddTable(t)
	tc.nft.DelTable(t)
	if err := tc.flush(name, 0); err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", name, err)
	}
	return nil
}

// socketBuffer is the send and receive buffer of the table's socket.
const socketBuffer = 64 << 20

// setElemChunk bounds the elements of one NEWSETELEM message. The library nests all of a
// message's elements in one attribute, whose length is 16 bits: past 64 KiB (about 700
// elements) it wraps, and the kernel silently takes only the first of them. 512 elements of
// an IPv6 interval set are about 50 KiB. The batch stays one transaction.
const setElemChunk = 512

// forceBuffers sets the socket's buffers past the sysctl limits (CAP_NET_ADMIN, which
// installing the table needs anyway), or as far as the limits allow without it.
func forceBuffers(sock *netlink.Conn, n int) {
	rc, err := sock.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, n)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n/16) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n/16)
		}
	})
}

// addSet adds s with its elements, setElemChunk elements a message.
func addSet(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	first := elems[:min(len(elems), setElemChunk)]
	if err := c.AddSet(s, first); err != nil {
		return err
	}
	for rest := elems[len(first):]; len(rest) > 0; {
		n := min(len(rest), setElemChunk)
		if err := c.SetAddElements(s, rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// ifnameElements encodes interface names as the kernel compares them:
// IFNAMSIZ (16) bytes, zero-padded.
func ifnameElements(names []string) []nftables.SetElement {
	var out []nftables.SetElement
	for _, n := range names {
		k := make([]byte, unix.IFNAMSIZ)
		copy(k, n)
		out = append(out, nftables.SetElement{Key: k})
	}
	return out
}

// intervalElements encodes disjoint sorted ranges as interval-set elements:
// {Key: first} opens a range and {Key: last+1, IntervalEnd: true} closes it.
// A range reaching the top of its family has no end element (there is no
// last+1); the kernel reads it as open to the end, as nft itself does.
func intervalElements(rs []addrRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.first.AsSlice()})
		if next := r.last.Next(); next.IsValid() {
			out = append(out, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}
