package admin

import (
	"bytes"
	"net/http"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"time"
)

// Help texts of socksgate's own series. Every one is computed from one Snapshot per scrape.
const (
	helpActive = "Flows being handled now, by inbound and upstream (\"pending\" while routing and dialing)."
	helpTotal  = "Flows ended, by inbound, upstream and outcome (ok, failed, blocked)."
	helpBytes  = "Bytes relayed by ended flows, by inbound, upstream and direction (up: client to destination)."
	helpRefuse = "Flows refused before routing, by reason."
	helpDial   = "Time from a flow's start to its upstream connection being ready (routing, connect and proxy handshake), successful dials."
	helpUp     = "Upstream health: 1 up, 0 down. Members of a group are reported with the group label."
	helpUDP    = "UDP sessions now: transparent ones in the NAT table and explicit SOCKS5 associations."
	helpUDPTot = "UDP sessions created."
	helpBind   = "UDP replies dropped because their transparent reply socket could not be bound."
	helpSUDP   = "Datagrams the explicit SOCKS5 UDP relay dropped, by reason: foreign_source (not from the association's client socket), fragment (FRAG not 0, unsupported), malformed (unparsable SOCKS5 UDP header)."
	helpBuild  = "Always 1; labelled with the build."
	helpServe  = "1 while this router holds one of the LAN gateway addresses of its HA pair (ha.vip), so the LAN's flows come to it; 0 on the standby. Absent without ha.vip."
	helpRules  = "Times socksgate put its kernel rules (nftables table, policy routing) back after someone else removed or changed them (a firewall reload that flushes the ruleset)."
	helpDNSQ   = "DNS queries answered, by the rule that decided them and what became of them (resolve, block, local, fake, any, invalid, refused)."
	helpDNSC   = "DNS answers by where they came from: hit (the cache), miss (asked upstream), coalesced (an identical query in flight)."
	helpDNSErr = "DNS exchanges with a resolver that failed (timeout, garbage, refused dial), by resolver."
	helpDNSDrp = "DNS queries dropped unanswered, by reason: rate (the source was over dns.rate), source (not in dns.allow), malformed, overload (too many queries waiting for their resolvers)."
	helpDNSLat = "Time a resolver took to answer, successful exchanges, by resolver."
	helpDNSSz  = "DNS tables now: cache_entries, cache_bytes, mappings (real-IP map), fake_ips (fake-ip pool)."
	helpSetN   = "Entries of the rule set in force (names, keywords, expressions or prefixes)."
	helpSetErr = "Loads of the rule set's file refused (unreadable or unparsable): the version in force stays."
	helpSetAt  = "When the version of the rule set in force was loaded (Unix time); 0: never (its file has not been read)."
	helpSetOK  = "1 when the last load of the rule set's file went well, 0 when it was refused."
	helpDirect = "Prefixes in the kernel's direct sets: destinations of direct rules the kernel routes without socksgate."
	helpGeoOK  = "1 when the last load of the country database (geoip.path) succeeded, 0 when it failed and the version loaded before stays in force."
	helpGeoAt  = "When the country database in force was loaded (Unix time)."
	helpGeoErr = "Present while the last load of the country database failed: its error."
	helpGeoF   = "Loads of the country database that failed."
	helpGeoR   = "Reloads of the country database that succeeded (a change of the file, a reload of the config)."
)

// socksgateSeries adds socksgate's own series from src.
func socksgateSeries(e *expo, src Source, version string) {
	s := src.Snapshot()
	for _, a := range s.Active {
		e.gauge("socksgate_flows_active", helpActive, float64(a.Flows), "inbound", a.Inbound, "upstream", a.Upstream)
	}
	for _, f := range s.Ended {
		e.counter("socksgate_flows_total", helpTotal, float64(f.Flows), "inbound", f.Inbound, "upstream", f.Upstream, "outcome", f.Outcome)
	}
	// Bytes do not depend on the outcome: sum them over it.
	type ib struct{ inbound, upstream string }
	var order []ib
	up, down := map[ib]uint64{}, map[ib]uint64{}
	for _, f := range s.Ended {
		k := ib{f.Inbound, f.Upstream}
		if _, seen := up[k]; !seen {
			order = append(order, k)
		}
		up[k] += f.BytesUp
		down[k] += f.BytesDown
	}
	for _, k := range order {
		e.counter("socksgate_flow_bytes_total", helpBytes, float64(up[k]), "inbound", k.inbound, "upstream", k.upstream, "direction", "up")
		e.counter("socksgate_flow_bytes_total", helpBytes, float64(down[k]), "inbound", k.inbound, "upstream", k.upstream, "direction", "down")
	}
	for reason, n := range s.Refused {
		e.counter("socksgate_flows_refused_total", helpRefuse, float64(n), "reason", reason)
	}
	for _, h := range s.DialLatency {
		e.histogram("socksgate_dial_duration_seconds", helpDial, h.Buckets, h.Count, h.Sum, "upstream", h.Upstream)
	}
	for _, u := range src.Upstreams() {
		v := 0.0
		if u.Up {
			v = 1
		}
		e.gauge("socksgate_upstream_up", helpUp, v, "upstream", u.Name, "group", u.Group)
	}
	e.gauge("socksgate_udp_sessions", helpUDP, float64(s.UDPSessions))
	e.counter("socksgate_udp_sessions_total", helpUDPTot, float64(s.UDPSessionsTotal))
	e.counter("socksgate_udp_reply_bind_failures_total", helpBind, float64(s.ReplyBindFailures))
	e.counter("socksgate_rules_restored_total", helpRules, float64(s.RulesRestored))
	d := s.SOCKSUDPDropped
	e.counter("socksgate_socks_udp_dropped_total", helpSUDP, float64(d.ForeignSource), "reason", "foreign_source")
	e.counter("socksgate_socks_udp_dropped_total", helpSUDP, float64(d.Fragment), "reason", "fragment")
	e.counter("socksgate_socks_udp_dropped_total", helpSUDP, float64(d.Malformed), "reason", "malformed")
	if q := s.DNS; q != nil {
		for _, c := range q.Queries {
			e.counter("socksgate_dns_queries_total", helpDNSQ, float64(c.Queries), "rule", c.Rule, "action", c.Action)
		}
		e.counter("socksgate_dns_answers_total", helpDNSC, float64(q.CacheHits), "source", "hit")
		e.counter("socksgate_dns_answers_total", helpDNSC, float64(q.CacheMisses), "source", "miss")
		e.counter("socksgate_dns_answers_total", helpDNSC, float64(q.Coalesced), "source", "coalesced")
		for r, n := range q.UpstreamErrors {
			e.counter("socksgate_dns_upstream_errors_total", helpDNSErr, float64(n), "resolver", r)
		}
		e.counter("socksgate_dns_dropped_total", helpDNSDrp, float64(q.RateLimited), "reason", "rate")
		e.counter("socksgate_dns_dropped_total", helpDNSDrp, float64(q.RefusedSource), "reason", "source")
		e.counter("socksgate_dns_dropped_total", helpDNSDrp, float64(q.Malformed), "reason", "malformed")
		e.counter("socksgate_dns_dropped_total", helpDNSDrp, float64(q.Overloaded), "reason", "overload")
		for _, h := range q.Latency {
			e.histogram("socksgate_dns_upstream_duration_seconds", helpDNSLat, h.Buckets, h.Count, h.Sum, "resolver", h.Upstream)
		}
		e.gauge("socksgate_dns_table_size", helpDNSSz, float64(q.CacheEntries), "table", "cache_entries")
		e.gauge("socksgate_dns_table_size", helpDNSSz, float64(q.CacheBytes), "table", "cache_bytes")
		e.gauge("socksgate_dns_table_size", helpDNSSz, float64(q.Mappings), "table", "mappings")
		e.gauge("socksgate_dns_table_size", helpDNSSz, float64(q.FakeIPs), "table", "fake_ips")
	}
	for _, rs := range s.RuleSets {
		e.gauge("socksgate_rule_set_entries", helpSetN, float64(rs.Entries), "set", rs.Name)
		e.counter("socksgate_rule_set_load_errors_total", helpSetErr, float64(rs.LoadErrors), "set", rs.Name)
		at := 0.0
		if !rs.LastLoad.IsZero() {
			at = float64(rs.LastLoad.UnixMilli()) / 1000
		}
		e.gauge("socksgate_rule_set_last_load_timestamp_seconds", helpSetAt, at, "set", rs.Name)
		ok := 0.0
		if rs.OK {
			ok = 1
		}
		e.gauge("socksgate_rule_set_ok", helpSetOK, ok, "set", rs.Name)
	}
	e.gauge("socksgate_direct_prefixes", helpDirect, float64(s.DirectPrefixes))
	if g := s.GeoIP; g != nil {
		ok := 1.0
		if g.Err != "" {
			ok = 0
			e.gauge("socksgate_geoip_load_error", helpGeoErr, 1, "path", g.Path, "error", g.Err)
		}
		e.gauge("socksgate_geoip_load_ok", helpGeoOK, ok, "path", g.Path)
		e.gauge("socksgate_geoip_loaded_timestamp_seconds", helpGeoAt, float64(g.Loaded.Unix()), "path", g.Path)
		e.counter("socksgate_geoip_load_failures_total", helpGeoF, float64(g.Failures), "path", g.Path)
		e.counter("socksgate_geoip_reloads_total", helpGeoR, float64(g.Reloads), "path", g.Path)
	}
	deviceSeries(e, src)
	if _, held, ok := serving(src); ok {
		e.gauge("socksgate_serving", helpServe, float64(min(len(held), 1)))
	}
	e.gauge("socksgate_build_info", helpBuild, 1, "version", version, "goversion", runtime.Version())
}

// The runtime/metrics samples the go_memstats_* series are computed from, as the Prometheus
// Go client computes them (without stopping the world, unlike runtime.ReadMemStats).
const (
	rmTinyAllocs    = "/gc/heap/tiny/allocs:objects"
	rmAllocsObjects = "/gc/heap/allocs:objects"
	rmFreesObjects  = "/gc/heap/frees:objects"
	rmAllocsBytes   = "/gc/heap/allocs:bytes"
	rmHeapObjects   = "/gc/heap/objects:objects"
	rmHeapGoal      = "/gc/heap/goal:bytes"
	rmGOGC          = "/gc/gogc:percent"
	rmMemLimit      = "/gc/gomemlimit:bytes"
	rmGOMAXPROCS    = "/sched/gomaxprocs:threads"
	rmTotal         = "/memory/classes/total:bytes"
	rmHeapObjBytes  = "/memory/classes/heap/objects:bytes"
	rmHeapUnused    = "/memory/classes/heap/unused:bytes"
	rmHeapReleased  = "/memory/classes/heap/released:bytes"
	rmHeapFree      = "/memory/classes/heap/free:bytes"
	rmHeapStacks    = "/memory/classes/heap/stacks:bytes"
	rmOSStacks      = "/memory/classes/os-stacks:bytes"
	rmMSpanInuse    = "/memory/classes/metadata/mspan/inuse:bytes"
	rmMSpanFree     = "/memory/classes/metadata/mspan/free:bytes"
	rmMCacheInuse   = "/memory/classes/metadata/mcache/inuse:bytes"
	rmMCacheFree    = "/memory/classes/metadata/mcache/free:bytes"
	rmProfBuckets   = "/memory/classes/profiling/buckets:bytes"
	rmMetadataOther = "/memory/classes/metadata/other:bytes"
	rmOther         = "/memory/classes/other:bytes"
)

var rmNames = []string{rmTinyAllocs, rmAllocsObjects, rmFreesObjects, rmAllocsBytes, rmHeapObjects,
	rmHeapGoal, rmGOGC, rmMemLimit, rmGOMAXPROCS, rmTotal, rmHeapObjBytes, rmHeapUnused, rmHeapReleased,
	rmHeapFree, rmHeapStacks, rmOSStacks, rmMSpanInuse, rmMSpanFree, rmMCacheInuse, rmMCacheFree,
	rmProfBuckets, rmMetadataOther, rmOther}

// memstats are the go_memstats_* series: name (after go_memstats_), type, help, and the
// runtime/metrics samples whose sum is the value. Names, help and formulas are the Prometheus
// Go client's.
var memstats = []struct {
	name, typ, help string
	sum             []string
}{
	{"alloc_bytes", typeGauge, "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", []string{rmHeapObjBytes}},
	{"alloc_bytes_total", typeCounter, "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.", []string{rmAllocsBytes}},
	{"buck_hash_sys_bytes", typeGauge, "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", []string{rmProfBuckets}},
	{"frees_total", typeCounter, "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", []string{rmFreesObjects, rmTinyAllocs}},
	{"gc_sys_bytes", typeGauge, "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", []string{rmMetadataOther}},
	{"heap_alloc_bytes", typeGauge, "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", []string{rmHeapObjBytes}},
	{"heap_idle_bytes", typeGauge, "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", []string{rmHeapReleased, rmHeapFree}},
	{"heap_inuse_bytes", typeGauge, "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", []string{rmHeapObjBytes, rmHeapUnused}},
	{"heap_objects", typeGauge, "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", []string{rmHeapObjects}},
	{"heap_released_bytes", typeGauge, "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", []string{rmHeapReleased}},
	{"heap_sys_bytes", typeGauge, "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", []string{rmHeapObjBytes, rmHeapUnused, rmHeapReleased, rmHeapFree}},
	{"mallocs_total", typeCounter, "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", []string{rmAllocsObjects, rmTinyAllocs}},
	{"mcache_inuse_bytes", typeGauge, "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", []string{rmMCacheInuse}},
	{"mcache_sys_bytes", typeGauge, "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.", []string{rmMCacheInuse, rmMCacheFree}},
	{"mspan_inuse_bytes", typeGauge, "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", []string{rmMSpanInuse}},
	{"mspan_sys_bytes", typeGauge, "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.", []string{rmMSpanInuse, rmMSpanFree}},
	{"next_gc_bytes", typeGauge, "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", []string{rmHeapGoal}},
	{"other_sys_bytes", typeGauge, "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.", []string{rmOther}},
	{"stack_inuse_bytes", typeGauge, "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", []string{rmHeapStacks}},
	{"stack_sys_bytes", typeGauge, "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.", []string{rmHeapStacks, rmOSStacks}},
	{"sys_bytes", typeGauge, "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", []string{rmTotal}},
}

// goSeries adds the Go runtime series, with the names, help and meaning of the Prometheus Go
// client's default Go collector.
func goSeries(e *expo) {
	samples := make([]metrics.Sample, len(rmNames))
	for i, n := range rmNames {
		samples[i].Name = n
	}
	metrics.Read(samples)
	rm := make(map[string]uint64, len(samples))
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 { // KindBad: not supported by this runtime, 0
			rm[s.Name] = s.Value.Uint64()
		}
	}
	for _, m := range memstats {
		var v uint64
		for _, n := range m.sum {
			v += rm[n]
		}
		e.add("go_memstats_"+m.name, m.help, m.typ, series{value: float64(v)})
	}

	e.gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	threads, _ := runtime.ThreadCreateProfile(nil)
	e.gauge("go_threads", "Number of OS threads created.", float64(threads))
	e.gauge("go_info", "Information about the Go environment.", 1, "version", runtime.Version())
	e.gauge("go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function. Sourced from /gc/gogc:percent.", float64(rm[rmGOGC]))
	e.gauge("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.", float64(rm[rmMemLimit]))
	e.gauge("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.", float64(rm[rmGOMAXPROCS]))

	// GC pauses: min, quartiles and max of the recent pauses, their total and number.
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	q := make(map[float64]float64, len(gc.PauseQuantiles))
	for i, d := range gc.PauseQuantiles {
		q[float64(i)/float64(len(gc.PauseQuantiles)-1)] = d.Seconds()
	}
	e.summary("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.",
		q, uint64(gc.NumGC), gc.PauseTotal.Seconds())
	e.gauge("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.",
		float64(gc.LastGC.UnixNano())/1e9)
}

// metricsHandler serves socksgate's series, the Go runtime's and the process's in the
// Prometheus text format, all computed at request time.
func metricsHandler(src Source, version string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e expo
		socksgateSeries(&e, src, version)
		goSeries(&e)
		processSeries(&e)
		var buf bytes.Buffer
		e.WriteTo(&buf) // a bytes.Buffer does not fail
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		w.Write(buf.Bytes())
	})
}
