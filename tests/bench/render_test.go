//go:build linux

package bench

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// render writes the run as markdown: the machine, the figures, the ratios the targets are
// stated in, and the idle-flow costs.
func render(p params, cs []contender, all map[string]*results, took time.Duration) string {
	var b strings.Builder
	mode := "full"
	if p.quick {
		mode = "quick (BENCH_QUICK=1: smoke run, figures not meaningful)"
	}
	fmt.Fprintf(&b, "# socksgate benchmark, %s\n\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), kernel %s, %s\n", runtime.NumCPU(), cpuModel(), kernel(), goVersion())
	fmt.Fprintf(&b, "- run: %s, %d round(s) alternating contenders, iperf3 %s per case, %d concurrent clients for %ss of `Connection: close` requests, took %s\n",
		mode, p.rounds, strings.Join(p.iperfArgs, " "), p.loadConc, p.loadSecs, took.Round(time.Second))
	fmt.Fprintf(&b, "- lab: lan → gw → proxy → wan namespaces (veth); upstream dante-server (danted -N 4) in proxy; socksgate and redsocks run in gw; throughput and latency are medians over rounds\n\n")

	b.WriteString("## Throughput, flows, latency\n\n")
	b.WriteString("| contender | 1 stream → Gbit/s | 1 stream ← | 8 streams → | 8 streams ← | new flows/s | p50 ms | p99 ms | gateway CPU s/GiB | gateway CPU µs/flow |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cs {
		r := all[c.name]
		fmt.Fprintf(&b, "| %s |", c.name)
		for _, ic := range iperfCases {
			fmt.Fprintf(&b, " %s |", num(median(r.tput[ic.name]), 2))
		}
		cpu, perFlow := "–", "–"
		if strings.HasPrefix(c.name, "socksgate") || strings.HasPrefix(c.name, "redsocks") {
			if r.bytes > 0 {
				cpu = num(r.cpuSecs/(r.bytes/(1<<30)), 3)
			}
			if r.loadN > 0 {
				perFlow = num(r.loadCPU/r.loadN*1e6, 0)
			}
		}
		fmt.Fprintf(&b, " %s | %s | %s | %s | %s |\n", num(median(r.flows), 0), num(median(r.p50), 2), num(median(r.p99), 2), cpu, perFlow)
	}

	b.WriteString("\n## Ratios\n\n")
	b.WriteString("| ratio | 1 stream → | 1 stream ← | 8 streams → | 8 streams ← | new flows/s | p50 latency |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	ratio := func(a, ref string) {
		ra, rr := all[a], all[ref]
		if ra == nil || rr == nil {
			return
		}
		fmt.Fprintf(&b, "| %s ÷ %s |", a, ref)
		for _, ic := range iperfCases {
			fmt.Fprintf(&b, " %s |", num(median(ra.tput[ic.name])/median(rr.tput[ic.name]), 2))
		}
		fmt.Fprintf(&b, " %s | %s |\n", num(median(ra.flows)/median(rr.flows), 2), num(median(ra.p50)/median(rr.p50), 2))
	}
	for _, c := range cs {
		switch {
		case strings.HasPrefix(c.name, "socksgate") && strings.HasSuffix(c.name, "dante"):
			ratio(c.name, "explicit")
			ratio(c.name, "redsocks → dante")
		case strings.HasPrefix(c.name, "socksgate"):
			ratio(c.name, "routing")
		}
	}
	ratio("redsocks → dante", "explicit")

	if p.parts["slowsink"] {
		fmt.Fprintf(&b, "\n## Fast sender, slow sink\n\n")
		fmt.Fprintf(&b, "One flow: the lan client writes as fast as the path takes it for %ds into a wan sink that reads %.0f MB/s. "+
			"Peaks over samples every 100 ms: bytes in flight (written and not yet read: everything the path holds, "+
			"including queues no kernel counter charges), and the growth of the gateway's RSS, of the kernel memory of the lab's TCP sockets "+
			"(`ss -m` skmem receive queue + send queue + forward allocation, over the four namespaces), of the machine's TCP memory "+
			"(/proc/net/sockstat, machine-wide) and of Slab. Issue 6 bounds the memory at 100 MiB.\n\n", p.slowSecs, slowSinkRate/1e6)
		b.WriteString("| contender | sink MB/s | in flight MiB | gateway RSS +MiB | lab TCP sockets +MiB | machine TCP memory +MiB | slab +MiB | note |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
		for _, c := range cs {
			r := all[c.name]
			if r.slowErr != nil && r.slow.Samples == 0 {
				fmt.Fprintf(&b, "| %s | – | – | – | – | – | – | %v |\n", c.name, r.slowErr)
				continue
			}
			s, rss := r.slow, "–"
			if c.baseline != "" {
				rss = num(float64(s.Peak.RSSKiB)/1024, 1)
			}
			note := ""
			if r.slowErr != nil {
				note = r.slowErr.Error()
			}
			if worst := max(s.Peak.InFlight, s.Peak.RSSKiB<<10, s.Peak.LabTCPKiB<<10); worst >= 100<<20 {
				note = strings.TrimPrefix(note+"; over the 100 MiB bound", "; ")
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name, num(s.SinkRate(), 1), num(float64(s.Peak.InFlight)/(1<<20), 1), rss,
				num(float64(s.Peak.LabTCPKiB)/1024, 1), num(float64(s.Peak.TCPMemKiB)/1024, 1), num(float64(s.Peak.SlabKiB)/1024, 1), note)
		}
	}

	for _, n := range p.idleCounts {
		fmt.Fprintf(&b, "\n## %d idle relayed connections\n\n", n)
		b.WriteString("Each connection carried one byte each way, then idles. Per flow = (after − before) ÷ flows held. " +
			"Kernel memory is the change of Slab in /proc/meminfo (machine-wide: every socket of the path, client and server included); " +
			"the gateway's share subtracts the same path without the gateway (explicit for → dante, routing for → direct).\n\n")
		b.WriteString("| contender | flows held | gateway RSS KiB/flow | gateway fds/flow | kernel slab KiB/flow (whole path) | kernel KiB/flow, gateway's share | note |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---|\n")
		for _, c := range cs {
			r := all[c.name].idle[n]
			rss, fds, share := "–", "–", "–"
			if c.baseline != "" {
				rss, fds = num(r.rssKiB, 1), num(r.fds, 2)
				if base := all[c.baseline]; base != nil {
					share = num(r.slabKiB-base.idle[n].slabKiB, 1)
				}
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s |\n", c.name, r.held, rss, fds, num(r.slabKiB, 1), share, r.note)
		}
	}
	b.WriteString("\nReproduce: `sudo make bench` (full) or `sudo BENCH_QUICK=1 make bench`; `BENCH_RELAYS=splice,buffered,kernel` adds the other relay modes; `BENCH_PARTS=throughput,slowsink,idle` picks the parts.\n")
	return b.String()
}

func num(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.IndexByte(l, ':'); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	out, _ := exec.Command("uname", "-r").Output()
	return strings.TrimSpace(string(out))
}

func goVersion() string {
	out, err := exec.Command("go", "version").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "go version ")
}
