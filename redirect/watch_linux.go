package redirect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watch keeps the state r installed in place until the Watcher is stopped: it listens to
// nftables events (the NFNLGRP_NFTABLES group) and to policy rule and route events
// (rtnetlink), and when socksgate's table, or one of its chains, rules, sets or elements, is
// removed or changed by someone else, or its policy rule or local route disappears, it puts the
// spec in force back (the same batch Replace sends), within a fraction of a second of the last
// event of a burst. Events about other tables and other routing tables are ignored, and so are
// the ones r's own socket causes (Replace, a restore). Every 15 seconds with nothing else to do,
// a periodic check lists the table and compares it, rule by rule and element by element, with
// the listing taken after r's last install, and the policy routing with the spec: a difference
// no event reported (events lost, a change through r's own socket) is restored too, reported
// with what differed. Restores in a tight loop back off (see healTiming). report gets every restore, failure, back-off and check; it runs on the
// watcher's goroutine and must not call r's methods that change the state (Replace, Close).
// Watch returns once subscribed, or an error if it cannot subscribe.
//
// With on_crash open the table is owned by r's socket: nobody else can delete or change it
// (`nft flush ruleset` skips it), so only the policy routing can need restoring.
func (r *Ruleset) Watch(report func(WatchEvent)) (*Watcher, error) {
	return r.watch(defaultHealTiming, report, nil)
}

// Watcher is a running Watch.
type Watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Stop ends the watch and returns once it has; it is idempotent, and nil does nothing.
func (w *Watcher) Stop() {
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
}

// watch is Watch with its timing, and seen, when not nil, called with every change a reader
// passes on (tests).
func (r *Ruleset) watch(t healTiming, report func(WatchEvent), seen func(change)) (*Watcher, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, errors.New("watch redirect rules: ruleset is closed")
	}
	ownPID, err := r.conn.portID()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan change, 64)
	send := func(c change) {
		if seen != nil {
			seen(c)
		}
		select {
		case changes <- c:
		case <-ctx.Done():
		}
	}

	nft, err := r.dialNFTMonitor()
	if err != nil {
		cancel()
		return nil, err
	}
	rules, err := r.dialRuleMonitor()
	if err != nil {
		cancel()
		_ = nft.Close()
		return nil, err
	}
	routes, routeErr, err := r.subscribeRoutes(ctx)
	if err != nil {
		cancel()
		_ = nft.Close()
		_ = rules.Close()
		return nil, err
	}
	var mu sync.Mutex // guards nft and rules, which the readers replace when a socket fails
	context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		_ = nft.Close()
		_ = rules.Close()
	})
	// redial replaces a failed event socket, after a pause, until ctx ends.
	redial := func(conn **netlink.Conn, dial func() (*netlink.Conn, error)) bool {
		for {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(resubscribeDelay):
			}
			c, err := dial()
			if err != nil {
				continue
			}
			mu.Lock()
			defer mu.Unlock()
			if ctx.Err() != nil {
				_ = c.Close()
				return false
			}
			*conn = c
			return true
		}
	}

	w := &Watcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			for c := nft; ; c = nft {
				r.readNFT(ctx, c, ownPID, send)
				if !redial(&nft, r.dialNFTMonitor) {
					return
				}
				send(change{kind: checkTable, what: "nftables event socket reopened"})
			}
		})
		wg.Go(func() {
			for c := rules; ; c = rules {
				r.readRules(ctx, c, send)
				if !redial(&rules, r.dialRuleMonitor) {
					return
				}
				send(change{kind: checkPolicy, what: "rule event socket reopened"})
			}
		})
		wg.Go(func() {
			for {
				r.readRoutes(ctx, routes, routeErr, send)
				for range routes { // closed once the subscription has ended
				}
				for {
					select {
					case <-ctx.Done():
						return
					case <-time.After(resubscribeDelay):
					}
					if routes, routeErr, err = r.subscribeRoutes(ctx); err == nil {
						break
					}
				}
				send(change{kind: checkPolicy, what: "route event socket reopened"})
			}
		})
		heal(ctx, changes, t, r.heal, report)
	}()
	return w, nil
}

// monitorReadBuffer is the receive buffer of the event sockets: a flush of a large firewall
// ruleset sends one event per rule. Events lost anyway (ENOBUFS) cause a check.
const monitorReadBuffer = 4 << 20

func (r *Ruleset) dialNFTMonitor() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.opts.netns})
	if err != nil {
		return nil, fmt.Errorf("open nftables event socket: %w", err)
	}
	_ = c.SetReadBuffer(monitorReadBuffer)
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("join nftables event group: %w", err)
	}
	return c, nil
}

func (r *Ruleset) dialRuleMonitor() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: r.opts.netns})
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink event socket: %w", err)
	}
	_ = c.SetReadBuffer(monitorReadBuffer)
	for _, g := range []uint32{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE} {
		if err := c.JoinGroup(g); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("join rtnetlink rule group %d: %w", g, err)
		}
	}
	return c, nil
}

// subscribeRoutes subscribes to route events; the channel is closed when the subscription
// ends (ctx, or an error, which goes to the error channel too).
func (r *Ruleset) subscribeRoutes(ctx context.Context) (chan vnl.RouteUpdate, chan error, error) {
	ch, errs := make(chan vnl.RouteUpdate, 256), make(chan error, 1)
	opts := vnl.RouteSubscribeOptions{
		ReceiveBufferSize: monitorReadBuffer,
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	}
	if r.opts.netns != 0 {
		h := netns.NsHandle(r.opts.netns)
		opts.Namespace = &h
	}
	if err := vnl.RouteSubscribeWithOptions(ch, ctx.Done(), opts); err != nil {
		return nil, nil, fmt.Errorf("subscribe to route events: %w", err)
	}
	return ch, errs, nil
}

// resubscribeDelay is the pause before an event socket that failed is opened again.
const resubscribeDelay = 100 * time.Millisecond

// nftSubsys is the nftables subsystem in a netfilter message type's high byte.
const nftSubsys = unix.NFNL_SUBSYS_NFTABLES

var nftObject = map[uint16]string{
	unix.NFT_MSG_NEWTABLE: "table", unix.NFT_MSG_DELTABLE: "table",
	unix.NFT_MSG_NEWCHAIN: "chain", unix.NFT_MSG_DELCHAIN: "chain",
	unix.NFT_MSG_NEWRULE: "rule", unix.NFT_MSG_DELRULE: "rule",
	unix.NFT_MSG_NEWSET: "set", unix.NFT_MSG_DELSET: "set",
	unix.NFT_MSG_NEWSETELEM: "set element", unix.NFT_MSG_DELSETELEM: "set element",
	unix.NFT_MSG_NEWOBJ: "object", unix.NFT_MSG_DELOBJ: "object",
	unix.NFT_MSG_NEWFLOWTABLE: "flowtable", unix.NFT_MSG_DELFLOWTABLE: "flowtable",
}

func nftDeleted(typ uint16) bool {
	switch typ {
	case unix.NFT_MSG_DELTABLE, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET,
		unix.NFT_MSG_DELSETELEM, unix.NFT_MSG_DELOBJ, unix.NFT_MSG_DELFLOWTABLE:
		return true
	}
	return false
}

// readNFT turns nftables events into changes. Each event names its table (the first attribute of
// every object message is its table's name: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
// ... all 1) and carries the port id of the socket whose transaction caused it; only the events
// of socksgate's inet table from another socket matter. The events of one transaction end with
// NEWGEN, which names the process that committed it: the changes are sent then, with it.
//
// google/nftables' Monitor is not used: it decodes every rule of every table (a large
// firewall's reload is thousands), does not give set elements their table, and ends for good
// on the first overflow, while only the table name is needed here.
func (r *Ruleset) readNFT(ctx context.Context, c *netlink.Conn, ownPID uint32, send func(change)) {
	var batch []change
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				batch = nil
				send(change{kind: checkTable, what: "nftables events lost"})
				continue
			}
			return // reopened by the caller
		}
		table := r.Spec().Table
		for _, m := range msgs {
			if uint16(m.Header.Type)>>8 != nftSubsys || len(m.Data) < 4 {
				continue
			}
			typ := uint16(m.Header.Type) & 0xff
			if typ == unix.NFT_MSG_NEWGEN {
				by := genProcess(m.Data[4:])
				for _, ch := range batch {
					ch.by = by
					send(ch)
				}
				batch = nil
				continue
			}
			obj, ok := nftObject[typ]
			if !ok || m.Header.PID == ownPID || m.Data[0] != unix.NFPROTO_INET {
				continue
			}
			if name := firstStringAttr(m.Data[4:], 1); name != table {
				continue
			}
			verb := "changed"
			if nftDeleted(typ) {
				verb = "deleted"
			}
			what := obj + " of table inet " + table + " " + verb
			if obj == "table" {
				what = "table inet " + table + " " + verb
			}
			batch = append(batch, change{kind: changeTable, what: what})
		}
	}
}

// firstStringAttr returns the string attribute of type typ in attrs, or "".
func firstStringAttr(attrs []byte, typ uint16) string {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.String()
		}
	}
	return ""
}

// genProcess returns "name[pid]" from a NEWGEN message's attributes, or "".
func genProcess(attrs []byte) string {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return ""
	}
	ad.ByteOrder = binary.BigEndian // nla_put_be32
	var name string
	var pid uint32
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_PROC_PID:
			pid = ad.Uint32()
		case unix.NFTA_GEN_PROC_NAME:
			name = ad.String()
		}
	}
	if name == "" {
		return ""
	}
	return name + "[" + strconv.FormatUint(uint64(pid), 10) + "]"
}

// readRules turns policy rule events into checks of the policy routing: any rule event will
// do, they are rare, and the check reads the rules in place.
func (r *Ruleset) readRules(ctx context.Context, c *netlink.Conn, send func(change)) {
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				send(change{kind: checkPolicy, what: "rule events lost"})
				continue
			}
			return // reopened by the caller
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.RTM_DELRULE:
				send(change{kind: checkPolicy, what: "policy rule deleted"})
			case unix.RTM_NEWRULE:
				send(change{kind: checkPolicy, what: "policy rule added"})
			}
		}
	}
}

// readRoutes turns route events in socksgate's routing table into checks.
func (r *Ruleset) readRoutes(ctx context.Context, ch <-chan vnl.RouteUpdate, errs <-chan error, send func(change)) {
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-errs:
			if ctx.Err() == nil {
				send(change{kind: checkPolicy, what: "route events: " + err.Error()})
			}
		case u, ok := <-ch:
			if !ok {
				return
			}
			s := r.Spec()
			if u.Type == unix.RTM_NEWROUTE && u.Table == unix.RT_TABLE_MAIN && s.offload() {
				if what := r.newOffloadDevice(u.Route); what != "" {
					send(change{kind: changeTable, what: what})
				}
				continue
			}
			if !s.needsPolicyRouting() || u.Table != s.RouteTable {
				continue
			}
			verb := "changed"
			if u.Type == unix.RTM_DELROUTE {
				verb = "deleted"
			}
			send(change{kind: checkPolicy, what: "route in table " + strconv.Itoa(s.RouteTable) + " " + verb})
		}
	}
}

// newOffloadDevice says which device of the default route rt is not one of the flowtable's
// ("" when none, or when offload is off or was refused): a WAN link that came up, or came
// back as a new device (PPPoE), after the last install.
func (r *Ruleset) newOffloadDevice(rt vnl.Route) string {
	r.mu.Lock()
	devs, refused := r.offloadDevs, r.offloadErr != nil
	r.mu.Unlock()
	if refused {
		return ""
	}
	h, err := r.opts.handle()
	if err != nil {
		return ""
	}
	defer h.Close()
	for _, idx := range defaultRouteLink(rt) {
		if l, err := h.LinkByIndex(idx); err == nil && !slices.Contains(devs, l.Attrs().Name) {
			return "default route on " + l.Attrs().Name + ", not a device of flowtable " + flowtableFT
		}
	}
	return ""
}

// heal is restore for heal(): it checks what p calls for and, if anything is missing or was
// changed by someone else, installs the spec in force again through r's socket. What a check
// found is added to p.what.
func (r *Ruleset) heal(p *pending) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, nil
	}
	s := r.spec
	need := p.kinds&changeTable != 0
	if !need && p.kinds&(checkTable|checkDrift) != 0 {
		// The periodic check alone, and no commit anywhere since the last look: nothing to
		// list (gen_linux.go). An event, or a generation unknown, always lists.
		gen, genErr := nftGeneration(r.opts.netns)
		if p.kinds&checkTable != 0 || genErr != nil || !r.genKnown || gen != r.checkedGen {
			have, err := readTable(r.opts.netns, s.Table)
			if err != nil {
				return false, err
			}
			if d := drift(have, r.installed, r.planFor(s)); d != "" {
				addDistinct(&p.what, d)
				need = true
			} else {
				r.checkedGen, r.genKnown = gen, genErr == nil
			}
		}
	}
	if !need && p.kinds&(checkTable|checkPolicy|checkDrift) != 0 && s.needsPolicyRouting() {
		ok, err := r.policyIntact(s)
		if err != nil {
			return false, err
		}
		if !ok {
			addDistinct(&p.what, "policy routing for table "+strconv.Itoa(s.RouteTable)+" incomplete")
			need = true
		}
	}
	if !need {
		return false, nil
	}
	if err := r.install(s, s.Table); err != nil {
		return true, err
	}
	return true, nil
}

// policyIntact reports whether the fwmark rule of s is in place for both families, and the
// local default route in its table.
func (r *Ruleset) policyIntact(s Spec) (bool, error) {
	h, err := r.opts.handle()
	if err != nil {
		return false, err
	}
	defer h.Close()
	if ok, err := hasPolicy(h, s); err != nil || !ok {
		return false, err
	}
	for _, f := range families {
		routes, err := h.RouteListFiltered(f, &vnl.Route{Table: s.RouteTable}, vnl.RT_FILTER_TABLE)
		if err != nil {
			return false, fmt.Errorf("list %s routes of table %d: %w", familyName(f), s.RouteTable, err)
		}
		if !slices.ContainsFunc(routes, isLocalDefault) {
			return false, nil
		}
	}
	return true, nil
}

func isLocalDefault(rt vnl.Route) bool {
	if rt.Type != unix.RTN_LOCAL {
		return false
	}
	if rt.Dst == nil {
		return true
	}
	ones, _ := rt.Dst.Mask.Size()
	return ones == 0 && (rt.Dst.IP.Equal(net.IPv4zero) || rt.Dst.IP.Equal(net.IPv6zero))
}

// portID is the netlink port id of tc's socket: the one the kernel puts in the events its
// transactions cause.
func (tc *tableConn) portID() (uint32, error) {
	rc, err := tc.sock.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("nftables socket: %w", err)
	}
	var (
		sa   unix.Sockaddr
		serr error
	)
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return 0, fmt.Errorf("nftables socket: %w", err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if serr != nil || !ok {
		return 0, fmt.Errorf("nftables socket port id: %v", serr)
	}
	return nl.Pid, nil
}
