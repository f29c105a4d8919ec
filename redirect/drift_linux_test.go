package redirect

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/socksgate/socksgate/configs"
)

// drift names the first difference between the kernel's table and the one installed, and
// nothing when they are the same.
func TestDrift(t *testing.T) {
	p := systemSpec().withDefaults().plan()
	want := func() *tableState {
		st := &tableState{}
		for _, c := range p.chains {
			cs := chainState{name: c.name, typ: c.typ, hook: 0, prio: int64(c.priority), pol: 1}
			for _, r := range c.rules {
				cs.rules = append(cs.rules, r.exprs(testSets))
			}
			st.chains = append(st.chains, cs)
		}
		slices.SortFunc(st.chains, func(a, b chainState) int { return strings.Compare(a.name, b.name) })
		st.sets = []setState{
			{name: setBypass4, keyType: "ipv4_addr", interval: true, elems: []nftables.SetElement{{Key: []byte{10, 0, 0, 0}}, {Key: []byte{11, 0, 0, 0}, IntervalEnd: true}}},
			{name: setLAN, keyType: "ifname", elems: []nftables.SetElement{{Key: []byte("lan0")}}},
		}
		return st
	}
	for _, tc := range []struct {
		name, drift string
		mod         func(*tableState)
	}{
		{"same", "", func(*tableState) {}},
		{"table gone", "table inet socksgate missing", nil},
		{"chain gone", "chains of table inet socksgate are [output_raw prerouting_mangle prerouting_nat]", func(s *tableState) { s.chains = s.chains[1:] }},
		{"rule gone", "chain output_raw has 0 rules, want 1", func(s *tableState) {
			for i := range s.chains {
				if s.chains[i].name == chainRawOut {
					s.chains[i].rules = nil
				}
			}
		}},
		{"rule changed", "rule 1 of chain prerouting_nat changed", func(s *tableState) {
			for i := range s.chains {
				if s.chains[i].name == chainNAT {
					s.chains[i].rules[0] = []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
				}
			}
		}},
		{"policy changed", "chain forward_filter: type, hook, priority or policy changed", func(s *tableState) { s.chains[0].pol = 0 }},
		{"element added", "elements of set bypass4 changed (3, want 2)", func(s *tableState) {
			s.sets[0].elems = append(s.sets[0].elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(0xc6336400)})
		}},
		{"set gone", "table inet socksgate has 1 sets, want 2", func(s *tableState) { s.sets = s.sets[1:] }},
		{"flags", "table inet socksgate flags 0x2, want 0", func(s *tableState) { s.flags = nftTableFlagOwner }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var have *tableState
			if tc.mod != nil {
				have = want()
				tc.mod(have)
			}
			got := drift(have, want(), p)
			if tc.drift == "" && got != "" || !strings.HasPrefix(got, tc.drift) {
				t.Errorf("drift = %q, want %q", got, tc.drift)
			}
		})
	}
	// Nothing recorded to compare with: only the plan's chains count.
	if got := drift(want(), nil, p); got != "" {
		t.Errorf("drift against nothing = %q", got)
	}
}

// What the kernel lists right after an install is what a second listing gives: no drift in a
// table nobody touched, and the listing has every planned rule.
func TestReadTableIsStable(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	s.ICMP = configs.ICMPBlock
	s.RouterCapture = true
	r := applyIn(t, ns, s)
	if r.installed == nil {
		t.Fatal("nothing recorded after the install")
	}
	for _, c := range r.installed.chains {
		if want := wantRuleCount(s)[c.name]; len(c.rules) != want {
			t.Errorf("chain %s: %d rules listed, want %d", c.name, len(c.rules), want)
		}
	}
	have, err := readTable(ns.fd, r.Spec().Table)
	if err != nil {
		t.Fatal(err)
	}
	if d := drift(have, r.installed, r.Spec().plan()); d != "" {
		t.Errorf("drift in an untouched table: %s", d)
	}
}
