package doctor

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/redirect"
)

// System reads the state of the calling process's network namespace: files from the
// filesystem, the nftables ruleset, the policy rules; the kernel probe runs in a namespace of
// its own. dial marks its sockets with mark (as socksgate's own, so capture leaves them alone)
// when it is allowed to.
func System(mark uint32, offline bool) Input {
	in := Input{ReadFile: os.ReadFile, ProbeKernel: ProbeKernel, Offline: offline}
	in.Tables, in.TablesErr = ReadTables()
	in.Rules, in.RulesErr = ReadRules()
	d := &net.Dialer{}
	if mark != 0 && os.Geteuid() == 0 {
		d.Control = redirect.MarkControl(mark)
	}
	in.Dial = d.DialContext
	return in
}

// ReadTables summarises the nftables ruleset: every table, its base chains and what they do.
func ReadTables() ([]Table, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []Table
	for _, t := range tables {
		tt := Table{Family: familyName(t.Family), Name: t.Name}
		if fts, err := c.ListFlowtables(t); err == nil {
			for _, ft := range fts {
				tt.Flowtables = append(tt.Flowtables, ft.Name)
			}
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name || ch.Table.Family != t.Family || ch.Hooknum == nil {
				continue
			}
			cc := Chain{Name: ch.Name, Hook: hookName(*ch.Hooknum)}
			if ch.Priority != nil {
				cc.Priority = int(*ch.Priority)
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s %s: %w", tt.Family, t.Name, ch.Name, err)
			}
			for _, r := range rules {
				cc.Actions = append(cc.Actions, Actions(r.Exprs)...)
			}
			tt.Chains = append(tt.Chains, cc)
		}
		out = append(out, tt)
	}
	return out, nil
}

// Actions names what a rule's expressions do that bears on capture. (Jumps to regular chains
// are not followed: a base chain is judged by its own rules.)
func Actions(es []expr.Any) []string {
	var out []string
	for _, e := range es {
		switch e := e.(type) {
		case *expr.TProxy:
			out = append(out, "tproxy")
		case *expr.Redir:
			out = append(out, "redirect")
		case *expr.NAT:
			if e.Type == expr.NATTypeDestNAT {
				out = append(out, "dnat")
			}
		case *expr.Meta:
			if e.SourceRegister && e.Key == expr.MetaKeyMARK {
				out = append(out, "mark")
			}
		case *expr.Ct:
			if e.SourceRegister && e.Key == expr.CtKeyMARK {
				out = append(out, "mark")
			}
		case *expr.FlowOffload:
			out = append(out, "offload")
		case *expr.Target: // iptables-nft
			switch strings.ToUpper(e.Name) {
			case "TPROXY":
				out = append(out, "tproxy")
			case "REDIRECT":
				out = append(out, "redirect")
			case "DNAT":
				out = append(out, "dnat")
			case "MARK", "CONNMARK":
				out = append(out, "mark")
			case "FLOWOFFLOAD":
				out = append(out, "offload")
			}
		}
	}
	return out
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family%d", f)
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return "forward"
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}

// ReadRules lists the IPv4 and IPv6 policy-routing rules.
func ReadRules() ([]IPRule, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	defer h.Close()
	var out []IPRule
	for _, fam := range []struct {
		nl, v int
	}{{netlink.FAMILY_V4, 4}, {netlink.FAMILY_V6, 6}} {
		rs, err := h.RuleList(fam.nl)
		if err != nil {
			return nil, fmt.Errorf("list IPv%d rules: %w", fam.v, err)
		}
		for _, r := range rs {
			out = append(out, ipRule(fam.v, r))
		}
	}
	return out, nil
}

func ipRule(fam int, r netlink.Rule) IPRule {
	ir := IPRule{Family: fam, Priority: r.Priority, Table: r.Table, Mark: r.Mark}
	if r.Mask != nil {
		ir.Mask = *r.Mask
	} else if r.Mark != 0 {
		ir.Mask = 0xffffffff
	}
	ir.Selective = r.Src != nil || r.Dst != nil || r.IifName != "" || r.OifName != "" || r.Tos != 0 ||
		r.Dport != nil || r.Sport != nil || r.UIDRange != nil || r.IPProto != 0 || r.Invert
	switch r.Type {
	case unix.FR_ACT_GOTO:
		ir.Action = "goto"
	case unix.FR_ACT_BLACKHOLE:
		ir.Action = "blackhole"
	case unix.FR_ACT_UNREACHABLE:
		ir.Action = "unreachable"
	case unix.FR_ACT_PROHIBIT:
		ir.Action = "prohibit"
	case unix.FR_ACT_NOP:
		ir.Action = "nop"
	default:
		ir.Action = "lookup"
	}
	return ir
}

// ProbeKernel installs spec's table and policy routing in a new network namespace that is
// thrown away afterwards: whether this kernel can hold socksgate's rules, without touching
// the namespace socksgate runs in.
func ProbeKernel(spec redirect.Spec) error {
	ns, err := newNetNS()
	if err != nil {
		return fmt.Errorf("create a probe network namespace: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open rtnetlink in the probe namespace: %w", err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	h.Close()
	rs, err := redirect.Apply(spec, redirect.WithNetNS(int(ns)))
	if err != nil {
		return err
	}
	return rs.Close()
}

// newNetNS makes a network namespace and returns a handle to it, leaving the calling thread in
// its own.
func newNetNS() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: returning without unlocking makes the
		// runtime end the thread with the goroutine instead of reusing it.
		ns.Close()
		return 0, fmt.Errorf("return to the original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ns, nil
}
