package configs

import (
	"encoding"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ValidationError holds every problem found in a configuration, each naming
// its field path ("upstreams[1].url: unsupported scheme \"sock5\"") and, for
// problems in the document itself, its line ("line 7: upstreams[0].ulr:
// unknown key ...").
type ValidationError struct {
	// File is the file the problems are in, when known (set by Load).
	File string
	// Problems are the messages, in document order.
	Problems []string
}

// Error joins the problems with "\n", each prefixed with "File: " when File
// is set.
func (e *ValidationError) Error() string {
	if e.File == "" {
		return strings.Join(e.Problems, "\n")
	}
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		b.WriteString(": ")
		b.WriteString(p)
	}
	return b.String()
}

type problems []string

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, path+": "+sprintf(format, args...))
}

// enum checks an enumerated value set in code (one read from a file is one of
// its type's values already).
func (p *problems) enum(path string, v encoding.TextMarshaler) {
	if _, err := v.MarshalText(); err != nil {
		p.add(path, "%v", err)
	}
}

func (p *problems) positive(path string, d Duration) {
	if d <= 0 {
		p.add(path, "must be positive")
	}
}

func (p *problems) nonNegative(path string, d Duration) {
	if d < 0 {
		p.add(path, "must not be negative")
	}
}

func (p *problems) prefixes(path string, ps []netip.Prefix) {
	for i, pr := range ps {
		if !pr.IsValid() {
			p.add(fmt.Sprintf("%s[%d]", path, i), "invalid prefix")
		}
	}
}

func (p *problems) portRanges(path string, rs []PortRange) {
	for i, r := range rs {
		if r.From == 0 || r.From > r.To {
			p.add(fmt.Sprintf("%s[%d]", path, i), "invalid port range %d-%d", r.From, r.To)
		}
	}
}

// Validate checks the whole configuration and returns a *ValidationError
// holding every problem, or nil. It does not apply defaults: use it on
// configurations from Parse, Load or Default, possibly modified.
func (c *Config) Validate() error {
	var p problems
	p.enum("log.level", c.Log.Level)
	p.enum("log.format", c.Log.Format)
	c.validateLAN(&p)
	c.validateTransparent(&p)
	c.validateRouter(&p)
	c.validateListen(&p)
	ix := newNameIndex(c)
	c.validateUpstreams(&p, ix)
	c.validateGroups(&p, ix)
	c.validateRules(&p, ix)
	c.validateRuleSets(&p)
	c.validateMatchers(&p)

	p.positive("timeouts.dial", c.Timeouts.Dial)
	p.positive("timeouts.handshake", c.Timeouts.Handshake)
	p.nonNegative("timeouts.idle", c.Timeouts.Idle)
	p.nonNegative("timeouts.grace", c.Timeouts.Grace)
	if c.Mark == 0 {
		p.add("mark", "must be non-zero")
	}
	p.enum("on_crash", c.OnCrash)
	if c.Limits.MaxFlows < 0 {
		p.add("limits.max_flows", "must not be negative")
	}
	if c.Limits.MaxFlowsPerSource < 0 {
		p.add("limits.max_flows_per_source", "must not be negative")
	}
	if c.Limits.MaxFlows > 0 && c.Limits.MaxFlowsPerSource > c.Limits.MaxFlows {
		p.add("limits.max_flows_per_source", "exceeds limits.max_flows")
	}
	p.enum("relay", c.Relay)
	c.validateAdmin(&p)
	c.validateDNS(&p)
	c.validateDevices(&p)
	for i, a := range c.HA.VIP {
		if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
			p.add(fmt.Sprintf("ha.vip[%d]", i), "%q is not a LAN gateway address", a)
		}
	}
	if c.StateDir == "" {
		p.add("state_dir", "must be set")
	}
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// validateAdmin checks the admin address, which is listened on as written
// (no "lan" keyword), that it is free of socksgate's other listeners, and the
// CORS origins.
func (c *Config) validateAdmin(p *problems) {
	ad := c.Admin
	for i, o := range ad.CORSOrigins {
		if msg := checkOrigin(o); msg != "" {
			p.add(fmt.Sprintf("admin.cors_origins[%d]", i), "%q: %s", o, msg)
		}
	}
	if ad.Listen == "" {
		if ad.Secret != "" || len(ad.CORSOrigins) > 0 {
			p.add("admin.listen", "must be set when admin has a secret or cors_origins (the endpoint is off without it)")
		}
		return
	}
	if strings.TrimSpace(string(ad.Secret)) != string(ad.Secret) {
		p.add("admin.secret", "must not begin or end with spaces (a client cannot send them in a header)")
	}
	a, err := ParseListenAddr(ad.Listen)
	switch {
	case err != nil:
		p.add("admin", "%v", err)
		return
	case a.LAN:
		p.add("admin", "%q: the lan keyword is for listen.*; write an address, e.g. 127.0.0.1:%d", ad.Listen, a.Port)
		return
	}
	others := c.explicitListeners()
	if tl, ok := c.transparentListener(); ok {
		others = append(others, tl)
	}
	if msg := c.collision(tcpListener{path: "admin", raw: ad.Listen, addr: a}, others); msg != "" {
		p.add("admin", "%s", msg)
	}
}

// checkOrigin says what is wrong with a CORS origin ("" when it is one): a
// browser sends scheme://host[:port], nothing more, or the origin is "*".
func checkOrigin(o string) string {
	if o == "*" {
		return ""
	}
	u, err := url.Parse(o)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		return "want an origin such as \"http://192.168.1.1:9091\" or \"*\""
	case u.Scheme != "http" && u.Scheme != "https":
		return "scheme must be http or https"
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return "an origin is scheme://host[:port] only (no path, query or credentials)"
	}
	return ""
}

func (c *Config) validateLAN(p *problems) {
	p.ifnames("lan.interfaces", c.LAN.Interfaces)
	p.prefixes("lan.prefixes", c.LAN.Prefixes)
}

// ifnames checks a list of interface names, each once.
func (p *problems) ifnames(key string, names []string) {
	seen := map[string]int{}
	for i, name := range names {
		path := fmt.Sprintf("%s[%d]", key, i)
		switch {
		case name == "":
			p.add(path, "must not be empty")
		case len(name) > 15:
			p.add(path, "interface name %q is longer than 15 bytes", name)
		case strings.ContainsAny(name, "/: \t\n\"\x00") || name == "." || name == "..":
			p.add(path, "invalid interface name %q", name)
		case strings.Contains(name, "*"):
			p.add(path, "%q: a wildcard is not supported; list each interface", name)
		}
		if j, dup := seen[name]; dup {
			p.add(path, "duplicate of %s[%d]", key, j)
		} else {
			seen[name] = i
		}
	}
}

func (c *Config) validateTransparent(p *problems) {
	t := &c.Transparent
	if t.TCPPort == 0 {
		p.add("transparent.tcp_port", "must be 1-65535")
	}
	p.enum("transparent.tcp_mode", t.TCPMode)
	if t.UDPPort == 0 {
		p.add("transparent.udp_port", "must be 1-65535")
	}
	p.positive("transparent.udp_idle", t.UDPIdle)
	if t.UDPMaxSessions <= 0 {
		p.add("transparent.udp_max_sessions", "must be positive")
	}
	p.enum("transparent.udp_without_support", t.UDPOverTCPUpstream)
	p.enum("transparent.quic", t.QUIC)
	p.enum("transparent.icmp", t.ICMP)
	p.ifnames("transparent.offload_devices", t.OffloadDevices)
	p.prefixes("transparent.bypass", t.Bypass)
	switch {
	case t.TProxyMark == 0:
		p.add("transparent.tproxy_mark", "must be non-zero")
	case t.TProxyMark == c.Mark:
		p.add("transparent.tproxy_mark", "must differ from mark")
	}
	switch t.RouteTable {
	case 253, 254, 255:
		p.add("transparent.route_table", "%d is reserved (253 default, 254 main, 255 local)", t.RouteTable)
	default:
		// The kernel takes 32-bit table ids, but netlink carries them as an int, 32 bits on
		// the small routers socksgate runs on.
		if t.RouteTable <= 0 || int64(t.RouteTable) > 1<<31-1 {
			p.add("transparent.route_table", "must be 1-2147483647")
		}
	}
	if t.RulePriority < 1 || t.RulePriority > 32765 {
		p.add("transparent.rule_priority", "must be 1-32765 (0, 32766 and 32767 hold the kernel's own rules)")
	}
	if t.Sniff.Enabled {
		p.positive("transparent.sniff.timeout", t.Sniff.Timeout)
	}
	p.portRanges("transparent.sniff.ports", t.Sniff.Ports)
}

func (c *Config) validateRouter(p *problems) {
	r := &c.Router
	if r.Capture && len(c.LAN.Interfaces) == 0 {
		p.add("router.capture", "needs the transparent listeners, which run only with lan.interfaces set")
	}
	if r.Capture && c.Transparent.TProxyMark != 0 && c.Transparent.TProxyMark&c.Mark == c.Mark {
		p.add("transparent.tproxy_mark", "%#x holds every bit of mark %#x: the router's captured packets would pass as socksgate's own", c.Transparent.TProxyMark, c.Mark)
	}
	ids := func(path, what string, list []uint32) {
		seen := map[uint32]int{}
		for i, id := range list {
			ip := fmt.Sprintf("%s[%d]", path, i)
			if id == 1<<32-1 {
				p.add(ip, "%d is no %s id ((%s_t)-1); use 0-4294967294", id, what, what[:1]+"id")
			}
			if j, dup := seen[id]; dup {
				p.add(ip, "duplicate of %s[%d]", path, j)
			} else {
				seen[id] = i
			}
		}
	}
	ids("router.exclude_uids", "user", r.ExcludeUIDs)
	ids("router.exclude_gids", "group", r.ExcludeGIDs)
}

// tcpListener is a TCP socket socksgate listens on, as configured.
type tcpListener struct {
	path string // listen.http[0], transparent.tcp_port, admin
	raw  string // the address as written ("" for transparent.tcp_port)
	addr ListenAddr
}

// transparentListener is the listener captured TCP is delivered to, on every
// address ([::]:tcp_port), when there is capture.
func (c *Config) transparentListener() (tcpListener, bool) {
	if len(c.LAN.Interfaces) == 0 {
		return tcpListener{}, false
	}
	return tcpListener{path: "transparent.tcp_port", addr: ListenAddr{Port: c.Transparent.TCPPort}}, true
}

// explicitListeners returns the listen.* addresses that parse, in order.
func (c *Config) explicitListeners() []tcpListener {
	var out []tcpListener
	for _, l := range []struct {
		key   string
		addrs AddrList
	}{{"http", c.Listen.HTTP}, {"socks", c.Listen.SOCKS}, {"mixed", c.Listen.Mixed}} {
		for i, s := range l.addrs {
			if a, err := ParseListenAddr(s); err == nil {
				out = append(out, tcpListener{path: fmt.Sprintf("listen.%s[%d]", l.key, i), raw: s, addr: a})
			}
		}
	}
	return out
}

// collides reports whether a and b cannot both be listened on: the same
// port, and the same address, or one of them every address (Go listens on
// 0.0.0.0 and [::] alike with one dual-stack socket). "lan" expands to the
// LAN interfaces' addresses, which are known only at run time: it collides
// with "lan" and with every address, and with nothing when lanOn is false
// (it expands to nothing). "localhost" is listened on as 127.0.0.1.
func collides(a, b ListenAddr, lanOn bool) bool {
	if a.Port == 0 || a.Port != b.Port {
		return false
	}
	if (a.LAN || b.LAN) && !lanOn {
		return false
	}
	if a.AllAddresses() || b.AllAddresses() {
		return true
	}
	if a.LAN || b.LAN {
		return a.LAN && b.LAN
	}
	return strings.EqualFold(listenHost(a.Host), listenHost(b.Host))
}

// listenHost is the address a listen host is bound to, as text.
func listenHost(h string) string {
	if strings.EqualFold(h, "localhost") {
		return "127.0.0.1"
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	return h
}

// collision describes why l cannot listen beside the earlier listeners, or
// returns "".
func (c *Config) collision(l tcpListener, earlier []tcpListener) string {
	lanOn := len(c.LAN.Interfaces) > 0
	for _, e := range earlier {
		switch {
		case !collides(l.addr, e.addr, lanOn):
		case e.raw == "":
			return sprintf("port %d is %s", l.addr.Port, e.path)
		case e.raw == l.raw:
			return sprintf("%q is already used by %s", l.raw, e.path)
		default:
			return sprintf("%q collides with %s (%q): the same port on the same address or on every address",
				l.raw, e.path, e.raw)
		}
	}
	return ""
}

func (c *Config) validateListen(p *problems) {
	tl, capture := c.transparentListener()
	var earlier []tcpListener
	for _, l := range []struct {
		key   string
		addrs AddrList
	}{{"http", c.Listen.HTTP}, {"socks", c.Listen.SOCKS}, {"mixed", c.Listen.Mixed}} {
		for i, s := range l.addrs {
			path := fmt.Sprintf("listen.%s[%d]", l.key, i)
			a, err := ParseListenAddr(s)
			if err != nil {
				p.add(path, "%v", err)
				continue
			}
			this := tcpListener{path: path, raw: s, addr: a}
			against := earlier
			if capture {
				against = append(slices.Clip(earlier), tl)
			}
			if msg := c.collision(this, against); msg != "" {
				p.add(path, "%s", msg)
			}
			earlier = append(earlier, this)
		}
	}
	seen := map[string]int{}
	for i, u := range c.Listen.Users {
		path := fmt.Sprintf("listen.users[%d]", i)
		switch {
		case u.Username == "":
			p.add(path+".username", "required")
		case len(u.Username) > 255:
			p.add(path+".username", "longer than 255 bytes")
		case strings.Contains(u.Username, ":"):
			p.add(path+".username", "must not contain ':'")
		}
		if j, dup := seen[u.Username]; dup && u.Username != "" {
			p.add(path+".username", "duplicate of listen.users[%d]", j)
		} else {
			seen[u.Username] = i
		}
		switch {
		case u.Password == "":
			p.add(path+".password", "required")
		case len(u.Password) > 255:
			p.add(path+".password", "longer than 255 bytes")
		}
	}
	p.prefixes("listen.allow", c.Listen.Allow)
}

// validName reports whether s is usable as an upstream or group name.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

func checkName(p *problems, path, name string) {
	switch {
	case name == "":
		p.add(path, "required")
	case !validName(name):
		p.add(path, "%q may hold only letters, digits, '-', '_' and '.'", name)
	}
}

// nameIndex finds upstreams and groups by name (the first of a name), so
// that validation stays linear in the size of the configuration.
type nameIndex struct {
	ups, groups map[string]int
}

func newNameIndex(c *Config) *nameIndex {
	ix := &nameIndex{ups: make(map[string]int, len(c.Upstreams)), groups: make(map[string]int, len(c.Groups))}
	for i := range c.Upstreams {
		if _, dup := ix.ups[c.Upstreams[i].Name]; !dup {
			ix.ups[c.Upstreams[i].Name] = i
		}
	}
	for i := range c.Groups {
		if _, dup := ix.groups[c.Groups[i].Name]; !dup {
			ix.groups[c.Groups[i].Name] = i
		}
	}
	return ix
}

// upstream returns the index of the first upstream named name, or -1.
func (ix *nameIndex) upstream(name string) int {
	if i, ok := ix.ups[name]; ok {
		return i
	}
	return -1
}

// group returns the index of the first group named name, or -1.
func (ix *nameIndex) group(name string) int {
	if i, ok := ix.groups[name]; ok {
		return i
	}
	return -1
}

func (c *Config) validateUpstreams(p *problems, ix *nameIndex) {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		path := fmt.Sprintf("upstreams[%d]", i)
		checkName(p, path+".name", u.Name)
		if j := ix.upstream(u.Name); u.Name != "" && j < i {
			p.add(path+".name", "duplicate of upstreams[%d]", j)
		}
		validateUpstreamURL(p, path+".url", u)
		validateTLS(p, path+".tls", u)
		c.validateNotSelf(p, path+".url", u)
		if u.Via != "" {
			switch {
			case u.URL != nil && u.URL.Scheme == SchemeDirect:
				p.add(path+".via", "a direct upstream cannot have via")
			case ix.upstream(u.Via) < 0 && ix.group(u.Via) >= 0:
				p.add(path+".via", "%q is a group; via must name an upstream", u.Via)
			case ix.upstream(u.Via) < 0:
				p.add(path+".via", "no upstream named %q", u.Via)
			}
		}
	}
	c.validateViaCycles(p, ix)
}

func validateUpstreamURL(p *problems, path string, u *Upstream) {
	if u.urlErr != "" {
		p.add(path, "%s", u.urlErr)
		return
	}
	if u.URL == nil {
		p.add(path, "required")
		return
	}
	url := u.URL
	switch url.Scheme {
	case SchemeDirect:
		if url.Host != "" || url.User != nil || url.Opaque != "" {
			p.add(path, "direct takes no host or credentials: write \"direct://\"")
		}
		return
	case SchemeSOCKS5, SchemeSOCKS5H, SchemeSOCKS4, SchemeSOCKS4A, SchemeHTTP, SchemeHTTPS, SchemeSOCKS5TLS:
	default:
		p.add(path, "unsupported scheme %q (want socks5, socks5h, socks4, socks4a, http, https, socks5+tls or direct)", url.Scheme)
		return
	}
	switch {
	case url.Hostname() == "":
		p.add(path, "missing host")
	case url.Port() == "":
		p.add(path, "missing port (e.g. %s://%s:1080)", url.Scheme, clip(url.Hostname()))
	default:
		if n, err := strconv.ParseUint(url.Port(), 10, 16); err != nil || n == 0 {
			p.add(path, "invalid port %q", url.Port())
		}
		if h := url.Hostname(); !validHost(h) {
			p.add(path, "invalid host %q", h)
		}
	}
	if url.Opaque != "" || (url.Path != "" && url.Path != "/") || url.RawQuery != "" || url.Fragment != "" {
		p.add(path, "unexpected path, query or fragment")
	}
	if url.User != nil {
		pw, hasPW := url.User.Password()
		switch {
		case (url.Scheme == SchemeSOCKS4 || url.Scheme == SchemeSOCKS4A) && hasPW:
			p.add(path, "%s carries no password (the username is sent as the user id)", url.Scheme)
		case url.Scheme == SchemeSOCKS5 || url.Scheme == SchemeSOCKS5H || url.Scheme == SchemeSOCKS5TLS:
			if len(url.User.Username()) > 255 || len(pw) > 255 {
				p.add(path, "username and password must be at most 255 bytes each (RFC 1929)")
			}
			if url.User.Username() == "" {
				p.add(path, "empty username (RFC 1929 needs 1-255 bytes)")
			}
		}
	}
}

// validateNotSelf refuses an upstream that is one of socksgate's own proxy
// listeners (listen.*, transparent.tcp_port): every flow sent through it
// would come back in, and go out through it again, without end. It judges
// what it can see from the file: the upstream's host is the listener's own
// address, or a loopback address, "localhost" or an unspecified address
// (connecting to 0.0.0.0 reaches loopback) while the listener is on
// loopback or every address; and the port is the same. An upstream reached
// through via is dialed by another proxy, where 127.0.0.1 is that proxy's
// own host: it is not judged.
func (c *Config) validateNotSelf(p *problems, path string, u *Upstream) {
	if u.URL == nil || u.Via != "" || u.URL.Scheme == SchemeDirect {
		return
	}
	host := u.URL.Hostname()
	port, err := strconv.ParseUint(u.URL.Port(), 10, 16)
	if err != nil || port == 0 || host == "" {
		return
	}
	own := c.explicitListeners()
	if tl, ok := c.transparentListener(); ok {
		own = append(own, tl)
	}
	for _, l := range own {
		if !dialsListener(host, uint16(port), l.addr) {
			continue
		}
		where := l.path
		if l.raw != "" {
			where = sprintf("%s (%q)", l.path, l.raw)
		}
		p.add(path, "%q is socksgate's own %s: every flow through this upstream would come back to socksgate; change the upstream's address or that listener",
			net.JoinHostPort(host, u.URL.Port()), where)
		return
	}
}

// dialsListener reports whether connecting to host:port from this machine
// reaches a socket listening on l, as far as the addresses tell.
func dialsListener(host string, port uint16, l ListenAddr) bool {
	if l.Port == 0 || l.Port != port || l.LAN {
		return false // "lan" addresses are known only at run time
	}
	localhost := strings.EqualFold(strings.TrimSuffix(host, "."), "localhost")
	ip, err := netip.ParseAddr(host)
	isIP := err == nil
	ip = ip.Unmap()
	loopback := localhost || isIP && (ip.IsLoopback() || ip.IsUnspecified())
	if l.AllAddresses() {
		return loopback
	}
	lhost := listenHost(l.Host)
	lip, err := netip.ParseAddr(lhost)
	if err != nil {
		return strings.EqualFold(host, l.Host) // a name listened on: the same name
	}
	switch {
	case isIP && ip == lip:
		return true
	case localhost:
		return lip == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || lip == netip.IPv6Loopback()
	case isIP && ip.IsUnspecified():
		// The kernel connects 0.0.0.0 to 127.0.0.1 and :: to ::1.
		return ip.Is4() && lip == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || ip.Is6() && lip == netip.IPv6Loopback()
	}
	return false
}

// validateViaCycles reports each via cycle once, at its member listed first,
// the chain starting there. Each upstream has at most one via, so the
// upstreams form chains that end at one without via or in a cycle: one walk
// along each, every upstream visited once.
func (c *Config) validateViaCycles(p *problems, ix *nameIndex) {
	const (
		unseen = iota
		onWalk
		done
	)
	state := make([]uint8, len(c.Upstreams))
	type cycle struct {
		first int
		chain []string
	}
	var cycles []cycle
	var walk []int
	for i := range c.Upstreams {
		if state[i] != unseen || ix.upstream(c.Upstreams[i].Name) != i {
			continue
		}
		walk = walk[:0]
		j := i
		for j >= 0 && state[j] == unseen {
			state[j] = onWalk
			walk = append(walk, j)
			j = -1
			if via := c.Upstreams[walk[len(walk)-1]].Via; via != "" {
				j = ix.upstream(via)
			}
		}
		if j >= 0 && state[j] == onWalk {
			members := walk[slices.Index(walk, j):]
			k := slices.Index(members, slices.Min(members))
			var chain []string
			for _, m := range slices.Concat(members[k:], members[:k+1]) {
				chain = append(chain, clip(c.Upstreams[m].Name))
			}
			cycles = append(cycles, cycle{members[k], chain})
		}
		for _, w := range walk {
			state[w] = done
		}
	}
	sort.Slice(cycles, func(i, j int) bool { return cycles[i].first < cycles[j].first })
	for _, cy := range cycles {
		p.add(fmt.Sprintf("upstreams[%d].via", cy.first), "cycle %s", strings.Join(cy.chain, " -> "))
	}
}

func (c *Config) validateGroups(p *problems, ix *nameIndex) {
	for i := range c.Groups {
		g := &c.Groups[i]
		path := fmt.Sprintf("groups[%d]", i)
		checkName(p, path+".name", g.Name)
		if j := ix.group(g.Name); g.Name != "" && j < i {
			p.add(path+".name", "duplicate of groups[%d]", j)
		} else if j := ix.upstream(g.Name); g.Name != "" && j >= 0 {
			p.add(path+".name", "%q is already the name of upstreams[%d]", g.Name, j)
		}
		p.enum(path+".policy", g.Policy)
		if len(g.Upstreams) == 0 {
			p.add(path+".upstreams", "at least one upstream required")
		}
		seen := map[string]int{}
		for j, name := range g.Upstreams {
			mp := fmt.Sprintf("%s.upstreams[%d]", path, j)
			switch {
			case ix.upstream(name) >= 0:
			case ix.group(name) >= 0:
				p.add(mp, "%q is a group; groups hold upstreams only", name)
			default:
				p.add(mp, "no upstream named %q", name)
			}
			if k, dup := seen[name]; dup {
				p.add(mp, "duplicate of %s.upstreams[%d]", path, k)
			} else {
				seen[name] = j
			}
		}
		p.enum(path+".on_down", g.OnDown)
		h := &g.Health
		p.nonNegative(path+".health.interval", h.Interval)
		if g.Policy == PolicyURLTest && h.Interval == 0 {
			p.add(path+".health.interval", "url-test picks by the health checks' latency: it needs periodic checks (an interval above 0)")
		}
		if h.Interval > 0 {
			p.positive(path+".health.timeout", h.Timeout)
		}
		if h.Rise < 1 {
			p.add(path+".health.rise", "must be at least 1")
		}
		if h.Fall < 1 {
			p.add(path+".health.fall", "must be at least 1")
		}
		if h.Probe != "" {
			if _, port, err := splitHostPort(h.Probe, false); err != nil {
				p.add(path+".health.probe", "%v", err)
			} else if port == 0 {
				p.add(path+".health.probe", "port must be 1-65535")
			}
		}
	}
}

func (c *Config) validateRules(p *problems, ix *nameIndex) {
	names := map[string]int{}
	for i := range c.Rules {
		r := &c.Rules[i]
		path := fmt.Sprintf("rules[%d]", i)
		if r.Name == "" {
			p.add(path+".name", "required")
		} else if j, dup := names[r.Name]; dup {
			p.add(path+".name", "%q is already the name of rules[%d]", r.Name, j)
		} else {
			names[r.Name] = i
		}
		for j, v := range r.Protocol {
			p.enum(fmt.Sprintf("%s.protocol[%d]", path, j), v)
		}
		p.prefixes(path+".dst", r.Dst)
		p.portRanges(path+".dst_ports", r.DstPorts)
		p.prefixes(path+".src", r.Src)
		for j, v := range r.Inbound {
			p.enum(fmt.Sprintf("%s.inbound[%d]", path, j), v)
		}
		for j, d := range r.Domain {
			if _, err := normalizeDomain(d); err != nil {
				p.add(fmt.Sprintf("%s.domain[%d]", path, j), "%v", err)
			}
		}
		for j, d := range r.Device {
			if _, err := normalizeDeviceName(d); err != nil {
				p.add(fmt.Sprintf("%s.device[%d]", path, j), "%q: %v", cut(d, maxQuoted), err)
			}
		}
		if (len(r.SrcMAC) > 0 || len(r.Device) > 0) && !c.Devices.On(len(c.LAN.Interfaces) > 0) {
			p.add(path, "src_mac and device need devices on (lan.interfaces set, or devices.enabled: true)")
		}
		switch r.Action {
		case ActionProxy:
			switch {
			case r.Upstream == "":
				p.add(path+".upstream", "required for action proxy")
			case ix.upstream(r.Upstream) < 0 && ix.group(r.Upstream) < 0:
				p.add(path+".upstream", "no upstream or group named %q", r.Upstream)
			}
		case ActionDirect, ActionBlock:
			if r.Upstream != "" {
				p.add(path+".upstream", "only used with action proxy (action is %s)", r.Action)
			}
		case 0:
			p.add(path+".action", "required (direct, proxy or block)")
		default:
			p.enum(path+".action", r.Action)
		}
	}
}
