package dns

import "testing"

func TestDomainMatcher(t *testing.T) {
	m, err := NewDomainMatcher([]string{"exact.example", "+.plus.example", ".dot.example", "*.star.example", "time.*.com", "STUN.*.*"})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"exact.example": true, "a.exact.example": false,
		"plus.example": true, "a.plus.example": true, "a.b.plus.example": true, "xplus.example": false,
		"dot.example": false, "a.dot.example": true, "a.b.dot.example": true,
		"star.example": false, "a.star.example": true, "a.b.star.example": false,
		"time.windows.com": true, "time.com": false, "time.a.b.com": false,
		"stun.l.google": true, "stun.l.google.com": false,
		"": false,
	} {
		if got := m.Match(name); got != want {
			t.Errorf("Match(%q) = %v, want %v", name, got, want)
		}
	}
	for _, bad := range []string{"", "+.", "a..b", "bad name.example"} {
		if _, err := NewDomainMatcher([]string{bad}); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
	var zero *DomainMatcher
	if zero.Match("a") {
		t.Error("nil matcher matched")
	}
}

func TestIsLocalName(t *testing.T) {
	zones := append([]string(nil), DefaultLocalZones...)
	for _, tc := range []struct {
		name string
		t    uint16
		want bool
	}{
		{"router", 1, true}, {"com", 43 /* DS */, false}, {"com", 2 /* NS */, false}, {"", 2, false},
		{"lan", 1, true}, {"a.lan", 1, true}, {"a.plan", 1, false}, {"x.home.arpa", 1, true},
		{"16.172.in-addr.arpa", 12, true}, {"1.31.172.in-addr.arpa", 12, true}, {"1.32.172.in-addr.arpa", 12, false},
		{"1.64.100.in-addr.arpa", 12, true}, {"1.128.100.in-addr.arpa", 12, false},
		{"in-addr.arpa", 12, false}, {"b.e.f.ip6.arpa", 12, true}, {"c.e.f.ip6.arpa", 12, false},
	} {
		if got := IsLocalName(tc.name, tc.t, zones); got != tc.want {
			t.Errorf("IsLocalName(%q, %d) = %v, want %v", tc.name, tc.t, got, tc.want)
		}
	}
}
