//go:build linux

package bench

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
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
	fmt.Fprintf(&b, "- run: %s, %d round(s) alternating contenders, iperf3 %s per case, %d concurrent clients for %ss of `Connection: close` requests (then one client alone for as long: the path's latency without queueing), took %s\n",
		mode, p.rounds, strings.Join(p.iperfArgs, " "), p.loadConc, p.loadSecs, took.Round(time.Second))
	fmt.Fprintf(&b, "- lab: lan → gw → proxy → wan namespaces (veth); upstream dante-server (danted -N 4) in proxy; socksgate and redsocks run in gw; throughput and latency are medians over rounds\n\n")

	if p.parts["throughput"] || p.parts["flows"] {
		b.WriteString("## Throughput, flows, latency\n\n")
		b.WriteString("| contender | 1 stream → Gbit/s | 1 stream ← | 8 streams → | 8 streams ← | new flows/s | p50 ms | p99 ms | p50 ms, 1 client | gateway CPU s/GiB | gateway CPU µs/flow | µs/flow, 1 client |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range cs {
			r := all[c.name]
			fmt.Fprintf(&b, "| %s |", c.name)
			for _, ic := range iperfCases {
				fmt.Fprintf(&b, " %s |", num(median(r.tput[ic.name]), 2))
			}
			cpu, perFlow, perOne := "–", "–", "–"
			if c.baseline != "" { // a gateway process of its own: its CPU is measured
				if r.oneN > 0 {
					perOne = num(r.oneCPU/r.oneN*1e6, 0) + kernelShare(r.oneSys, r.oneCPU)
				}
				if r.bytes > 0 {
					cpu = num(r.cpuSecs/(r.bytes/(1<<30)), 3) + kernelShare(r.cpuSys, r.cpuSecs)
				}
				if r.loadN > 0 {
					perFlow = num(r.loadCPU/r.loadN*1e6, 0) + kernelShare(r.loadSys, r.loadCPU)
				}
			}
			fmt.Fprintf(&b, " %s | %s | %s | %s | %s | %s | %s |\n", num(median(r.flows), 0), num(median(r.p50), 2), num(median(r.p99), 2), num(median(r.p50one), 2), cpu, perFlow, perOne)
		}

		b.WriteString("\n## Ratios\n\n")
		b.WriteString("| ratio | 1 stream → | 1 stream ← | 8 streams → | 8 streams ← | new flows/s | p50 latency | p50, 1 client | CPU/flow | CPU/flow, 1 client |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		ratio := func(a, ref string) {
			ra, rr := all[a], all[ref]
			if ra == nil || rr == nil {
				return
			}
			fmt.Fprintf(&b, "| %s ÷ %s |", a, ref)
			for _, ic := range iperfCases {
				fmt.Fprintf(&b, " %s |", num(median(ra.tput[ic.name])/median(rr.tput[ic.name]), 2))
			}
			perFlow := func(r *results) (load, one float64) {
				return r.loadCPU / r.loadN, r.oneCPU / r.oneN // NaN without a gateway (0/0)
			}
			la, oa := perFlow(ra)
			lr, or := perFlow(rr)
			fmt.Fprintf(&b, " %s | %s | %s | %s | %s |\n", num(median(ra.flows)/median(rr.flows), 2), num(median(ra.p50)/median(rr.p50), 2), num(median(ra.p50one)/median(rr.p50one), 2),
				num(la/lr, 2), num(oa/or, 2))
		}
		for _, c := range cs {
			switch {
			case strings.HasPrefix(c.name, "socksgate") && strings.HasSuffix(c.name, "dante"):
				ratio(c.name, "explicit")
				ratio(c.name, "redsocks → dante")
			case strings.HasPrefix(c.name, "socksgate"):
				ratio(c.name, "routing")
				ratio(c.name, "routing + conntrack")
			}
		}
		ratio("redsocks → dante", "explicit")
		ratio("gobound → dante", "redsocks → dante")
		ratio("gobound[net] → dante", "redsocks → dante")
		budgets(&b, cs, all)

	}

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

	if p.parts["burst"] {
		fmt.Fprintf(&b, "\n## A burst of %d new connections\n\n", p.burst)
		fmt.Fprintf(&b, "The lan client opens %d relayed connections at once (one byte each way), holds them %ds, and the gateway's RSS is sampled "+
			"every 10 ms from before the first to the end of the hold. Per flow = (peak − before) ÷ flows held; settled = (RSS at the end "+
			"of the hold − before) ÷ flows held. The peak counts what the handshakes held while they ran (stacks, buffers, heap not yet "+
			"collected or returned). One burst per contender per round, the order reversed every other round; medians, and the range "+
			"over the rounds in brackets.\n\n", p.burst, p.burstHold)
		b.WriteString("| contender | flows held | opened in ms | RSS before MiB | peak MiB | peak KiB/flow | settled KiB/flow | note |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
		for _, c := range cs {
			if c.baseline == "" {
				continue
			}
			var held, opened, before, peak, perFlow, settled []float64
			note := ""
			for _, r := range all[c.name].bursts {
				if r.note != "" {
					note = r.note
				}
				if r.held == 0 {
					continue
				}
				k := float64(r.held)
				held, opened = append(held, k), append(opened, float64(r.openedMs))
				before, peak = append(before, r.rss0/1024), append(peak, r.peak/1024)
				perFlow, settled = append(perFlow, (r.peak-r.rss0)/k), append(settled, (r.last-r.rss0)/k)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name, num(median(held), 0), num(median(opened), 0), num(median(before), 1),
				num(median(peak), 1), withRange(perFlow, 1), withRange(settled, 1), note)
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
	b.WriteString("\nReproduce: `sudo make bench` (full) or `sudo BENCH_QUICK=1 make bench`; `BENCH_RELAYS=splice,buffered,kernel` adds the other relay modes; `BENCH_PARTS=throughput,slowsink,idle,burst,dns,udp,rulesets` picks the parts (`flows`: new flows and latency without iperf3).\n")
	return b.String()
}

// withRange is the median of v with its range in brackets when there is more than one value.
func withRange(v []float64, prec int) string {
	if len(v) < 2 {
		return num(median(v), prec)
	}
	return fmt.Sprintf("%s (%s–%s)", num(median(v), prec), num(slices.Min(v), prec), num(slices.Max(v), prec))
}

// kernelShare is " (N% kernel)": how much of a CPU figure the kernel spent.
func kernelShare(sys, all float64) string {
	if all <= 0 {
		return ""
	}
	return fmt.Sprintf(" (%.0f%% kernel)", 100*sys/all)
}

// budgets writes what the CPU-bound targets of issue 6 leave a gateway, under a simple model:
// when the machine's CPUs are all busy, a gateway that adds c CPU-seconds per flow (or per GiB) to
// the explicit path brings the rate from E to about 1/(1/E + c/N) on N CPUs, so a target rate T
// leaves it about N/T − N/E. It is an estimate: the gateway path also drops work the explicit one
// has (gw forwarding lan↔proxy packets, the client's own SOCKS exchange).
func budgets(b *strings.Builder, cs []contender, all map[string]*results) {
	ex, rs := all["explicit"], all["redsocks → dante"]
	if ex == nil || rs == nil || len(ex.flows) == 0 {
		return
	}
	var gws []string
	for _, c := range cs {
		if c.baseline == "explicit" {
			gws = append(gws, c.name)
		}
	}
	cpus := float64(runtime.NumCPU())
	b.WriteString("\n## What the CPU-bound targets leave a gateway\n\n")
	fmt.Fprintf(b, "When all %d CPUs are busy (second column: the machine during explicit), a gateway that adds c CPU-seconds per flow or per GiB "+
		"to the explicit path brings its rate E down to about 1/(1/E + c/N) on N CPUs, so a target rate T leaves the gateway about N/T − N/E. "+
		"The gateway columns are the gateway process's own CPU for the same unit and, in brackets, the part of it spent in the kernel "+
		"(accept, connect, TCP send and receive, splice), which any relay that terminates TCP pays in some form; some of it replaces "+
		"forwarding that gw does for explicit too, so it is a guide, not a floor. A negative budget asks for more than explicit's own rate.\n\n", int(cpus))
	b.WriteString("| target | machine busy | budget |")
	for _, g := range gws {
		fmt.Fprintf(b, " %s |", g)
	}
	b.WriteString("\n|---|---:|---:|" + strings.Repeat("---:|", len(gws)) + "\n")
	row := func(target, unit string, e, t, busy float64, cost func(r *results) (all, sys float64), prec int, scale float64) {
		budget := (cpus/t - cpus/e) * scale
		fmt.Fprintf(b, "| %s | %s | %s %s |", target, num(100*busy, 0)+"%", num(budget, prec), unit)
		for _, g := range gws {
			a, k := cost(all[g])
			fmt.Fprintf(b, " %s (%s) |", num(a*scale, prec), num(k*scale, prec))
		}
		b.WriteString("\n")
	}
	perFlow := func(r *results) (float64, float64) {
		if r.loadN == 0 {
			return math.NaN(), math.NaN()
		}
		return r.loadCPU / r.loadN, r.loadSys / r.loadN
	}
	perGiB := func(r *results) (float64, float64) {
		if r.bytes == 0 {
			return math.NaN(), math.NaN()
		}
		return r.cpuSecs / (r.bytes / (1 << 30)), r.cpuSys / (r.bytes / (1 << 30))
	}
	e, busy := median(ex.flows), median(ex.busy["flows"])
	row("new flows/s ≥ 0.9× explicit", "µs/flow", e, 0.9*e, busy, perFlow, 0, 1e6)
	row("new flows/s ≥ 1.15× redsocks", "µs/flow", e, 1.15*median(rs.flows), busy, perFlow, 0, 1e6)
	row("new flows/s ≥ 1.3× redsocks", "µs/flow", e, 1.3*median(rs.flows), busy, perFlow, 0, 1e6)
	gib := func(gbps float64) float64 { return gbps * 1e9 / 8 / (1 << 30) }
	for _, ic := range iperfCases[2:] { // the 8-stream cases; one stream is not CPU-bound
		e, busy := gib(median(ex.tput[ic.name])), median(ex.busy[ic.name])
		row(ic.name+" ≥ 0.95× explicit", "s/GiB", e, 0.95*e, busy, perGiB, 3, 1)
		row(ic.name+" ≥ 1.15× redsocks", "s/GiB", e, 1.15*gib(median(rs.tput[ic.name])), busy, perGiB, 3, 1)
	}
	b.WriteString("\n### One stream\n\nOne stream is not bound by CPU but by the slowest stage of its path, and every proxied contender's path " +
		"includes the upstream, whose own rate is explicit's. What the one-stream target asks, against that rate:\n\n" +
		"| target | explicit Gbit/s | asks Gbit/s | asks ÷ explicit |\n|---|---:|---:|---:|\n")
	for _, ic := range iperfCases[:2] {
		e, t := median(ex.tput[ic.name]), 1.15*median(rs.tput[ic.name])
		fmt.Fprintf(b, "| %s ≥ 1.15× redsocks | %s | %s | %s |\n", ic.name, num(e, 2), num(t, 2), num(t/e, 2))
	}
	b.WriteString("\nAbove 1, the target asks a gateway to carry one stream faster than its upstream carries it alone.\n")
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
