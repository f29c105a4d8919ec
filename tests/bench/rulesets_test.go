package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/ruleset"
	"github.com/socksgate/socksgate/upstream"
)

// The rule-set part of `make bench` (BENCH_PARTS=rulesets): a domain set of 1,000,000 names
// and a cidr set of 200,000 prefixes, made up here (nothing big is committed), each loaded
// from its file in a process of its own so that its RSS is its own, beside a plain Go map of
// the same entries loaded the same way. A lookup is the match of a flow's name (or address):
// half of them hit. The per-flow cost of the rule index is Route for a flow checked against a
// rule with each set, at 1,000 and at the full size: it should not grow with the set.

// ruleSetChildEnv makes the test binary a measuring child: KIND:IMPL:PATH.
const ruleSetChildEnv = "SOCKSGATE_RULESET_CHILD"

type ruleSetResult struct {
	Kind, Impl string
	Entries    int
	LoadSecs   float64
	RSSMiB     float64 // RSS after the load (garbage collected, freed to the OS) minus before
	PeakMiB    float64 // the highest RSS while loading (VmHWM) minus the RSS before
	HeapMiB    float64 // heap in use after the load minus before
	LookupNs   float64
	RouteNs    float64 // route.Route with the set in a rule (ruleset impl only)
	Err        string
}

// countryList is n random /24s of 100.64.0.0/10 and the given prefixes, one a line.
func countryList(n int, extra ...string) string {
	var b strings.Builder
	rng := rand.New(rand.NewPCG(7, 8))
	for range n {
		v := rng.Uint32N(1 << 14)
		fmt.Fprintf(&b, "100.%d.%d.0/24\n", 64+v>>8, v&0xff)
	}
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	return b.String()
}

// writeDomains writes n made-up names (v2fly-style list: a name stands for itself and every
// name under it) and returns probes: names under listed ones and names not listed, alternating.
func writeDomains(path string, n int) ([]string, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	tlds := []string{"com", "net", "org", "cn", "io", "de"}
	var probes []string
	for i := range n {
		name := fmt.Sprintf("%s%x.%s", "site", rng.Uint64()>>24, tlds[i%len(tlds)])
		fmt.Fprintln(w, name)
		if i%(n/5000+1) == 0 {
			probes = append(probes, "www.cdn."+name, fmt.Sprintf("www.other%x.%s", rng.Uint64()>>24, tlds[i%len(tlds)]))
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return probes, f.Close()
}

func writeCIDRs(path string, n int) ([]netip.Addr, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	var probes []netip.Addr
	for i := range n {
		if i%5 == 4 {
			var b [16]byte
			b[0], b[1] = 0x24, 0x08
			for j := 2; j < 6; j++ {
				b[j] = byte(rng.Uint32())
			}
			p := netip.PrefixFrom(netip.AddrFrom16(b), 48)
			fmt.Fprintln(w, p)
			continue
		}
		v := rng.Uint32() &^ 0xff
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0})
		fmt.Fprintf(w, "%s/24\n", a)
		if i%(n/5000+1) == 0 {
			probes = append(probes, a.Next(), netip.AddrFrom4([4]byte{byte(rng.Uint32()), 1, 2, 3}))
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return probes, f.Close()
}

func rssMiB() float64 { return statusKiB(os.Getpid(), "VmRSS") / 1024 }

func settledMem() (rss, heap float64) {
	runtime.GC()
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return rssMiB(), float64(m.HeapInuse) / (1 << 20)
}

// TestRuleSetChild is the measuring child; it does nothing in a normal run.
func TestRuleSetChild(t *testing.T) {
	spec := os.Getenv(ruleSetChildEnv)
	if spec == "" {
		t.Skip("a child of the bench's rule-set part")
	}
	parts := strings.SplitN(spec, ":", 3)
	r := measureRuleSet(parts[0], parts[1], parts[2])
	out, _ := json.Marshal(r)
	fmt.Println("RESULT " + string(out))
}

func measureRuleSet(kind, impl, path string) ruleSetResult {
	res := ruleSetResult{Kind: kind, Impl: impl}
	probesPath := path + ".probes"
	data, err := os.ReadFile(probesPath)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	probes := strings.Fields(string(data))
	data = nil
	rss0, heap0 := settledMem()
	start := time.Now()
	var lookup func(string) bool
	var keep any
	var set *ruleset.Set
	switch impl {
	case "ruleset":
		k := configs.SetDomain
		if kind == "cidr" {
			k = configs.SetCIDR
		}
		set, err = ruleset.Load(configs.RuleSet{Name: "s", Kind: k, Path: path})
		if err != nil {
			res.Err = err.Error()
			return res
		}
		keep, res.Entries = set, set.Len()
		if kind == "cidr" {
			addrs := parseAddrs(probes)
			i := 0
			lookup = func(string) bool { i++; return set.CIDRs.Contains(addrs[i%len(addrs)]) }
		} else {
			lookup = set.Domains.Match
		}
	case "map":
		f, err := os.Open(path)
		if err != nil {
			res.Err = err.Error()
			return res
		}
		sc := bufio.NewScanner(f)
		if kind == "cidr" {
			m := map[netip.Prefix]struct{}{}
			for sc.Scan() {
				if p, err := netip.ParsePrefix(sc.Text()); err == nil {
					m[p.Masked()] = struct{}{}
				}
			}
			keep, res.Entries = m, len(m)
			addrs := parseAddrs(probes)
			i := 0
			// Every prefix length, longest first: what a map of prefixes takes to match.
			lookup = func(string) bool {
				i++
				a := addrs[i%len(addrs)]
				for bits := a.BitLen(); bits >= 0; bits-- {
					p, _ := a.Prefix(bits)
					if _, ok := m[p]; ok {
						return true
					}
				}
				return false
			}
		} else {
			m := map[string]struct{}{}
			for sc.Scan() {
				m[strings.ToLower(sc.Text())] = struct{}{}
			}
			keep, res.Entries = m, len(m)
			// The name and each suffix at a label: the same question the set answers.
			lookup = func(name string) bool {
				name = strings.ToLower(name)
				for {
					if _, ok := m[name]; ok {
						return true
					}
					i := strings.IndexByte(name, '.')
					if i < 0 {
						return false
					}
					name = name[i+1:]
				}
			}
		}
		f.Close()
	}
	res.LoadSecs = time.Since(start).Seconds()
	rss1, heap1 := settledMem()
	res.RSSMiB, res.HeapMiB = rss1-rss0, heap1-heap0
	res.PeakMiB = statusKiB(os.Getpid(), "VmHWM")/1024 - rss0
	const rounds = 2_000_000
	start = time.Now()
	hits := 0
	for i := range rounds {
		if lookup(probes[i%len(probes)]) {
			hits++
		}
	}
	res.LookupNs = float64(time.Since(start).Nanoseconds()) / rounds
	if hits == 0 || hits == rounds {
		res.Err = fmt.Sprintf("%d hits in %d lookups: the probes are wrong", hits, rounds)
	}
	if set != nil {
		res.RouteNs = routeCost(kind, set, probes)
	}
	runtime.KeepAlive(keep)
	return res
}

func parseAddrs(ss []string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// routeCost is Route's time for a flow against rules that use the set: a domain_set or
// dst_set rule first, a dst rule, then the catch-all.
func routeCost(kind string, set *ruleset.Set, probes []string) float64 {
	cfg := &configs.Config{Rules: []configs.Rule{
		{Name: "set", Action: configs.ActionDirect},
		{Name: "lit", Dst: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Action: configs.ActionDirect},
		{Name: "rest", Action: configs.ActionBlock},
	}}
	rs := configs.RuleSet{Name: "s", Kind: set.Kind}
	if kind == "cidr" {
		cfg.Rules[0].DstSet = []string{"s"}
	} else {
		cfg.Rules[0].DomainSet = []string{"s"}
	}
	ups, err := upstream.NewUpstreamsIdle(cfg, upstream.Direct{})
	if err != nil {
		return -1
	}
	r, err := route.NewRouterSets(cfg, ups, map[string]*ruleset.Handle{"s": ruleset.NewHandle(rs, set)})
	if err != nil {
		return -1
	}
	flows := make([]route.Flow, 0, len(probes))
	for i, p := range probes {
		f := route.Flow{Network: route.TCP, Src: netip.MustParseAddrPort("10.0.0.2:40000"), Inbound: route.Redirect,
			Dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 443)}
		if kind == "cidr" {
			if a, err := netip.ParseAddr(p); err == nil {
				f.Dst = netip.AddrPortFrom(a, 443)
			}
		} else {
			f.Host = p
		}
		flows = append(flows, f)
	}
	const rounds = 1_000_000
	ctx := context.Background()
	start := time.Now()
	for i := range rounds {
		r.Route(ctx, flows[i%len(flows)])
	}
	return float64(time.Since(start).Nanoseconds()) / rounds
}

// runRuleSetBench writes the files and measures each in a child process.
func runRuleSetBench(t *testing.T, p params) []ruleSetResult {
	dir := t.TempDir()
	nDom, nCIDR := 1_000_000, 200_000
	if p.quick {
		nDom, nCIDR = 100_000, 20_000
	}
	var out []ruleSetResult
	for _, sz := range []struct {
		kind string
		n    int
	}{{"domain", 1000}, {"domain", nDom}, {"cidr", 1000}, {"cidr", nCIDR}} {
		path := filepath.Join(dir, fmt.Sprintf("%s-%d.txt", sz.kind, sz.n))
		var probes []string
		if sz.kind == "domain" {
			ps, err := writeDomains(path, sz.n)
			if err != nil {
				t.Fatal(err)
			}
			probes = ps
		} else {
			as, err := writeCIDRs(path, sz.n)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range as {
				probes = append(probes, a.String())
			}
		}
		if err := os.WriteFile(path+".probes", []byte(strings.Join(probes, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, impl := range []string{"ruleset", "map"} {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestRuleSetChild$", "-test.v")
			cmd.Env = append(os.Environ(), ruleSetChildEnv+"="+sz.kind+":"+impl+":"+path, "BENCH=")
			b, err := cmd.CombinedOutput()
			r := ruleSetResult{Kind: sz.kind, Impl: impl, Entries: sz.n}
			if i := strings.Index(string(b), "RESULT "); i >= 0 {
				line := string(b[i+len("RESULT "):])
				line = line[:strings.IndexByte(line+"\n", '\n')]
				json.Unmarshal([]byte(line), &r)
			} else {
				r.Err = fmt.Sprintf("child: %v: %s", err, tail(string(b), 3))
			}
			t.Logf("rule set %s %d %s: %+v", sz.kind, sz.n, impl, r)
			out = append(out, r)
		}
	}
	return out
}

func renderRuleSets(rs []ruleSetResult) string {
	var b strings.Builder
	b.WriteString("\n## Rule sets\n\n")
	b.WriteString("Made-up lists loaded from their files, each in a process of its own: socksgate's set (ruleset) beside a plain Go map " +
		"of the same entries (map; a name is looked up with each of its suffixes, an address with each prefix length). RSS and heap are " +
		"what the load added once garbage was collected and returned, peak RSS the most it held while loading; a lookup is one name or address, half of them in the set; " +
		"Route is a flow routed against a rule with the set, a dst rule and a catch-all (ruleset only). Issue 19's budget: 1,000,000 " +
		"names in ≤ 3 s and ≤ 64 MiB, 200,000 prefixes in ≤ 32 MiB, a lookup ≤ 1 µs, Route flat as sets grow.\n\n")
	b.WriteString("| set | entries | impl | load s | RSS MiB | peak RSS MiB | heap MiB | lookup ns | Route ns | note |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rs {
		route := "–"
		if r.RouteNs > 0 {
			route = num(r.RouteNs, 0)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Kind, r.Entries, r.Impl, num(r.LoadSecs, 3), num(r.RSSMiB, 1),
			num(r.PeakMiB, 1), num(r.HeapMiB, 1), num(r.LookupNs, 0), route, r.Err)
	}
	b.WriteString("\n| ratio ruleset ÷ map | entries | load | RSS | lookup |\n|---|---:|---:|---:|---:|\n")
	for i := 0; i+1 < len(rs); i += 2 {
		a, m := rs[i], rs[i+1]
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", a.Kind, a.Entries, num(a.LoadSecs/m.LoadSecs, 2), num(a.RSSMiB/m.RSSMiB, 2), num(a.LookupNs/m.LookupNs, 2))
	}
	return b.String()
}
