package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

const explainUsage = `usage: socksgate explain -c FILE [flags] SRC DST[:PORT]
       socksgate explain -c FILE [flags] SRC --query NAME
       socksgate explain -c FILE --proto icmp SRC DST

Shows which rule decides a flow (or a DNS query with --query or --inbound dns), where it
goes, and why each earlier rule did not match; what transparent.quic does to UDP to port 443
and transparent.icmp to a ping (--proto icmp), which no rule decides. Nothing is dialled; a
name is resolved only with --resolve.
`

// explainReport is what explain prints, and with --json its schema.
type explainReport struct {
	Flow     *explainFlow     `json:"flow,omitempty"`
	Query    *explainQuery    `json:"query,omitempty"`
	Rules    []explainVerdict `json:"rules"`
	Decision explainDecision  `json:"decision"`
	// WouldResolve says a rule on addresses precedes the match of a name-only flow: the
	// running gateway resolves the name and matches its addresses too (see Resolved).
	WouldResolve bool     `json:"would_resolve,omitempty"`
	Resolved     []string `json:"resolved,omitempty"` // with --resolve: the name's addresses
	Note         string   `json:"note,omitempty"`
}

type explainFlow struct {
	Network string `json:"network"`
	Src     string `json:"src"`
	Dst     string `json:"dst,omitempty"`
	Name    string `json:"name,omitempty"`
	Port    uint16 `json:"port"`
	Inbound string `json:"inbound"`
	User    string `json:"user,omitempty"`    // --user
	SrcMAC  string `json:"src_mac,omitempty"` // --src-mac
	Device  string `json:"device,omitempty"`  // --device
}

type explainQuery struct {
	Src  string `json:"src"`
	Name string `json:"name"`
}

type explainVerdict struct {
	Index   int              `json:"index"` // 1-based, as `check` and the docs count rules
	Rule    string           `json:"rule"`
	Matched bool             `json:"matched"`
	Failed  []explainFailure `json:"failed,omitempty"`
	Sets    []explainSet     `json:"sets,omitempty"` // the rule sets that made a matcher match
}

type explainSet struct {
	Matcher string `json:"matcher"`
	Set     string `json:"set"`
}

type explainFailure struct {
	Matcher string `json:"matcher"`
	Reason  string `json:"reason"`
}

type explainDecision struct {
	Rule     string        `json:"rule"`
	Action   string        `json:"action"`
	Upstream string        `json:"upstream,omitempty"` // the config's name
	URL      string        `json:"url,omitempty"`      // redacted
	Group    *explainGroup `json:"group,omitempty"`
	Addr     string        `json:"addr,omitempty"` // the resolved address Route matched (with --resolve)
}

type explainGroup struct {
	Policy  string   `json:"policy"`
	Members []string `json:"members"`
	// Pick is the member the group would dial now, when that is knowable without the network;
	// else empty and Chosen says how it is chosen.
	Pick   string `json:"pick,omitempty"`
	Chosen string `json:"chosen"`
	OnDown string `json:"on_down"`
}

func explainMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, explainUsage); fs.PrintDefaults() }
	path := fs.String("c", "", "config file (YAML)")
	name := fs.String("name", "", "the flow's name (a sniffed SNI or Host, or the name a client gave)")
	proto := fs.String("proto", "tcp", "tcp, udp or icmp (a ping: transparent.icmp decides, not the rules)")
	inbound := fs.String("inbound", "transparent", "transparent, http, socks, dns or router (the router's own traffic, router.capture)")
	query := fs.String("query", "", "explain a DNS query for this name (RouteQuery semantics)")
	resolve := fs.Bool("resolve", false, "resolve a name-only destination as the gateway would (asks the system's resolver)")
	asJSON := fs.Bool("json", false, "print JSON")
	user := fs.String("user", "", "the user the client authenticated as on an explicit port, for user rules (needs --inbound http or socks)")
	srcMAC := fs.String("src-mac", "", "the source's MAC, for src_mac rules (the running gateway reads it from the neighbour table)")
	device := fs.String("device", "", "the source device's name, for device rules (the running gateway has it from the DHCP leases or reverse DNS)")
	// Flags may come before, between or after the positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if *path == "" {
		fmt.Fprintln(stderr, "socksgate explain: -c FILE is required")
		return 2
	}
	isQuery := *query != "" || *inbound == "dns"
	if want := 2; isQuery && *query != "" {
		want = 1
		if len(pos) != want {
			fmt.Fprintln(stderr, "socksgate explain: --query takes one argument, SRC")
			return 2
		}
	} else if len(pos) != want {
		fmt.Fprint(stderr, "socksgate explain: need SRC and DST\n", explainUsage)
		return 2
	}
	cfg, err := configs.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate: %v\n", err)
		return 1
	}
	ups, err := upstream.NewUpstreamsIdle(cfg, upstream.Direct{})
	if err != nil {
		fmt.Fprintf(stderr, "socksgate: %v\n", err)
		return 1
	}
	r, err := route.NewRouterSets(cfg, ups, loadSets(cfg, stderr))
	if err != nil {
		fmt.Fprintf(stderr, "socksgate: %v\n", err)
		return 1
	}
	src, err := parseSrc(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "socksgate explain: SRC: %v\n", err)
		return 2
	}
	if db, err := openGeoIP(cfg); err != nil {
		fmt.Fprintf(stderr, "socksgate explain: %v\n", err)
		return 1
	} else if db != nil {
		r.GeoIP, r.GeoPrefixes = db.Country, db.Prefixes // Prefixes: the direct sets, as the gateway hoists them
		explainGeo = db.Country
	}
	explainDevice = explainDev{}
	if *srcMAC != "" || *device != "" {
		var m configs.MAC
		if *srcMAC != "" {
			if m, err = configs.ParseMAC(*srcMAC); err != nil {
				fmt.Fprintf(stderr, "socksgate explain: --src-mac: %v\n", err)
				return 2
			}
		}
		name := strings.ToLower(strings.TrimSuffix(*device, "."))
		r.Device = func(netip.Addr) (configs.MAC, string, bool) { return m, name, true }
		explainDevice = explainDev{MAC: m, Name: name, Known: true}
	}
	var rep *explainReport
	if *proto == "icmp" {
		if isQuery {
			fmt.Fprintln(stderr, "socksgate explain: --proto icmp explains a ping, not a DNS query")
			return 2
		}
		if rep, err = explainICMP(cfg, src.Addr(), pos[1], *inbound); err != nil {
			fmt.Fprintf(stderr, "socksgate explain: %v\n", err)
			return 2
		}
	} else if isQuery {
		qname := *query
		if qname == "" {
			qname = pos[1]
			if h, _, err := net.SplitHostPort(qname); err == nil {
				qname = h
			}
		}
		rep = explainDNS(cfg, r, src.Addr(), strings.TrimSuffix(qname, "."))
	} else {
		f, err := explainFlowOf(cfg, src, pos[1], *name, *proto, *inbound)
		if err != nil {
			fmt.Fprintf(stderr, "socksgate explain: %v\n", err)
			return 2
		}
		if *user != "" {
			if f.Inbound != route.HTTP && f.Inbound != route.SOCKS {
				fmt.Fprintln(stderr, "socksgate explain: --user: only flows on the explicit ports (--inbound http or socks) have a user")
				return 2
			}
			f.User = *user
		}
		var lookup func(ctx context.Context, host string) ([]netip.Addr, error)
		if *resolve {
			lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
				return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			}
		}
		rep = explainRoute(cfg, r, f, lookup)
		if explainDevice.Known {
			if !explainDevice.MAC.IsZero() {
				rep.Flow.SrcMAC = explainDevice.MAC.String()
			}
			rep.Flow.Device = explainDevice.Name
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "socksgate explain: %v\n", err)
			return 1
		}
		return 0
	}
	printExplain(stdout, rep)
	return 0
}

// explainDev is the source device --src-mac and --device describe, for the reasons.
type explainDev struct {
	MAC   configs.MAC
	Name  string
	Known bool
}

var explainDevice explainDev

func parseSrc(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an address", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

// explainFlowOf builds the flow the arguments describe. DST is an address or a name, with
// or without a port; name is the flow's name besides an address (a sniffed one).
func explainFlowOf(cfg *configs.Config, src netip.AddrPort, dst, name, proto, inbound string) (route.Flow, error) {
	f := route.Flow{Src: src}
	switch proto {
	case "tcp":
		f.Network = route.TCP
	case "udp":
		f.Network = route.UDP
	default:
		return f, fmt.Errorf("--proto %q: want tcp, udp or icmp", proto)
	}
	switch inbound {
	case "transparent":
		f.Inbound = route.Redirect
		if f.Network == route.UDP || cfg.Transparent.TCPMode == configs.TCPModeTProxy {
			f.Inbound = route.TProxy
		}
	case "http":
		f.Inbound = route.HTTP
	case "socks":
		f.Inbound = route.SOCKS
	case "router":
		f.Inbound = route.FromRouter
	default:
		return f, fmt.Errorf("--inbound %q: want transparent, http, socks, dns or router", inbound)
	}
	host, port := dst, ""
	if h, p, err := net.SplitHostPort(dst); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(dst, "[") && strings.HasSuffix(dst, "]") {
		host = dst[1 : len(dst)-1]
	}
	var p uint16
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return f, fmt.Errorf("DST %q: bad port", dst)
		}
		p = uint16(n)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		f.Dst = netip.AddrPortFrom(a, p)
		if name != "" {
			f.Host, f.From = strings.ToLower(strings.TrimSuffix(name, ".")), route.NameSniff
		}
		return f, nil
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return f, fmt.Errorf("DST %q is neither an address nor a name", dst)
	}
	if name != "" && !strings.EqualFold(name, host) {
		return f, fmt.Errorf("DST is the name %q: --name %q says another", host, name)
	}
	f.Host, f.Port, f.From = strings.ToLower(strings.TrimSuffix(host, ".")), p, route.NameClient
	return f, nil
}

// Where a setting rather than a rule decides, the decision names it in place of a rule, as
// the flow's log line does.
const (
	quicRule = "transparent.quic" // gateway's quicBlockRule
	icmpRule = "transparent.icmp"
	quicPort = 443
)

// explainRoute explains f; lookup, when set, resolves a name-only flow as Route would.
func explainRoute(cfg *configs.Config, r *route.RuleRouter, f route.Flow, lookup func(context.Context, string) ([]netip.Addr, error)) *explainReport {
	rep := &explainReport{Flow: &explainFlow{
		Network: f.Network.String(), Src: f.Src.Addr().String(), Name: f.Host, Port: f.DstPort(), Inbound: f.Inbound.String(),
		User: f.User,
	}}
	if f.Dst.IsValid() {
		rep.Flow.Dst = f.Dst.Addr().String()
	}
	if f.Network == route.UDP && f.DstPort() == quicPort && cfg.Transparent.QUIC == configs.QUICBlock &&
		(f.Inbound.Transparent() || f.Inbound == route.FromRouter) {
		// The UDP inbound drops it before asking the rules (gateway.udpInbound.decide).
		rep.Rules = []explainVerdict{}
		rep.Decision = explainDecision{Rule: quicRule, Action: configs.ActionBlock.String()}
		rep.Note = "transparent.quic: block drops captured UDP to port 443 (QUIC, HTTP/3) before any rule is asked, " +
			"so browsers fall back to TCP, where the rules apply (explain it with --proto tcp)"
		if !cfg.Transparent.UDP {
			rep.Decision.Action = configs.ActionDirect.String()
			rep.Note = "transparent.udp is off: UDP is not captured, so transparent.quic: block never sees this flow and it is routed direct"
		}
		return rep
	}
	vs := r.Explain(f)
	for _, v := range vs[:len(vs)-1] {
		if v.NeedsAddress {
			rep.WouldResolve = true
		}
	}
	d := vs[len(vs)-1].Decision
	if rep.WouldResolve && lookup != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := lookup(ctx, f.Host)
		cancel()
		if err != nil || len(addrs) == 0 {
			rep.Note = fmt.Sprintf("%s did not resolve (%v): the gateway decides it by the name alone", f.Host, err)
		} else {
			for _, a := range addrs {
				rep.Resolved = append(rep.Resolved, a.String())
			}
			r.Resolve = func(context.Context, string) ([]netip.Addr, error) { return addrs, nil }
			d = r.Route(context.Background(), f)
			if d.Addr.IsValid() {
				fa := f
				fa.Dst = netip.AddrPortFrom(d.Addr, f.Port)
				vs = r.Explain(fa)
				rep.Note = fmt.Sprintf("the rules were matched with %s, the address of %s that decides (it is what is dialled)", d.Addr, f.Host)
			}
		}
	} else if rep.WouldResolve {
		rep.Note = fmt.Sprintf("a rule on addresses comes first: the gateway resolves %s and matches its addresses too, so the decision may differ (not resolved here; --resolve does)", f.Host)
	}
	rep.Rules = verdicts(cfg, vs, f, false)
	rep.Decision = describeDecision(cfg, d)
	if rep.Note == "" && len(cfg.LAN.Interfaces) > 0 && f.Dst.IsValid() && (f.Inbound.Transparent() || f.Inbound == route.FromRouter) {
		if hoisted, _ := r.Hoisted(); hoisted.Contains(f.Dst.Addr()) && !fakeIPAddr(cfg, f.Dst.Addr()) {
			rep.Note = fmt.Sprintf("%s is in the kernel's direct sets (every flow to it is decided direct): a captured flow there is routed by the kernel and never reaches socksgate", f.Dst.Addr())
		}
	}
	return rep
}

// explainICMP explains a ping from src to dst: ICMP is routed, not proxied, and no rule
// decides it; transparent.icmp does (redirect.Spec's forward chain): with block, the LAN's echo
// requests to a destination outside the bypass are dropped; the router's own pass.
func explainICMP(cfg *configs.Config, src netip.Addr, dst, inbound string) (*explainReport, error) {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(dst, "["), "]"))
	if err != nil {
		return nil, fmt.Errorf("--proto icmp: DST %q must be an address (a ping has no port and no name)", dst)
	}
	a = a.Unmap()
	in := route.Redirect
	switch inbound {
	case "transparent":
	case "router":
		in = route.FromRouter
	default:
		return nil, fmt.Errorf("--proto icmp: --inbound %q: want transparent (a LAN host) or router", inbound)
	}
	proto := "icmp"
	if a.Is6() {
		proto = "icmpv6"
	}
	rep := &explainReport{
		Flow:     &explainFlow{Network: proto, Src: src.String(), Dst: a.String(), Inbound: in.String()},
		Rules:    []explainVerdict{},
		Decision: explainDecision{Rule: icmpRule, Action: configs.ActionDirect.String()},
	}
	if in == route.Redirect {
		rep.Flow.Inbound = "transparent"
	}
	bypassed := slices.ContainsFunc(cfg.BypassPrefixes(), func(p netip.Prefix) bool { return p.Contains(a) })
	switch {
	case cfg.Transparent.ICMP != configs.ICMPBlock:
		rep.Note = "ICMP is routed, not proxied: no rule decides it, and with transparent.icmp: pass a ping reaches " +
			a.String() + " directly from the router's address"
	case len(cfg.LAN.Interfaces) == 0:
		rep.Note = "transparent.icmp: block has no effect without lan.interfaces: the ping is routed direct"
	case in == route.FromRouter:
		rep.Note = "the router's own pings pass with transparent.icmp: block (watchdogs and multi-WAN trackers need them): routed direct"
	case bypassed:
		rep.Note = a.String() + " is a bypassed destination (transparent.bypass_builtin, bypass, lan.prefixes): " +
			"transparent.icmp: block leaves pings to it alone, as capture leaves its TCP and UDP: routed direct"
	default:
		rep.Decision.Action = configs.ActionBlock.String()
		rep.Note = "transparent.icmp: block drops the LAN's " + proto + " echo requests the router would forward " +
			"(not those to the router itself, nor to the LAN's own prefixes, which join the bypass at start)"
	}
	return rep, nil
}

func explainDNS(cfg *configs.Config, r *route.RuleRouter, src netip.Addr, name string) *explainReport {
	name = strings.ToLower(name)
	rep := &explainReport{Query: &explainQuery{Src: src.String(), Name: name}}
	vs := r.ExplainQuery(src, name)
	rep.Rules = verdicts(cfg, vs, route.Flow{Src: netip.AddrPortFrom(src, 0), Host: name}, true)
	last := vs[len(vs)-1]
	d := last.Decision
	if !last.Matched {
		d = route.Decision{Action: configs.ActionBlock, Rule: "no rule matched"}
	}
	rep.Decision = describeDecision(cfg, d)
	return rep
}

func verdicts(cfg *configs.Config, vs []route.RuleVerdict, f route.Flow, query bool) []explainVerdict {
	out := make([]explainVerdict, 0, len(vs))
	for _, v := range vs {
		ev := explainVerdict{Index: v.Index + 1, Rule: v.Rule, Matched: v.Matched}
		for _, sm := range v.Sets {
			ev.Sets = append(ev.Sets, explainSet{Matcher: string(sm.Matcher), Set: sm.Set})
		}
		rule := cfg.Rules[v.Index]
		for _, m := range v.Failed {
			ev.Failed = append(ev.Failed, explainFailure{Matcher: string(m), Reason: failReason(rule, m, f, v, query)})
		}
		out = append(out, ev)
	}
	return out
}

func failReason(rule configs.Rule, m route.Matcher, f route.Flow, v route.RuleVerdict, query bool) string {
	if v.Unfit {
		return fmt.Sprintf("%s %s: a rule on flows never decides a DNS query", m, matcherValues(rule, m))
	}
	vals := matcherValues(rule, m)
	switch m {
	case route.MatchProtocol:
		return fmt.Sprintf("protocol %s does not include %s", vals, f.Network)
	case route.MatchInbound:
		in := "dns"
		if !query {
			in = f.Inbound.String()
			if f.Inbound.Transparent() {
				in = "transparent (" + in + ")"
			}
		}
		return fmt.Sprintf("inbound %s does not include %s", vals, in)
	case route.MatchSrc:
		return fmt.Sprintf("src %s does not contain %s", vals, f.Src.Addr())
	case route.MatchDst:
		if v.NeedsAddress {
			return fmt.Sprintf("dst %s: the flow has only the name %s; the gateway resolves it to match this rule", vals, f.Host)
		}
		if !f.Dst.IsValid() {
			return fmt.Sprintf("dst %s: the flow has no address", vals)
		}
		return fmt.Sprintf("dst %s does not contain %s", vals, f.Dst.Addr())
	case route.MatchDstPorts:
		if f.DstPort() == 0 {
			return fmt.Sprintf("dst_ports %s: no port given", vals)
		}
		return fmt.Sprintf("dst_ports %s does not include %d", vals, f.DstPort())
	case route.MatchDomain:
		if f.Host == "" {
			return fmt.Sprintf("domain %s: the flow has no name", vals)
		}
		return fmt.Sprintf("domain %s does not match %s", vals, f.Host)
	case route.MatchSrcMAC:
		if !explainDevice.Known || explainDevice.MAC.IsZero() {
			return fmt.Sprintf("src_mac %s: the source's MAC is not given (--src-mac)", vals)
		}
		return fmt.Sprintf("src_mac %s does not include %s", vals, explainDevice.MAC)
	case route.MatchDevice:
		if explainDevice.Name == "" {
			return fmt.Sprintf("device %s: the source device's name is not given (--device)", vals)
		}
		return fmt.Sprintf("device %s does not match %s", vals, explainDevice.Name)
	}
	if reason, ok := moreFailReason(m, vals, f, v, query); ok {
		return reason
	}
	return string(m)
}

// matcherValues is a rule's matcher as a short list: the first few values and how many more.
func matcherValues(rule configs.Rule, m route.Matcher) string {
	var vals []string
	add := func(s fmt.Stringer) { vals = append(vals, s.String()) }
	switch m {
	case route.MatchProtocol:
		for _, p := range rule.Protocol {
			add(p)
		}
	case route.MatchInbound:
		for _, in := range rule.Inbound {
			add(in)
		}
	case route.MatchSrc:
		for _, p := range rule.Src {
			add(p)
		}
		for _, n := range rule.SrcSet {
			vals = append(vals, "set "+n)
		}
	case route.MatchDst:
		for _, p := range rule.Dst {
			add(p)
		}
		for _, n := range rule.DstSet {
			vals = append(vals, "set "+n)
		}
	case route.MatchDstPorts:
		for _, p := range rule.DstPorts {
			if p.From == p.To {
				vals = append(vals, strconv.Itoa(int(p.From)))
			} else {
				vals = append(vals, fmt.Sprintf("%d-%d", p.From, p.To))
			}
		}
	case route.MatchDomain:
		vals = append(vals, rule.Domain...)
		for _, n := range rule.DomainSet {
			vals = append(vals, "set "+n)
		}
	case route.MatchSrcMAC:
		for _, m := range rule.SrcMAC {
			add(m)
		}
	case route.MatchDevice:
		vals = append(vals, rule.Device...)
	default:
		vals = moreMatcherValues(rule, m)
	}
	const shown = 4
	if len(vals) > shown {
		vals = append(vals[:shown:shown], fmt.Sprintf("… %d more", len(vals)-shown))
	}
	return "[" + strings.Join(vals, ", ") + "]"
}

func describeDecision(cfg *configs.Config, d route.Decision) explainDecision {
	out := explainDecision{Rule: d.Rule, Action: d.Action.String()}
	if d.Addr.IsValid() {
		out.Addr = d.Addr.String()
	}
	if d.Action != configs.ActionProxy {
		return out
	}
	for _, rule := range cfg.Rules {
		if rule.Name == d.Rule {
			out.Upstream = rule.Upstream
			break
		}
	}
	if d.Upstream != nil {
		out.URL = d.Upstream.String()
	}
	if g := cfg.Group(out.Upstream); g != nil {
		eg := &explainGroup{Policy: g.Policy.String(), Members: g.Upstreams, OnDown: g.OnDown.String()}
		switch g.Policy {
		case configs.PolicyFailover:
			// Members start up and stay so until a dial or a health check fails; without
			// the running gateway's health the first member is the pick.
			eg.Pick = g.Upstreams[0]
			eg.Chosen = fmt.Sprintf("%s, the first member that is up (health is not checked here: socksgate status shows it)", g.Upstreams[0])
		default:
			eg.Chosen = fmt.Sprintf("chosen at dial time by policy %s among the members that are up", g.Policy)
		}
		out.Group = eg
	}
	return out
}

func printExplain(w io.Writer, rep *explainReport) {
	if f := rep.Flow; f != nil {
		dst := f.Dst
		switch {
		case dst == "":
			dst = f.Name
		case f.Name != "":
			dst += " (name " + f.Name + ")"
		}
		src := f.Src
		if f.SrcMAC != "" || f.Device != "" {
			src += " (device " + strings.TrimSpace(f.SrcMAC+" "+f.Device) + ")"
		}
		if f.User != "" {
			src += " (user " + f.User + ")"
		}
		if strings.HasPrefix(f.Network, "icmp") {
			fmt.Fprintf(w, "flow: %s %s -> %s, inbound %s\n", f.Network, src, dst, f.Inbound)
		} else {
			fmt.Fprintf(w, "flow: %s %s -> %s port %d, inbound %s\n", f.Network, src, dst, f.Port, f.Inbound)
		}
	} else {
		fmt.Fprintf(w, "dns query: %s from %s (inbound dns)\n", rep.Query.Name, rep.Query.Src)
	}
	if len(rep.Resolved) > 0 {
		fmt.Fprintf(w, "resolved: %s\n", strings.Join(rep.Resolved, ", "))
	}
	for _, v := range rep.Rules {
		if v.Matched {
			var by []string
			for _, sm := range v.Sets {
				by = append(by, fmt.Sprintf("%s in set %q", sm.Matcher, sm.Set))
			}
			if len(by) > 0 {
				fmt.Fprintf(w, "  rule %d %q: matches (%s)\n", v.Index, v.Rule, strings.Join(by, ", "))
				continue
			}
			fmt.Fprintf(w, "  rule %d %q: matches\n", v.Index, v.Rule)
			continue
		}
		fmt.Fprintf(w, "  rule %d %q: no\n", v.Index, v.Rule)
		for _, fl := range v.Failed {
			fmt.Fprintf(w, "      %s\n", fl.Reason)
		}
	}
	if len(rep.Rules) == 0 && (rep.Decision.Rule == quicRule || rep.Decision.Rule == icmpRule) {
		fmt.Fprintf(w, "  no rule is asked: %s decides\n", rep.Decision.Rule)
	}
	d := rep.Decision
	switch {
	case d.Group != nil:
		fmt.Fprintf(w, "decision: proxy through group %q (%s: %s), rule %q\n", d.Upstream, d.Group.Policy, strings.Join(d.Group.Members, ", "), d.Rule)
		fmt.Fprintf(w, "  member: %s; all down: %s\n", d.Group.Chosen, d.Group.OnDown)
	case d.Action == "proxy":
		fmt.Fprintf(w, "decision: proxy through upstream %q (%s), rule %q\n", d.Upstream, d.URL, d.Rule)
	default:
		fmt.Fprintf(w, "decision: %s, rule %q\n", d.Action, d.Rule)
	}
	if d.Addr != "" {
		fmt.Fprintf(w, "  dials %s\n", d.Addr)
	}
	if rep.Note != "" {
		fmt.Fprintf(w, "note: %s\n", rep.Note)
	}
}
