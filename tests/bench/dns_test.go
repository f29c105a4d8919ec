//go:build linux

package bench

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The DNS part (BENCH_PARTS=dns): dnsperf in lan asks the router (gw, 10.0.1.1:53) a mix of
// names, 80% A and 20% AAAA, that dnsmasq in wan answers, each with an address (without one
// for AAAA the origin answers REFUSED, which neither contender caches: a fifth of the "cache
// hit" queries went to wan). On the router, in turn: socksgate's resolver, and dnsmasq
// forwarding to the same origin, the way a router's own resolver would. Two cases each: from cache (every name asked once before measuring,
// both caches hold them all) and through the upstream (both caches off: every query goes to
// wan). The memory per cache entry and per real-IP mapping come from the dns package's own
// benchmarks (heap per entry), and the gateway's RSS growth per name answered is measured too.

// dnsBench is the result of the DNS part.
type dnsBench struct {
	names, fillNames int
	secs             int
	rows             []dnsRow
	cacheB, cacheAcc float64 // heap and accounted bytes per cached A answer (BenchmarkCacheBytesPerEntry)
	mappingB         float64 // heap bytes per real-IP mapping (BenchmarkNamesBytesPerMapping, 100,000)
	rssPerName       float64 // socksgate's RSS growth per name answered (a cache entry and a mapping), bytes
	memErr           string
}

type dnsRow struct {
	cache     string // "hit" or "off"
	contender string
	qps       float64
	lost      float64 // fraction of queries lost
	latencyMs float64
	note      string
}

func (d dnsBench) qps(cache, contender string) float64 {
	for _, r := range d.rows {
		if r.cache == cache && r.contender == contender {
			return r.qps
		}
	}
	return 0
}

const dnsBenchOrigin = netlab.WAN4

// runDNSBench runs the DNS part in tp (whatever else ran is stopped: it needs gw's port 53).
func runDNSBench(t *testing.T, tp *netlab.Topology, bin string, p params) dnsBench {
	for _, b := range []string{"dnsperf", "dnsmasq"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("bench's dns part needs %s (apt-get install dnsperf dnsmasq-base)", b)
		}
	}
	r := dnsBench{names: 5000, fillNames: 20000, secs: 10}
	if p.quick {
		r = dnsBench{names: 500, fillNames: 2000, secs: 1}
	}
	origin := tp.WAN.Start("dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--listen-address="+dnsBenchOrigin, "--bind-interfaces", "-p", "53", "--user=root",
		"--pid-file="+writeFile(t, "origin.pid", ""), "--local-ttl=3600", "--neg-ttl=3600",
		"--address=/bench.test/"+netlab.WAN4, "--address=/bench.test/"+netlab.WAN6, "--dns-forward-max=10000")
	defer stopGently(origin)
	if !benchListening(tp.WAN, net.JoinHostPort(dnsBenchOrigin, "53"), 10*time.Second) {
		t.Fatalf("dnsmasq (origin) did not start:\n%s", origin.Output())
	}
	mix := dnsQueryFile(t, "mix", r.names)
	for _, cache := range []string{"hit", "off"} {
		for _, c := range []string{"socksgate", "dnsmasq"} {
			t.Logf("dns, cache %s: %s", cache, c)
			gwQuiet(t, tp)
			var stop func()
			if c == "socksgate" {
				stop = startDNSSocksgate(t, tp, bin, cache == "hit", 0)
			} else {
				stop = startDNSMasq(t, tp, cache == "hit")
			}
			row := dnsRow{cache: cache, contender: c}
			if cache == "hit" {
				dnsperf(tp, mix, "-n", "1") // fill the cache: every name once
			}
			res, err := dnsperf(tp, mix, "-l", strconv.Itoa(r.secs))
			if err != nil {
				row.note = err.Error()
			}
			row.qps, row.lost, row.latencyMs = res.qps, res.lost, res.latencyMs
			r.rows = append(r.rows, row)
			stop()
		}
	}
	// Memory: socksgate's RSS before and after answering fillNames distinct names once.
	gwQuiet(t, tp)
	pid := 0
	stop := startDNSSocksgate(t, tp, bin, true, r.fillNames*2, &pid)
	fill := dnsQueryFile(t, "fill", r.fillNames)
	dnsperf(tp, mix, "-n", "1") // the first queries grow what every query needs
	settle()
	rss0 := statusKiB(pid, "VmRSS")
	if res, err := dnsperf(tp, fill, "-n", "1", "-Q", "20000"); err != nil || res.lost > 0.01 {
		r.memErr = fmt.Sprintf("filling: %v, lost %.1f%%", err, 100*res.lost)
	}
	settle()
	r.rssPerName = (statusKiB(pid, "VmRSS") - rss0) * 1024 / float64(r.fillNames)
	stop()
	gwQuiet(t, tp)

	out, err := exec.Command("go", "test", "-run", "^$", "-bench", "^(BenchmarkCacheBytesPerEntry|BenchmarkNamesBytesPerMapping)$",
		"-benchtime", "1x", "../../dns").CombinedOutput()
	if err != nil {
		r.memErr = strings.TrimSpace(r.memErr + "; go test -bench ./dns: " + err.Error())
	}
	r.cacheB, r.cacheAcc, r.mappingB = benchMetric(string(out), "B/entry"), benchMetric(string(out), "accounted-B/entry"), benchMetric(string(out), "B/mapping")
	return r
}

// dnsQueryFile writes a dnsperf input of n names under bench.test, one in five AAAA.
func dnsQueryFile(t *testing.T, tag string, n int) string {
	var b strings.Builder
	for i := range n {
		qtype := "A"
		if i%5 == 4 {
			qtype = "AAAA"
		}
		fmt.Fprintf(&b, "%s%d.bench.test %s\n", tag, i, qtype)
	}
	path := writeFile(t, tag+".queries", b.String())
	return path
}

// startDNSSocksgate runs socksgate in gw answering on 10.0.1.1:53, every name direct to the
// origin, with its cache on (entries: the default, or cacheEntries) or off. pid, if given,
// receives the daemon's pid.
func startDNSSocksgate(t *testing.T, tp *netlab.Topology, bin string, cache bool, cacheEntries int, pid ...*int) func() {
	c := "{entries: 0, max_mib: 0}"
	if cache {
		c = "{entries: 20000, max_mib: 64}"
		if cacheEntries > 0 {
			c = fmt.Sprintf("{entries: %d, max_mib: 256}", cacheEntries)
		}
	}
	cfg := fmt.Sprintf(`log: {level: warn}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
rules:
  - {name: all, action: direct}
dns:
  listen: ["%s:53"]
  servers: ["%s"]
  direct: ["%s"]
  local: ["%s"]
  rate: -1
  cache: %s
  names: {entries: %d}
state_dir: %s
`, netlab.GWLANIf, netlab.GWLAN4, dnsBenchOrigin, dnsBenchOrigin, dnsBenchOrigin, c, max(100000, 2*cacheEntries), t.TempDir())
	p := tp.GW.Start(bin, "run", "-c", writeFile(t, "socksgate-dns.yaml", cfg))
	if !benchListening(tp.LAN, net.JoinHostPort(netlab.GWLAN4, "53"), 10*time.Second) {
		t.Fatalf("socksgate's DNS did not listen:\n%s", p.Output())
	}
	if len(pid) > 0 {
		*pid[0] = procPid(p, "socksgate")
	}
	return func() {
		stopGently(p)
		tp.GW.Run("nft", "delete", "table", "inet", "socksgate")
	}
}

// startDNSMasq runs dnsmasq in gw as a router's forwarding resolver on 10.0.1.1:53, with its
// cache on (10,000 entries, its usual maximum) or off.
func startDNSMasq(t *testing.T, tp *netlab.Topology, cache bool) func() {
	size := "0"
	if cache {
		size = "10000"
	}
	p := tp.GW.Start("dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--server="+dnsBenchOrigin, "--listen-address="+netlab.GWLAN4, "--bind-interfaces", "-p", "53",
		"--user=root", "--pid-file="+writeFile(t, "gw-dnsmasq.pid", ""), "--cache-size="+size,
		"--dns-forward-max=10000")
	if !benchListening(tp.LAN, net.JoinHostPort(netlab.GWLAN4, "53"), 10*time.Second) {
		t.Fatalf("dnsmasq in gw did not listen:\n%s", p.Output())
	}
	return func() { stopGently(p) }
}

type dnsperfResult struct{ qps, lost, latencyMs float64 }

// dnsperf runs dnsperf in lan against gw with the query file and more arguments.
func dnsperf(tp *netlab.Topology, file string, args ...string) (dnsperfResult, error) {
	out, err := tp.LAN.Run(append([]string{"dnsperf", "-s", netlab.GWLAN4, "-d", file, "-t", "2", "-q", "200", "-c", "4"}, args...)...)
	var r dnsperfResult
	r.qps = dnsperfField(out, "Queries per second:")
	r.latencyMs = dnsperfField(out, "Average Latency (s):") * 1000
	sent, lost := dnsperfField(out, "Queries sent:"), dnsperfField(out, "Queries lost:")
	if sent > 0 {
		r.lost = lost / sent
	}
	if err != nil || r.qps == 0 {
		return r, fmt.Errorf("dnsperf: %v: %s", err, tail(out, 6))
	}
	return r, nil
}

// dnsperfField is the first number after key in dnsperf's report.
func dnsperfField(out, key string) float64 {
	i := strings.Index(out, key)
	if i < 0 {
		return 0
	}
	f := strings.Fields(out[i+len(key):])
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// benchMetric is the value reported before unit in `go test -bench` output.
func benchMetric(out, unit string) float64 {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i := 1; i < len(f); i++ {
			if f[i] == unit {
				v, err := strconv.ParseFloat(f[i-1], 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return 0
}

// renderDNS writes the DNS part as markdown.
func renderDNS(d dnsBench) string {
	var b strings.Builder
	b.WriteString("\n## DNS: socksgate's resolver and dnsmasq on the router\n\n")
	fmt.Fprintf(&b, "dnsperf in lan (4 clients, 200 queries outstanding, %d s) asks gw 10.0.1.1:53 a mix of %d names (4 A : 1 AAAA) that dnsmasq in wan answers; "+
		"on gw, in turn, socksgate (one direct rule, rate limit off) and dnsmasq forwarding to the same origin. "+
		"Cache hit: every name asked once before measuring, both caches hold them all. Cache off: every query goes to wan and back.\n\n", d.secs, d.names)
	b.WriteString("| cache | contender | queries/s | lost | mean latency ms |  note |\n|---|---|---:|---:|---:|---|\n")
	for _, r := range d.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s%% | %s | %s |\n", r.cache, r.contender, num(r.qps, 0), num(100*r.lost, 2), num(r.latencyMs, 2), r.note)
	}
	for _, c := range []string{"hit", "off"} {
		if s, m := d.qps(c, "socksgate"), d.qps(c, "dnsmasq"); s > 0 && m > 0 {
			fmt.Fprintf(&b, "\nsocksgate ÷ dnsmasq, cache %s: **%s**", c, num(s/m, 2))
		}
	}
	b.WriteString("\n\n| memory | bytes |\n|---|---:|\n")
	fmt.Fprintf(&b, "| heap per cached A answer (`go test -bench CacheBytesPerEntry ./dns`; accounted against max_mib: %s) | %s |\n", num(d.cacheAcc, 0), num(d.cacheB, 0))
	fmt.Fprintf(&b, "| heap per real-IP mapping, 100,000 of them (`go test -bench NamesBytesPerMapping ./dns`) | %s |\n", num(d.mappingB, 0))
	if d.mappingB > 0 {
		fmt.Fprintf(&b, "| → 100,000 mappings (goal ≤ 20 MiB) | %s MiB |\n", num(d.mappingB*100000/(1<<20), 1))
	}
	fmt.Fprintf(&b, "| socksgate's RSS growth per name answered (%d names: a cache entry and a mapping each, GC headroom included) | %s |\n", d.fillNames, num(d.rssPerName, 0))
	if d.memErr != "" {
		fmt.Fprintf(&b, "\nNote: %s\n", d.memErr)
	}
	return b.String()
}
