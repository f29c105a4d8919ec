package redirect

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy routing for TPROXY: a packet TPROXY took keeps its original
// (foreign) destination, so the routing decision after prerouting would
// forward it. The fwmark rule sends marked packets to a table whose only route
// is `local default dev lo`, which delivers them to this host, where the
// transparent socket TPROXY assigned receives them.

var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

func familyName(f int) string {
	if f == netlink.FAMILY_V6 {
		return "ipv6"
	}
	return "ipv4"
}

// policyRule is `ip rule add fwmark M lookup T priority P` for one family.
func policyRule(s Spec, family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = s.RulePriority
	r.Table = s.RouteTable
	r.Mark = s.TProxyMark
	return r
}

// localRoute is `ip route add local default dev lo table T` for one family.
func localRoute(s Spec, family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    family,
		LinkIndex: lo,
		Dst:       dst,
		Table:     s.RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}
}

// isOurRule reports whether r sits at our priority and points at our table:
// whatever left it there (a crash, an older config with another mark), it is
// socksgate's to replace.
func isOurRule(s Spec, r netlink.Rule) bool {
	return r.Priority == s.RulePriority && r.Table == s.RouteTable
}

func isWanted(s Spec, r netlink.Rule) bool {
	return isOurRule(s, r) && r.Mark == s.TProxyMark && (r.Mask == nil || *r.Mask == 0xffffffff) &&
		r.Goto <= 0 && !r.Invert && r.IifName == "" && r.OifName == "" && r.Src == nil && r.Dst == nil
}

// listRules lists a family's rules, retrying a dump the kernel interrupted.
func listRules(h *netlink.Handle, family int) ([]netlink.Rule, error) {
	var err error
	for range 5 {
		var rules []netlink.Rule
		rules, err = h.RuleList(family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return rules, err
		}
	}
	return nil, err
}

// ensurePolicy adds the policy routing s, which needs it, asks for: the local route
// and the fwmark rule (EEXIST is fine). Stale rules at our priority and table stay
// until sweepPolicy: the rules in force (a table being replaced) may still be
// setting their mark.
func ensurePolicy(h *netlink.Handle, s Spec) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find loopback interface: %w", err)
	}
	for _, f := range families {
		if err := h.RouteReplace(localRoute(s, f, lo.Attrs().Index)); err != nil {
			return fmt.Errorf("add %s route local default dev lo table %d: %w", familyName(f), s.RouteTable, err)
		}
		if err := h.RuleAdd(policyRule(s, f)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s rule fwmark %#x lookup %d priority %d: %w", familyName(f), s.TProxyMark, s.RouteTable, s.RulePriority, err)
		}
	}
	return nil
}

// sweepPolicy deletes the rules at our priority and table that s does not want (another
// mark, duplicates a crashed run left); run once the nftables rules of s are in force.
func sweepPolicy(h *netlink.Handle, s Spec) error {
	for _, f := range families {
		rules, err := listRules(h, f)
		if err != nil {
			return fmt.Errorf("list %s rules: %w", familyName(f), err)
		}
		for _, r := range rules {
			if isOurRule(s, r) && !isWanted(s, r) {
				if err := delRule(h, r); err != nil {
					return fmt.Errorf("sweep stale %s rule priority %d table %d: %w", familyName(f), r.Priority, r.Table, err)
				}
			}
		}
	}
	return nil
}

// undoPolicy takes out the rule ensurePolicy added for s, and its route if no rule of ours
// is left at that priority and table (one that is may belong to rules still in force).
func undoPolicy(h *netlink.Handle, s Spec) error {
	var errs []error
	left := false
	for _, f := range families {
		rules, err := listRules(h, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s rules: %w", familyName(f), err))
			left = true
			continue
		}
		for _, r := range rules {
			switch {
			case isWanted(s, r):
				if err := delRule(h, r); err != nil {
					errs = append(errs, err)
				}
			case isOurRule(s, r):
				left = true
			}
		}
	}
	if !left {
		errs = append(errs, removePolicy(h, s))
	}
	return errors.Join(errs...)
}

// hasPolicy reports whether the rule s wants is in place for every family already.
func hasPolicy(h *netlink.Handle, s Spec) (bool, error) {
	for _, f := range families {
		rules, err := listRules(h, f)
		if err != nil {
			return false, fmt.Errorf("list %s rules: %w", familyName(f), err)
		}
		if !slices.ContainsFunc(rules, func(r netlink.Rule) bool { return isWanted(s, r) }) {
			return false, nil
		}
	}
	return true, nil
}

// removePolicy deletes every rule at our priority and table and the local
// routes in our table; what is already gone is not an error.
func removePolicy(h *netlink.Handle, s Spec) error {
	var errs []error
	for _, f := range families {
		rules, err := listRules(h, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s rules: %w", familyName(f), err))
			continue
		}
		for _, r := range rules {
			if isOurRule(s, r) {
				if err := delRule(h, r); err != nil {
					errs = append(errs, fmt.Errorf("delete %s rule priority %d table %d: %w", familyName(f), r.Priority, r.Table, err))
				}
			}
		}
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("find loopback interface: %w", err))...)
	}
	for _, f := range families {
		err := h.RouteDel(localRoute(s, f, lo.Attrs().Index))
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s route local default table %d: %w", familyName(f), s.RouteTable, err))
		}
	}
	return errors.Join(errs...)
}

func delRule(h *netlink.Handle, r netlink.Rule) error {
	err := h.RuleDel(&r)
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}
