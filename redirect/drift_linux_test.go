package redirect

import (
	"net/netip"
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

// The direct sets are part of what the periodic check compares: an element someone else
// takes out of one is drift, and a Replace with new direct prefixes is the new baseline.
func TestDriftSeesTheDirectSets(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	s.Direct = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:2::/48")}
	r := applyIn(t, ns, s)
	if out, err := ns.nft(t, "delete", "element", "inet", "socksgate", setDirect4, "{ 198.51.100.0/24 }"); err != nil {
		t.Fatalf("nft delete element: %v\n%s", err, out)
	}
	have, err := readTable(ns.fd, r.Spec().Table)
	if err != nil {
		t.Fatal(err)
	}
	if d := drift(have, r.installed, r.Spec().plan()); !strings.Contains(d, "elements of set direct4 changed") {
		t.Errorf("drift = %q", d)
	}
	s.Direct = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	if err := r.Replace(s); err != nil {
		t.Fatal(err)
	}
	listing, _ := ns.nft(t, "list", "set", "inet", "socksgate", setDirect4)
	if !strings.Contains(listing, "203.0.113.0/24") || strings.Contains(listing, "198.51.100.0/24") {
		t.Errorf("direct4 after Replace:\n%s", listing)
	}
	have, _ = readTable(ns.fd, r.Spec().Table)
	if d := drift(have, r.installed, r.Spec().plan()); d != "" {
		t.Errorf("drift after Replace: %s", d)
	}
	// No direct prefixes left: the sets and their rules go.
	s.Direct = nil
	if err := r.Replace(s); err != nil {
		t.Fatal(err)
	}
	if listing, _ := ns.nft(t, "list", "table", "inet", "socksgate"); strings.Contains(listing, "direct4") {
		t.Errorf("direct sets left:\n%s", listing)
	}
}

// A direct set of largeN ranges installs in one batch (a socket buffer the default would
// overflow, elements split over messages) and is what the drift check lists back.
func TestApplyInstallsALargeDirectSet(t *testing.T) {
	ns := newNS(t)
	s := systemSpec()
	for i := range largeN {
		// Every other /24 from 1.0.0.0: none adjacent, so none merge.
		s.Direct = append(s.Direct, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(1 + i>>15), byte(i >> 7), byte(i << 1), 0}), 24))
	}
	r := applyIn(t, ns, s)
	if r.installed == nil {
		t.Fatal("nothing recorded after the install")
	}
	listing, _ := ns.nft(t, "list", "set", "inet", "socksgate", setDirect4)
	if n := strings.Count(listing, "/24"); n != largeN {
		t.Errorf("nft lists %d ranges in direct4, want %d", n, largeN)
	}
	for _, st := range r.installed.sets {
		if st.name == setDirect4 && len(st.elems) != 2*largeN {
			t.Errorf("direct4 is listed with %d elements, want %d", len(st.elems), 2*largeN)
		}
	}
	s.Direct = s.Direct[:10]
	if err := r.Replace(s); err != nil {
		t.Fatal(err)
	}
}

// largeN is the ranges of TestApplyInstallsALargeDirectSet: 100,000 take about 15 s here
// (install, listing, replace), 20,000 a few.
const largeN = 20_000
