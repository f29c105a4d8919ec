package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Option changes where or how the kernel state is managed.
type Option func(*options)

type options struct {
	netns int // 0: the calling process's namespace
}

// WithNetNS targets the network namespace behind fd (an open
// /var/run/netns/NAME or /proc/PID/ns/net) instead of the process's own.
// The caller keeps ownership of fd and must keep it open while the
// Ruleset is in use.
func WithNetNS(fd int) Option { return func(o *options) { o.netns = fd } }

func buildOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func (o options) handle() (*netlink.Handle, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if o.netns != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(o.netns))
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	return h, nil
}

// Ruleset is installed kernel state: the nftables table and, when TPROXY is
// used, the policy routing. It keeps the netlink socket the table was
// installed through; with on_crash open that socket owns the table, which
// the kernel deletes the moment the socket closes, including when the process dies.
type Ruleset struct {
	mu     sync.Mutex
	opts   options
	spec   Spec // defaulted
	conn   *tableConn
	closed bool
	// installed is the table as the kernel listed it right after the last install: what the
	// periodic check compares with (nil: the listing failed; only the chains are checked).
	installed *tableState
	// offloadDevs are flowtable ft's devices at the last install; offloadErr is why the last
	// install with offload on went without the flowtable (the kernel refused it), else nil.
	offloadDevs []string
	offloadErr  error
	// checkedGen is the nftables ruleset generation at which the table last matched installed
	// (genKnown: it was read); the periodic check lists the table only once it has moved.
	checkedGen uint32
	genKnown   bool
}

// Apply validates s and installs it atomically: the policy routing first
// (stale rules at the same priority and table swept), then the whole table
// replaced in one netlink batch, so a second Apply (or a start after a
// crash with on_crash closed) leaves exactly one table and one copy of
// each rule. The returned Ruleset must be closed to remove the state.
func Apply(s Spec, opts ...Option) (*Ruleset, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("invalid redirect spec: %w", err)
	}
	r := &Ruleset{opts: buildOptions(opts), spec: s.withDefaults()}
	conn, err := dialTable(r.opts.netns)
	if err != nil {
		return nil, err
	}
	r.conn = conn
	if err := r.install(r.spec, ""); err != nil {
		_ = conn.close()
		return nil, err
	}
	return r, nil
}

// install puts s in place: its policy routing first (the TPROXY rules set a mark that only
// means "deliver locally" once the fwmark rule exists), then the table in one batch, and only
// once the batch is in, the policy routing s does not use (a previous run's, or the spec's
// being replaced): removed before, a failed batch would leave TPROXY rules without their route.
// A failed batch takes out the policy routing this call added, and only that: what was there
// before may serve rules still in force (ours being replaced, or another instance's).
func (r *Ruleset) install(s Spec, oldTable string) error {
	h, err := r.opts.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	added := false
	if s.needsPolicyRouting() {
		had, err := hasPolicy(h, s)
		if err != nil {
			return err
		}
		err = ensurePolicy(h, s)
		added = !had
		if err != nil {
			if added {
				err = errors.Join(err, undoPolicy(h, s))
			}
			return err
		}
	}
	p := s.plan()
	var devs []string
	if p.offload {
		devs = offloadDevices(h, s)
	}
	err = r.conn.install(p, oldTable, devs)
	if err != nil && p.offload {
		// A kernel without flowtables (no CONFIG_NF_FLOW_TABLE, or its module missing)
		// refuses the flowtable: the table goes in without it, and the direct flows are
		// routed by the kernel as without offload.
		// If the table fails without the flowtable too, that failure is the one to report.
		offloadErr := fmt.Errorf("flowtable %s (devices %s) refused: %w", flowtableFT, strings.Join(devs, ", "), err)
		if err = r.conn.install(p.withoutOffload(), oldTable, nil); err == nil {
			r.offloadErr, devs = offloadErr, nil
		}
	} else if err == nil {
		r.offloadErr = nil
	}
	if err != nil {
		if added {
			err = errors.Join(err, undoPolicy(h, s))
		}
		return err
	}
	r.offloadDevs = devs
	// A listing that fails costs the periodic check its detail, not the install. The
	// generation is read first: a commit between the two makes the next check list the table.
	gen, genErr := nftGeneration(r.opts.netns)
	r.installed, _ = readTable(r.opts.netns, s.Table)
	r.checkedGen, r.genKnown = gen, genErr == nil
	if !s.needsPolicyRouting() {
		return removePolicy(h, s)
	}
	return sweepPolicy(h, s)
}

// Offload reports the flowtable's devices when the direct flows are offloaded, and, when
// Spec.Offload is on but the kernel refused the flowtable at the last install, why.
func (r *Ruleset) Offload() (devices []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.offloadDevs), r.offloadErr
}

// planFor is s's plan as r's last install put it in: without the flowtable when the kernel
// refused it (the periodic check must not take its absence for a drift).
func (r *Ruleset) planFor(s Spec) tablePlan {
	p := s.plan()
	if r.offloadErr != nil {
		p = p.withoutOffload()
	}
	return p
}

// offloadDevices lists flowtable ft's devices: those of s.staticOffloadDevices that exist,
// then the devices of the main table's default routes (IPv4 and IPv6, multipath included).
func offloadDevices(h *netlink.Handle, s Spec) []string {
	var out []string
	add := func(name string) {
		if name != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	for _, d := range s.staticOffloadDevices() {
		if _, err := h.LinkByName(d); err == nil {
			add(d)
		}
	}
	for _, idx := range defaultRouteLinks(h) {
		if l, err := h.LinkByIndex(idx); err == nil {
			add(l.Attrs().Name)
		}
	}
	return out
}

// defaultRouteLinks returns the link indexes of the main table's default routes.
func defaultRouteLinks(h *netlink.Handle) []int {
	var out []int
	for _, f := range families {
		routes, err := h.RouteListFiltered(f, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, rt := range routes {
			out = append(out, defaultRouteLink(rt)...)
		}
	}
	return out
}

// defaultRouteLink returns rt's devices when rt is a default route (of any table).
func defaultRouteLink(rt netlink.Route) []int {
	if rt.Dst != nil {
		if ones, _ := rt.Dst.Mask.Size(); ones != 0 {
			return nil
		}
	}
	if rt.Type != unix.RTN_UNICAST && rt.Type != 0 {
		return nil
	}
	var out []int
	if rt.LinkIndex > 0 {
		out = append(out, rt.LinkIndex)
	}
	for _, nh := range rt.MultiPath {
		if nh.LinkIndex > 0 {
			out = append(out, nh.LinkIndex)
		}
	}
	return out
}

// Spec returns the spec in force, with defaults filled in.
func (r *Ruleset) Spec() Spec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.spec
}

// Replace installs s in place of the current state, through the same netlink
// socket (an owned table can only be changed by its owner), in one batch;
// live connections keep flowing. Policy routing that s no longer uses is removed.
func (r *Ruleset) Replace(s Spec) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("invalid redirect spec: %w", err)
	}
	s = s.withDefaults()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("replace redirect rules: ruleset is closed")
	}
	old := r.spec
	if err := r.install(s, old.Table); err != nil {
		return err
	}
	r.spec = s
	if old.needsPolicyRouting() && (old.RulePriority != s.RulePriority || old.RouteTable != s.RouteTable) {
		h, err := r.opts.handle()
		if err != nil {
			return err
		}
		defer h.Close()
		if err := removePolicy(h, old); err != nil {
			return fmt.Errorf("remove previous policy routing: %w", err)
		}
	}
	return nil
}

// Close removes the table and the policy routing. It is idempotent; after
// the first call it returns nil.
func (r *Ruleset) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if err := r.conn.deleteTable(r.spec.Table); err != nil {
		errs = append(errs, err)
	}
	if err := r.conn.close(); err != nil {
		errs = append(errs, fmt.Errorf("close nftables netlink socket: %w", err))
	}
	if err := removeOnlyPolicy(r.opts, r.spec); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func removeOnlyPolicy(o options, s Spec) error {
	h, err := o.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := removePolicy(h, s); err != nil {
		return fmt.Errorf("remove policy routing: %w", err)
	}
	return nil
}

// Remove deletes whatever state a previous run with s left behind: the table
// and the policy routing. Nothing left is not an error. A table owned by a
// running process (on_crash open) cannot be removed and yields an error
// wrapping EPERM.
func Remove(s Spec, opts ...Option) error {
	s = s.withDefaults()
	o := buildOptions(opts)
	var errs []error
	conn, err := dialTable(o.netns)
	if err != nil {
		errs = append(errs, err)
	} else {
		if err := conn.deleteTable(s.Table); err != nil {
			errs = append(errs, err)
		}
		_ = conn.close()
	}
	if err := removeOnlyPolicy(o, s); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// InterfacePrefixes returns the prefixes of the named interfaces' addresses
// (IPv4 and IPv6, masked, sorted, without duplicates): the LAN's own networks,
// to be added to the bypass set.
func InterfacePrefixes(names []string, opts ...Option) ([]netip.Prefix, error) {
	h, err := buildOptions(opts).handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []netip.Prefix
	for _, name := range names {
		link, err := h.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find interface %s: %w", name, err)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", name, err)
		}
		for _, a := range addrs {
			if p, ok := ipNetPrefix(a.IPNet); ok {
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return comparePrefix(out[i], out[j]) < 0 })
	return slices.Compact(out), nil
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// MarkControl returns a Control hook for net.Dialer and net.ListenConfig that
// sets SO_MARK to mark on the socket before it connects or binds, so that
// socksgate's own traffic is told apart from the LAN's. It returns an error
// (never ignores one) when the mark cannot be set, e.g. without
// CAP_NET_ADMIN, or when mark is 0: an unmarked upstream socket would be
// captured again, a loop.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return fmt.Errorf("set SO_MARK on %s socket for %s: mark 0 would not exclude it from capture", network, address)
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("set SO_MARK %#x on %s socket for %s: %w", mark, network, address, err)
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x on %s socket for %s: %w", mark, network, address, serr)
		}
		return nil
	}
}
