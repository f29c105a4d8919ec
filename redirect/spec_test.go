package redirect

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func rangesString(rs []addrRange) string { return strings.Join(rangeStrings(rs), " ") }

func TestMergeBypass(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     []netip.Prefix
		v4, v6 string
	}{
		{"empty", nil, "", ""},
		{"single host v4 and v6", pfx("203.0.113.7/32", "2001:db8::1/128"), "203.0.113.7", "2001:db8::1"},
		{"unmasked prefixes are masked", pfx("10.1.2.3/8", "2001:db8::1/32"), "10.0.0.0/8", "2001:db8::/32"},
		{"contained prefix disappears", pfx("10.0.0.0/8", "10.1.0.0/16"), "10.0.0.0/8", ""},
		{"contained first", pfx("10.1.0.0/16", "10.0.0.0/8"), "10.0.0.0/8", ""},
		{"adjacent merge into a prefix", pfx("10.0.0.0/8", "11.0.0.0/8"), "10.0.0.0/7", ""},
		{"adjacent merge into a range", pfx("11.0.0.0/8", "12.0.0.0/8"), "11.0.0.0-12.255.255.255", ""},
		{"adjacent hosts", pfx("192.0.2.1/32", "192.0.2.2/32"), "192.0.2.1-192.0.2.2", ""},
		{"gap of one address stays apart", pfx("192.0.2.1/32", "192.0.2.3/32"), "192.0.2.1 192.0.2.3", ""},
		{"duplicates", pfx("10.0.0.0/8", "10.0.0.0/8"), "10.0.0.0/8", ""},
		{"whole v4 space", pfx("0.0.0.0/0", "10.0.0.0/8"), "0.0.0.0/0", ""},
		{"whole v6 space", pfx("::/0", "fc00::/7"), "", "::/0"},
		{"reaching the top", pfx("240.0.0.0/4", "224.0.0.0/4", "255.255.255.255/32"), "224.0.0.0/3", ""},
		{"v6 top", pfx("ff00::/8", "ffff::1/128"), "", "ff00::/8"},
		{"families split and sorted", pfx("fc00::/7", "192.168.0.0/16", "::1/128", "10.0.0.0/8"), "10.0.0.0/8 192.168.0.0/16", "::1 fc00::/7"},
		{"v4-mapped counts as v4", pfx("::ffff:10.0.0.0/104"), "10.0.0.0/8", ""},
		{"chain of overlaps", pfx("10.0.0.0/16", "10.0.128.0/17", "10.0.255.0/24", "10.1.0.0/16"), "10.0.0.0/15", ""},
		{"invalid skipped", []netip.Prefix{{}}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6 := mergeBypass(tc.in)
			if got := rangesString(v4); got != tc.v4 {
				t.Errorf("v4 = %q, want %q", got, tc.v4)
			}
			if got := rangesString(v6); got != tc.v6 {
				t.Errorf("v6 = %q, want %q", got, tc.v6)
			}
		})
	}
}

func TestBuiltinBypassMergesToDisjointRanges(t *testing.T) {
	v4, v6 := mergeBypass(BuiltinBypass())
	if got, want := rangesString(v4), "0.0.0.0/8 10.0.0.0/8 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.168.0.0/16 224.0.0.0/3"; got != want {
		t.Errorf("v4 = %q, want %q", got, want)
	}
	if got, want := rangesString(v6), "::/127 fc00::/7 fe80::/10 ff00::/8"; got != want {
		t.Errorf("v6 = %q, want %q", got, want)
	}
}

// FuzzMergeBypass checks the interval-set invariants for arbitrary prefixes:
// ranges are sorted, disjoint and not adjacent, and an address is covered
// after merging exactly when some input prefix contains it.
func FuzzMergeBypass(f *testing.F) {
	f.Add([]byte{10, 0, 0, 0, 8, 11, 0, 0, 0, 8})
	f.Add([]byte{255, 255, 255, 255, 32, 240, 0, 0, 0, 4, 0, 0, 0, 0, 0})
	f.Add([]byte{192, 0, 2, 1, 32, 192, 0, 2, 3, 32, 192, 0, 2, 2, 31})
	f.Fuzz(func(t *testing.T, data []byte) {
		var in []netip.Prefix
		for len(data) >= 5 {
			a := netip.AddrFrom4([4]byte(data[:4]))
			in = append(in, netip.PrefixFrom(a, int(data[4])%33))
			data = data[5:]
		}
		v4, _ := mergeBypass(slices.Clone(in))
		for i := 1; i < len(v4); i++ {
			if next := v4[i-1].last.Next(); !next.IsValid() || v4[i].first.Compare(next) <= 0 {
				t.Fatalf("ranges %v and %v overlap or touch", v4[i-1], v4[i])
			}
		}
		covered := func(a netip.Addr) bool {
			for _, r := range v4 {
				if r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0 {
					return true
				}
			}
			return false
		}
		probe := []netip.Addr{netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})}
		for _, p := range in {
			m := p.Masked()
			probe = append(probe, m.Addr(), m.Addr().Prev(), lastAddr(m), lastAddr(m).Next())
		}
		for _, a := range probe {
			if !a.IsValid() {
				continue
			}
			want := false
			for _, p := range in {
				want = want || p.Contains(a)
			}
			if got := covered(a); got != want {
				t.Fatalf("%v covered = %v, want %v (input %v, ranges %v)", a, got, want, in, v4)
			}
		}
	})
}

func TestValidate(t *testing.T) {
	ok := Spec{LANInterfaces: []string{"eth1"}, TCPPort: 1, UDPPort: 2, Mark: 1}
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
		want string // substring of the error; "" means valid
	}{
		{"defaults are valid", func(*Spec) {}, ""},
		{"no capture needs no mark", func(s *Spec) { s.LANInterfaces = nil; s.Mark = 0 }, ""},
		{"capture needs a mark", func(s *Spec) { s.Mark = 0 }, "mark: must be non-zero"},
		{"tproxy mark equal to mark", func(s *Spec) { s.TProxyMark = 1 }, "tproxy_mark: 0x1 must differ"},
		{"bad tcp mode", func(s *Spec) { s.TCPMode = 7 }, `tcp_mode: must be one of redirect, tproxy (got tcp_mode(7))`},
		{"bad on_crash", func(s *Spec) { s.OnCrash = 7 }, `on_crash: must be one of closed, open (got on_crash(7))`},
		{"long interface name", func(s *Spec) { s.LANInterfaces = []string{"eth0", "abcdefghijklmnop"} }, "lan_interfaces[1]"},
		{"wildcard interface", func(s *Spec) { s.LANInterfaces = []string{"eth*"} }, "lan_interfaces[0]"},
		{"main table", func(s *Spec) { s.RouteTable = 254 }, "route_table: 254 is a system table"},
		{"priority after main", func(s *Spec) { s.RulePriority = 32766 }, "rule_priority: 32766"},
		{"invalid bypass", func(s *Spec) { s.Bypass = []netip.Prefix{{}} }, "bypass[0]: invalid prefix"},
		{"bad table name", func(s *Spec) { s.Table = "a b" }, "table: invalid"},
		{"policy fields unchecked without tproxy", func(s *Spec) { s.UDPPort = 0; s.RouteTable = 254 }, ""},
		{"router capture", func(s *Spec) { s.RouterCapture = true; s.ExcludeUIDs = []uint32{0, 1000}; s.ExcludeGIDs = []uint32{0} }, ""},
		{"router capture needs the listeners", func(s *Spec) { s.RouterCapture = true; s.LANInterfaces = nil }, "router_capture: needs the transparent listeners"},
		{"router capture, tproxy mark covering mark", func(s *Spec) { s.RouterCapture = true; s.TProxyMark = 3 }, "tproxy_mark: 0x3 holds every bit of mark 0x1"},
		{"uid -1", func(s *Spec) { s.RouterCapture = true; s.ExcludeUIDs = []uint32{1<<32 - 1} }, "exclude_uids[0]"},
		{"gid -1", func(s *Spec) { s.RouterCapture = true; s.ExcludeGIDs = []uint32{1<<32 - 1} }, "exclude_gids[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.mod(&s)
			err := s.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func opsOf(c chainPlan) []ruleOp {
	var ops []ruleOp
	for _, r := range c.rules {
		ops = append(ops, r.op)
	}
	return ops
}

func TestPlanChains(t *testing.T) {
	exempt := []ruleOp{opOwnMarkReturn, opNotUnicast, opLocalReturn, opBypass4Return, opBypass6Return}
	with := func(ops ...ruleOp) []ruleOp { return append(slices.Clone(exempt), ops...) }
	// The TPROXY chain lets conntrack's replies through, right after socksgate's own mark.
	withReplies := func(ops ...ruleOp) []ruleOp {
		return append([]ruleOp{opOwnMarkReturn, opReplyReturn}, append(slices.Clone(exempt[1:]), ops...)...)
	}
	base := Spec{LANInterfaces: []string{"eth1"}, TCPPort: 1, UDPPort: 2, Mark: 1}
	for _, tc := range []struct {
		name           string
		mod            func(*Spec)
		mangle, natOps []ruleOp // nil: chain absent
	}{
		{"redirect tcp, udp, closed", func(*Spec) {},
			withReplies(opTProxy, opTProxy, opDropUDP), with(opRedirectTCP)},
		{"redirect tcp, udp, open: no drop", func(s *Spec) { s.OnCrash = configs.OnCrashOpen },
			withReplies(opTProxy, opTProxy), with(opRedirectTCP)},
		{"tproxy tcp, udp, closed", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy },
			withReplies(opTransparentTCP, opTProxy, opTProxy, opTProxy, opTProxy, opDropUDP, opRejectTCP), nil},
		{"tproxy tcp only, closed: reset, no udp drop", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy; s.UDPPort = 0 },
			withReplies(opTransparentTCP, opTProxy, opTProxy, opRejectTCP), nil},
		{"tproxy tcp only, open", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy; s.UDPPort = 0; s.OnCrash = configs.OnCrashOpen },
			withReplies(opTransparentTCP, opTProxy, opTProxy), nil},
		{"redirect tcp only: no mangle chain", func(s *Spec) { s.UDPPort = 0 }, nil, with(opRedirectTCP)},
		{"udp only", func(s *Spec) { s.TCPPort = 0 }, withReplies(opTProxy, opTProxy, opDropUDP), nil},
		{"no interfaces: nothing", func(s *Spec) { s.LANInterfaces = nil }, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			tc.mod(&s)
			p := s.withDefaults().plan()
			var mangle, nat []ruleOp
			rawOut := false
			for _, c := range p.chains {
				switch c.name {
				case chainRawOut:
					rawOut = true
					if ops := opsOf(c); !c.output || c.priority != -300 || !slices.Equal(ops, []ruleOp{opNotrackReplies}) {
						t.Errorf("raw output chain: output %v at %d, ops %v", c.output, c.priority, ops)
					}
				case chainMangle:
					mangle = opsOf(c)
					if c.typ != "filter" || c.priority != -150 {
						t.Errorf("mangle chain is %s at %d", c.typ, c.priority)
					}
				case chainNAT:
					nat = opsOf(c)
					if c.typ != "nat" || c.priority != -100 {
						t.Errorf("nat chain is %s at %d", c.typ, c.priority)
					}
				}
			}
			if !slices.Equal(mangle, tc.mangle) {
				t.Errorf("mangle ops = %v, want %v", mangle, tc.mangle)
			}
			if !slices.Equal(nat, tc.natOps) {
				t.Errorf("nat ops = %v, want %v", nat, tc.natOps)
			}
			// UDP's reply sockets are left untracked exactly when UDP is captured.
			if want := s.withDefaults().captureUDP(); rawOut != want {
				t.Errorf("raw output chain present: %v, want %v", rawOut, want)
			}
		})
	}
}

// The router's own traffic: which output chains, with which rules, for each capture mode.
func TestPlanRouterChains(t *testing.T) {
	base := Spec{LANInterfaces: []string{"eth1"}, TCPPort: 1, UDPPort: 2, Mark: 1, RouterCapture: true,
		ExcludeUIDs: []uint32{7}, ExcludeGIDs: []uint32{8}}
	owners := []ruleOp{opSkuidReturn, opSkgidReturn}
	outNAT := append(append([]ruleOp{opOwnMarkReturn}, owners...), opLocalReturn, opBypass4Return, opBypass6Return, opOutRedirectTCP)
	route := func(marks ...ruleOp) []ruleOp {
		return append(append([]ruleOp{opOwnMarkReturn, opReplyReturn}, owners...), append([]ruleOp{opLocalReturn, opBypass4Return, opBypass6Return}, marks...)...)
	}
	for _, tc := range []struct {
		name          string
		mod           func(*Spec)
		outNAT, route []ruleOp // nil: chain absent
		loop          int      // iifname "lo" TPROXY rules in the mangle chain
	}{
		{"redirect tcp and udp", func(*Spec) {}, outNAT, route(opOutMark), 2},
		{"tproxy tcp and udp", func(s *Spec) { s.TCPMode = configs.TCPModeTProxy }, nil, route(opOutMark, opOutMark), 4},
		{"redirect tcp only", func(s *Spec) { s.UDPPort = 0 }, outNAT, nil, 0},
		{"udp only", func(s *Spec) { s.TCPPort = 0 }, nil, route(opOutMark), 2},
		{"off", func(s *Spec) { s.RouterCapture = false }, nil, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			tc.mod(&s)
			var gotNAT, gotRoute []ruleOp
			loop := 0
			for _, c := range s.withDefaults().plan().chains {
				switch c.name {
				case chainOutNAT:
					gotNAT = opsOf(c)
					if c.typ != "nat" || !c.output || c.priority != -100 {
						t.Errorf("output nat chain is %s output=%v at %d", c.typ, c.output, c.priority)
					}
				case chainOutRte:
					gotRoute = opsOf(c)
					if c.typ != "route" || !c.output || c.priority != -150 {
						t.Errorf("output route chain is %s output=%v at %d", c.typ, c.output, c.priority)
					}
				case chainMangle:
					for _, r := range c.rules {
						if r.op == opLoopTProxy {
							loop++
						}
					}
				}
			}
			if !slices.Equal(gotNAT, tc.outNAT) {
				t.Errorf("output nat ops = %v, want %v", gotNAT, tc.outNAT)
			}
			if !slices.Equal(gotRoute, tc.route) {
				t.Errorf("output route ops = %v, want %v", gotRoute, tc.route)
			}
			if loop != tc.loop {
				t.Errorf("%d lo TPROXY rules, want %d", loop, tc.loop)
			}
		})
	}
}

// transparent.icmp block: a forward chain drops the LAN's echo requests, after the bypass;
// nothing of the kind without it, or without LAN interfaces, and the router's output chains
// never touch ICMP.
func TestPlanICMPBlock(t *testing.T) {
	base := Spec{LANInterfaces: []string{"eth1"}, TCPPort: 1, UDPPort: 2, Mark: 1, RouterCapture: true}
	fwd := func(s Spec) (chainPlan, bool) {
		for _, c := range s.withDefaults().plan().chains {
			if c.name == chainFwd {
				return c, true
			}
		}
		return chainPlan{}, false
	}
	// REDIRECT mode: the forward chain drops only the LAN's invalid TCP (see plan).
	if c, ok := fwd(base); !ok || !slices.Equal(opsOf(c), []ruleOp{opBypass4Return, opBypass6Return, opDropInvalidTCP}) {
		t.Errorf("forward chain with icmp pass: %v %v", ok, opsOf(c))
	}
	tp := base
	tp.TCPMode = configs.TCPModeTProxy
	if _, ok := fwd(tp); ok {
		t.Error("forward chain with icmp pass and tcp_mode tproxy")
	}
	s := base
	s.ICMP = configs.ICMPBlock
	c, ok := fwd(s)
	if !ok {
		t.Fatal("no forward chain with icmp block")
	}
	if c.typ != "filter" || !c.forward || c.output || c.priority != -150 {
		t.Errorf("forward chain is %s forward=%v output=%v at %d", c.typ, c.forward, c.output, c.priority)
	}
	if ops := opsOf(c); !slices.Equal(ops, []ruleOp{opBypass4Return, opBypass6Return, opDropInvalidTCP, opDropEcho, opDropEcho, opDropUnreach, opDropUnreach}) {
		t.Errorf("forward ops = %v", ops)
	}
	if c.rules[3].family != 4 || c.rules[4].family != 6 || c.rules[5].family != 4 || c.rules[6].family != 6 {
		t.Errorf("drops for families %d, %d, %d, %d", c.rules[3].family, c.rules[4].family, c.rules[5].family, c.rules[6].family)
	}
	for _, c := range s.withDefaults().plan().chains {
		if c.output && slices.Contains(opsOf(c), opDropEcho) {
			t.Errorf("output chain %s drops pings: the router's own pass", c.name)
		}
	}
	// Nothing else captured: the chain stands alone (no mark needed).
	alone := Spec{LANInterfaces: []string{"eth1"}, ICMP: configs.ICMPBlock}
	if err := alone.Validate(); err != nil {
		t.Errorf("icmp block alone: %v", err)
	}
	if _, ok := fwd(alone); !ok {
		t.Error("no forward chain for icmp block alone")
	}
	alone.LANInterfaces = nil
	if _, ok := fwd(alone); ok {
		t.Error("forward chain without LAN interfaces")
	}
	out := s.Render()
	for _, want := range []string{
		"chain forward_filter {\n\t\ttype filter hook forward priority mangle; policy accept;\n" +
			"\t\tip daddr @bypass4 return\n\t\tip6 daddr @bypass6 return\n" +
			"\t\tiifname @lan_ifaces meta l4proto tcp ct state invalid drop\n" +
			"\t\tiifname @lan_ifaces icmp type echo-request drop\n\t\tiifname @lan_ifaces icmpv6 type echo-request drop\n" +
			"\t\tiifname @lan_ifaces icmp type destination-unreachable icmp code != frag-needed drop\n" +
			"\t\tiifname @lan_ifaces icmpv6 type destination-unreachable drop\n\t}",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render lacks %q:\n%s", want, out)
		}
	}
	bad := s
	bad.ICMP = 9
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "icmp: must be one of pass, block") {
		t.Errorf("icmp 9: %v", err)
	}
}

func TestRenderShowsRulesAndPolicyRouting(t *testing.T) {
	s := Spec{
		LANInterfaces: []string{"eth2", "eth1", "eth1"},
		TCPPort:       12345,
		UDPPort:       12346,
		Mark:          0x100,
		TProxyMark:    0x2,
		RouteTable:    100,
		RulePriority:  100,
		Bypass:        pfx("10.0.0.0/8", "11.0.0.0/8", "fc00::/7"),
	}
	want := `# socksgate kernel steering (on_crash: closed)
# policy routing for TPROXY (installed with netlink):
#   ip -4 rule add fwmark 0x2 lookup 100 priority 100
#   ip -6 rule add fwmark 0x2 lookup 100 priority 100
#   ip -4 route add local 0.0.0.0/0 dev lo table 100
#   ip -6 route add local ::/0 dev lo table 100
table inet socksgate {
	set lan_ifaces {
		type ifname
		elements = { "eth1", "eth2" }
	}

	set bypass4 {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/7 }
	}

	set bypass6 {
		type ipv6_addr
		flags interval
		elements = { fc00::/7 }
	}

	chain prerouting_mangle {
		type filter hook prerouting priority mangle; policy accept;
		meta mark & 0x00000100 == 0x00000100 return
		ct direction reply return
		meta pkttype != host return
		fib daddr type local return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		iifname @lan_ifaces meta l4proto udp meta nfproto ipv4 tproxy ip to :12346 meta mark set 0x00000002 accept
		iifname @lan_ifaces meta l4proto udp meta nfproto ipv6 tproxy ip6 to :12346 meta mark set 0x00000002 accept
		iifname @lan_ifaces meta l4proto udp drop
	}

	chain output_raw {
		type filter hook output priority raw; policy accept;
		meta mark & 0x00000100 == 0x00000100 meta l4proto udp fib saddr type != local notrack
	}

	chain prerouting_nat {
		type nat hook prerouting priority dstnat; policy accept;
		meta mark & 0x00000100 == 0x00000100 return
		meta pkttype != host return
		fib daddr type local return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		iifname @lan_ifaces meta l4proto tcp redirect to :12345
	}

	chain forward_filter {
		type filter hook forward priority mangle; policy accept;
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		iifname @lan_ifaces meta l4proto tcp ct state invalid drop
	}
}
`
	if got := s.Render(); got != want {
		t.Errorf("Render:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderVariants(t *testing.T) {
	for _, tc := range []struct {
		name        string
		spec        Spec
		has, hasNot []string
	}{
		{"open: owner note, no drop",
			Spec{LANInterfaces: []string{"eth1"}, UDPPort: 5, Mark: 1, OnCrash: configs.OnCrashOpen},
			[]string{"NFT_TABLE_F_OWNER", "tproxy ip6 to :5"}, []string{"drop", "prerouting_nat"}},
		{"tcp redirect only: no policy routing",
			Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, Mark: 1},
			[]string{"redirect to :5"}, []string{"ip -4 rule", "prerouting_mangle"}},
		{"tcp tproxy closed: transparent shortcut and reset",
			Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, TCPMode: configs.TCPModeTProxy, Mark: 1},
			[]string{"socket transparent 1", "tproxy ip to :5", "reject with tcp reset", "ip -6 rule add fwmark 0x5348 lookup 100 priority 100"},
			[]string{"redirect to", "udp drop"}},
		{"nothing captured",
			Spec{TCPPort: 5},
			[]string{"nothing is captured", "table inet socksgate {"}, []string{"chain"}},
		{"custom table", Spec{Table: "sg2"}, []string{"table inet sg2 {"}, nil},
		{"offload: flowtable ft and the chain after the firewall's filter",
			Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, Mark: 1, Offload: true, OffloadDevices: []string{"wan", "eth1"},
				Direct: []netip.Prefix{netip.MustParsePrefix("203.0.114.0/24")}},
			[]string{"flowtable ft {\n\t\thook ingress priority filter\n\t\tdevices = { \"eth1\", \"wan\" }",
				"chain forward_offload {\n\t\ttype filter hook forward priority filter + 10; policy accept;\n\t\tiifname @lan_ifaces ip daddr @direct4 flow add @ft\n\t\tiifname @lan_ifaces ip6 daddr @direct6 flow add @ft"},
			nil},
		{"offload without direct sets: nothing to offload",
			Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, Mark: 1, Offload: true},
			nil, []string{"flowtable", "forward_offload"}},
		{"dns hijack alone: a nat chain that redirects port 53 before the exemptions",
			Spec{LANInterfaces: []string{"eth1"}, DNSPort: 15353, Mark: 1},
			[]string{"chain prerouting_nat", "udp dport 53 redirect to :15353", "tcp dport 53 redirect to :15353\n\t\tmeta pkttype"},
			[]string{"prerouting_mangle", "meta l4proto tcp redirect"}},
		{"dns hijack with tproxy udp: the mangle chain leaves port 53 to the nat chain",
			Spec{LANInterfaces: []string{"eth1"}, DNSPort: 15353, UDPPort: 5, Mark: 1},
			[]string{"udp dport 53 return", "tcp dport 53 return", "udp dport 53 redirect to :15353"}, nil},
		{"captured ranges leave the bypass",
			Spec{LANInterfaces: []string{"eth1"}, UDPPort: 5, Mark: 1, Bypass: BuiltinBypass(),
				Capture: []netip.Prefix{netip.MustParsePrefix("fc00::/18")}},
			[]string{"fc00:4000::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}, []string{"fc00::/7"}},
		{"direct sets after the bypass, fake-ip ranges cut out, not in the icmp chain",
			Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, Mark: 1, ICMP: configs.ICMPBlock,
				Direct:  []netip.Prefix{netip.MustParsePrefix("198.0.0.0/7"), netip.MustParsePrefix("2001:db8::/32")},
				Capture: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}},
			[]string{"set direct4 {", "elements = { 198.0.0.0-198.17.255.255, 198.20.0.0-199.255.255.255 }", "elements = { 2001:db8::/32 }",
				"ip6 daddr @bypass6 return\n\t\tip daddr @direct4 return\n\t\tip6 daddr @direct6 return\n\t\tiifname @lan_ifaces meta l4proto tcp redirect",
				"chain forward_filter {\n\t\ttype filter hook forward priority mangle; policy accept;\n\t\tip daddr @bypass4 return\n\t\tip6 daddr @bypass6 return\n\t\tiifname"}, nil},
		{"no direct sets without direct prefixes", Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5, Mark: 1}, nil, []string{"direct4"}},
		{"invalid spec is a comment", Spec{LANInterfaces: []string{"eth1"}, TCPPort: 5},
			[]string{"# invalid spec: mark: must be non-zero"}, []string{"table inet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.spec.Render()
			for _, s := range tc.has {
				if !strings.Contains(got, s) {
					t.Errorf("Render lacks %q:\n%s", s, got)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(got, s) {
					t.Errorf("Render has %q:\n%s", s, got)
				}
			}
		})
	}
}
