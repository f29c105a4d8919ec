package configs

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// manyRules is a configuration of n rules of the kinds large rule sets are
// made of (address blocks, domain lists, ports, sources), none shadowed,
// ending with a catch-all.
func manyRules(n int) []byte {
	var b strings.Builder
	b.WriteString("upstreams:\n  - {name: main, url: \"socks5://10.0.0.1:1080\"}\n  - {name: b, url: \"http://10.0.0.2:3128\"}\n")
	b.WriteString("groups: [{name: g, upstreams: [main, b]}]\nrules:\n")
	for i := range n - 1 {
		switch i % 5 {
		case 0:
			fmt.Fprintf(&b, "  - {dst: [%d.%d.%d.0/24], action: block}\n", 11+i/65536%200, i/256%256, i%256)
		case 1:
			fmt.Fprintf(&b, "  - {domain: [\"host%d.example.com\", \".sub%d.example.net\"], upstream: main}\n", i, i)
		case 2:
			fmt.Fprintf(&b, "  - {src: [192.168.%d.%d/32], dst_ports: [%d], upstream: g}\n", i/256%256, i%256, 1+i%60000)
		case 3:
			fmt.Fprintf(&b, "  - {protocol: [udp], dst: [\"2001:db8:%x::/48\"], dst_ports: [\"%d-%d\"], action: direct}\n", i%65536, 1+i%1000, 2000+i%1000)
		case 4:
			fmt.Fprintf(&b, "  - {name: r%d, inbound: [socks], domain: [\"*.d%d.example\"], action: block}\n", i, i)
		}
	}
	b.WriteString("  - {name: last, upstream: main}\n")
	return []byte(b.String())
}

// BenchmarkCheck50000Rules is `socksgate check` of 50,000 rules: Parse
// (decode and Validate) and Warnings. It was quadratic (17 s).
func BenchmarkCheck50000Rules(b *testing.B) {
	doc := manyRules(50000)
	for b.Loop() {
		c, err := Parse(doc)
		if err != nil {
			b.Fatal(err)
		}
		if w := c.Warnings(); len(w) != 0 {
			b.Fatalf("warnings: %q", w[:min(len(w), 3)])
		}
	}
}

// BenchmarkCheck50000Upstreams is check of 50,000 upstreams in one via
// chain, every one used: validation of names and via cycles is linear.
func BenchmarkCheck50000Upstreams(b *testing.B) {
	var s strings.Builder
	s.WriteString("upstreams:\n")
	for i := range 50000 {
		via := ""
		if i > 0 {
			via = fmt.Sprintf(", via: u%d", i-1)
		}
		fmt.Fprintf(&s, "  - {name: u%d, url: \"socks5://10.0.%d.%d:1080\"%s}\n", i, i/250%250, 1+i%250, via)
	}
	s.WriteString("rules: [{upstream: u49999}]\n")
	doc := []byte(s.String())
	for b.Loop() {
		c, err := Parse(doc)
		if err != nil {
			b.Fatal(err)
		}
		if w := c.Warnings(); len(w) != 0 {
			b.Fatalf("warnings: %q", w[:min(len(w), 3)])
		}
	}
}

// The indexed search for shadowing rules finds exactly what comparing every
// pair finds (below maxShadowChecks candidates).
func TestShadowIndexMatchesPairwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(pool []string) []string {
		var out []string
		for range rng.IntN(3) {
			out = append(out, pool[rng.IntN(len(pool))])
		}
		return out
	}
	dsts := []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.0.2.0/24", "0.0.0.0/0", "2001:db8::/32", "2001:db8:1::/48", "::/0"}
	srcs := []string{"192.168.0.0/16", "192.168.1.0/24", "192.168.1.5/32"}
	domains := []string{"example.com", ".example.com", "a.example.com", ".a.example.com", "b.a.example.com", ".com", "example.org"}
	ports := []string{"80", "443", "1-1000", "1001-2000", "53", "1-65535"}
	shadowed := 0
	for round := range 200 {
		var doc strings.Builder
		doc.WriteString("rules:\n")
		for range 60 {
			doc.WriteString("  - {action: block")
			for _, m := range []struct {
				key  string
				pool []string
			}{{"dst", dsts}, {"src", srcs}, {"domain", domains}, {"dst_ports", ports}, {"protocol", []string{"tcp", "udp"}}, {"inbound", []string{"transparent", "http", "socks"}}} {
				if v := pick(m.pool); len(v) > 0 && rng.IntN(3) == 0 {
					fmt.Fprintf(&doc, ", %s: [\"%s\"]", m.key, strings.Join(v, "\", \""))
				}
			}
			doc.WriteString("}\n")
		}
		c := mustParse(t, doc.String())
		x := newShadowIndex(c.Rules)
		for j := range c.Rules {
			want := -1
			for i := range j {
				if covers(&c.Rules[i], &c.Rules[j]) {
					want = i
					break
				}
			}
			if got := x.coveredBy(j); got != want {
				t.Fatalf("round %d: rules[%d] %+v covered by %d, pairwise %d", round, j, c.Rules[j], got, want)
			}
			if want >= 0 {
				shadowed++
			}
			x.add(j)
		}
	}
	if shadowed < 1000 {
		t.Errorf("only %d shadowed rules in 12,000: the test does not exercise the index", shadowed)
	}
}
