package redirect

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The periodic check (healTiming.Check) compares the table in the kernel with the one Ruleset
// installed, object by object, instead of trusting the events alone: events can be lost (a
// socket buffer that overflowed, a watcher that was resubscribing) and a change made through
// Ruleset's own socket is not an event it listens to. What is compared is the table as the
// kernel showed it right after socksgate's own install (tableState): the kernel's own
// rendering of each rule is what a later listing gives back, so there is no second encoder of
// the rules to get wrong, and the plan is checked too (every chain the plan has, none other).

// tableState is socksgate's table as the kernel lists it: what a drift is measured against.
type tableState struct {
	flags  uint32
	chains []chainState // in the kernel's order, as are sets and elements: two listings of the
	sets   []setState   // same table give the same order, so nothing is sorted
}

type chainState struct {
	name, typ       string
	hook, prio, pol int64 // -1: none (not a base chain, or no policy)
	rules           [][]expr.Any
}

type setState struct {
	name     string
	keyType  string
	interval bool
	elems    []nftables.SetElement // Key, KeyEnd, IntervalEnd only
}

// readTable lists table inet name from the kernel (in netns when non-zero). A missing table is
// (nil, nil).
func readTable(netns int, name string) (*tableState, error) {
	var opts []nftables.ConnOption
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("list table inet %s: %w", name, err)
	}
	st := &tableState{flags: t.Flags}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list inet chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != name {
			continue
		}
		cs := chainState{name: ch.Name, typ: string(ch.Type), hook: -1, prio: -1, pol: -1}
		if ch.Hooknum != nil {
			cs.hook = int64(*ch.Hooknum)
		}
		if ch.Priority != nil {
			cs.prio = int64(*ch.Priority)
		}
		if ch.Policy != nil {
			cs.pol = int64(*ch.Policy)
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			cs.rules = append(cs.rules, r.Exprs)
		}
		st.chains = append(st.chains, cs)
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", name, err)
	}
	for _, s := range sets {
		ss := setState{name: s.Name, keyType: s.KeyType.Name, interval: s.Interval}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		for _, e := range elems {
			ss.elems = append(ss.elems, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd})
		}
		st.sets = append(st.sets, ss)
	}
	return st, nil
}

// drift says how have differs from want ("" when it does not): the first difference, for the
// log. want nil means nothing is known to compare against (only the plan's chains are checked).
func drift(have, want *tableState, p tablePlan) string {
	if have == nil {
		return "table inet " + p.name + " missing"
	}
	var names []string
	for _, c := range have.chains {
		names = append(names, c.name)
	}
	var planned []string
	for _, c := range p.chains {
		planned = append(planned, c.name)
	}
	slices.Sort(names)
	slices.Sort(planned)
	if !slices.Equal(names, planned) {
		return fmt.Sprintf("chains of table inet %s are [%s], want [%s]", p.name, strings.Join(names, " "), strings.Join(planned, " "))
	}
	if want == nil {
		return ""
	}
	if have.flags != want.flags {
		return fmt.Sprintf("table inet %s flags %#x, want %#x", p.name, have.flags, want.flags)
	}
	if len(have.chains) != len(want.chains) {
		return fmt.Sprintf("table inet %s has %d chains, want %d", p.name, len(have.chains), len(want.chains))
	}
	for i, c := range have.chains {
		w := want.chains[i]
		switch {
		case c.name != w.name:
			return fmt.Sprintf("chain %s, want %s", c.name, w.name)
		case c.typ != w.typ || c.hook != w.hook || c.prio != w.prio || c.pol != w.pol:
			return fmt.Sprintf("chain %s: type, hook, priority or policy changed", c.name)
		case len(c.rules) != len(w.rules):
			return fmt.Sprintf("chain %s has %d rules, want %d", c.name, len(c.rules), len(w.rules))
		}
		for j := range c.rules {
			if !reflect.DeepEqual(c.rules[j], w.rules[j]) {
				return fmt.Sprintf("rule %d of chain %s changed", j+1, c.name)
			}
		}
	}
	if len(have.sets) != len(want.sets) {
		return fmt.Sprintf("table inet %s has %d sets, want %d", p.name, len(have.sets), len(want.sets))
	}
	for i, s := range have.sets {
		w := want.sets[i]
		switch {
		case s.name != w.name || s.keyType != w.keyType || s.interval != w.interval:
			return fmt.Sprintf("set %s, want set %s", s.name, w.name)
		case !reflect.DeepEqual(s.elems, w.elems):
			return fmt.Sprintf("elements of set %s changed (%d, want %d)", s.name, len(s.elems), len(w.elems))
		}
	}
	return ""
}
