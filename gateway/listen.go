package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/redirect"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksserver"
	"github.com/socksgate/socksgate/upstream"
)

// explicitInbound is the explicit proxy ports in force: one HTTP and one SOCKS server shared by
// every port (they hold the settings: users, the source ACL, the handshake timeout), and the
// open listeners by address. Explicit clients get the same routing and upstreams as captured
// flows: the servers parse their protocol and hand each destination to the adapters in
// explicit.go, which build the Flow and call Handle (CONNECT-style tunnels), Dial (HTTP
// forwarding) or route each UDP datagram.
//
// A reload is a diff (set): a listener whose address stays is kept open throughout, so its
// clients are never refused, even when its kind or the servers' settings change; new addresses
// are opened before anything is closed; removed ones are closed, and what they already accepted
// goes on to its end. Servers replaced by new settings are retired: their idle keep-alive
// connections close, requests in progress finish, and only the shutdown deadline (cut) ends
// them.
type explicitInbound struct {
	g      *Gateway
	log    *logrus.Logger
	ctx    context.Context // the flows' context
	cut    context.Context // ends at shutdown's deadline
	health *listenerHealth
	guard  *loopGuard

	servers atomic.Pointer[explicitServers] // nil: no explicit port
	lns     map[string]*explicitListener    // by address as configured (expanded "lan:")
	retired sync.WaitGroup                  // HTTP servers finishing their requests
}

// explicitListener is one open explicit port; its kind may change by reload, its socket stays.
type explicitListener struct {
	ln     net.Listener
	kind   atomic.Pointer[string] // route.HTTP's name, route.SOCKS's or "mixed"
	name   string                 // "listen.KIND ADDR" as first opened, for /healthz
	failed atomic.Bool            // its accept loop stopped with an error
}

// explicitServers are the protocol servers of one set of settings.
type explicitServers struct {
	settings explicitSettings
	hsrv     *httpproxy.Server
	ssrv     *socksserver.Server
	hs       time.Duration
	report   func(string) func(netip.AddrPort, error)
}

// explicitSettings is what the servers are built from: when a reload leaves it as it was, the
// servers (and their clients' keep-alive connections) stay.
type explicitSettings struct {
	Users     []configs.User
	Allow     []netip.Prefix
	Handshake configs.Duration
	LAN       configs.LAN
}

func settingsOf(cfg *configs.Config) explicitSettings {
	return explicitSettings{cfg.Listen.Users, cfg.Listen.Allow, cfg.Timeouts.Handshake, cfg.LAN}
}

// wantListener is one address cfg.Listen asks for.
type wantListener struct {
	kind, addr, entry string // entry: "listen.http[0]", for errors
}

// wantListeners expands cfg.Listen into the addresses to listen on, in config order.
func wantListeners(cfg *configs.Config) ([]wantListener, error) {
	l := cfg.Listen
	var out []wantListener
	seen := map[string]string{}
	for _, kind := range []struct {
		name  string
		addrs configs.AddrList
	}{{route.HTTP.String(), l.HTTP}, {route.SOCKS.String(), l.SOCKS}, {"mixed", l.Mixed}} {
		for i, s := range kind.addrs {
			entry := fmt.Sprintf("listen.%s[%d]", kind.name, i)
			addrs, err := listenAddrs(cfg, s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", entry, err)
			}
			for _, a := range addrs {
				if other, dup := seen[a]; dup {
					return nil, fmt.Errorf("%s: %s is also %s", entry, a, other)
				}
				seen[a] = entry
				out = append(out, wantListener{kind.name, a, entry})
			}
		}
	}
	return out, nil
}

func newExplicitInbound(g *Gateway, ctx, cut context.Context, log *logrus.Logger, health *listenerHealth) *explicitInbound {
	return &explicitInbound{g: g, log: log, ctx: ctx, cut: cut, health: health, guard: &loopGuard{},
		lns: map[string]*explicitListener{}}
}

// set makes cfg's explicit ports the ones in force. Every address not open yet is opened
// first: if one cannot be (a port taken), those just opened are closed again and the error is
// returned, with the set in force untouched. Then the servers are switched (when their settings
// changed), kept listeners take their kind, and removed ones are closed.
func (e *explicitInbound) set(cfg *configs.Config) error {
	want, err := wantListeners(cfg)
	if err != nil {
		return err
	}
	var servers *explicitServers
	if len(want) > 0 {
		servers = e.servers.Load()
		if servers == nil || !reflect.DeepEqual(servers.settings, settingsOf(cfg)) {
			if servers, err = e.newServers(cfg); err != nil {
				return err
			}
		}
	}
	opened := map[string]*explicitListener{}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w.addr] = true
	}
	// Old listeners closed to free their port for a new address that overlaps them, reopened
	// if the reload fails.
	var handedOver []string
	for _, w := range want {
		if l := e.lns[w.addr]; l != nil {
			if !l.failed.Load() {
				continue
			}
			// Stopped with an error (reported on /healthz): this reload opens it anew.
			l.ln.Close()
			delete(e.lns, w.addr)
		}
		ln, err := listenExplicit(w.addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			var freed []string
			if ln, freed, err = e.handOver(w.addr, wanted); len(freed) > 0 {
				handedOver = append(handedOver, freed...)
			}
		}
		if err != nil {
			for _, l := range opened {
				l.ln.Close()
			}
			e.takeBack(handedOver)
			return fmt.Errorf("%s: %w", w.entry, err)
		}
		opened[w.addr] = &explicitListener{ln: ln, name: "listen." + w.kind + " " + w.addr}
	}

	// Nothing fails from here on.
	if old := e.servers.Swap(servers); old != nil && old != servers {
		e.retire(old)
	}
	for addr, l := range e.lns {
		if !wanted[addr] {
			l.ln.Close() // its serve loop ends; connections it accepted go on
			delete(e.lns, addr)
			e.health.forget(l.name)
			e.log.WithFields(logrus.Fields{"kind": *l.kind.Load(), "addr": l.ln.Addr().String()}).Info("explicit proxy port closed")
		}
	}
	own := make([]netip.AddrPort, 0, len(want)+1)
	for _, w := range want {
		l, kept := e.lns[w.addr]
		if !kept {
			l = opened[w.addr]
			e.lns[w.addr] = l
			e.health.forget(l.name)
		}
		kind := w.kind
		if was := l.kind.Swap(&kind); kept && *was != kind {
			e.log.WithFields(logrus.Fields{"kind": kind, "was": *was, "addr": l.ln.Addr().String()}).Info("explicit proxy port changes kind")
		}
		own = append(own, addrPort(l.ln.Addr()))
		if !kept {
			e.log.WithFields(logrus.Fields{"kind": kind, "addr": l.ln.Addr().String()}).Info("explicit proxy listening")
			go e.serve(l)
		}
	}
	if len(want) == 0 {
		e.g.guard.Store(nil)
		return nil
	}
	if len(cfg.LAN.Interfaces) > 0 {
		own = append(own, netip.AddrPortFrom(netip.IPv6Unspecified(), cfg.Transparent.TCPPort))
	}
	e.guard.set(own)
	e.g.guard.Store(e.guard)
	return nil
}

func listenExplicit(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: upstream.KeepAlive}
	return lc.Listen(context.Background(), "tcp", addr)
}

// handOver opens addr, whose port an old listener that this reload removes holds on an
// overlapping address (0.0.0.0:1080 giving way to 127.0.0.1:1080, or the other way round): the
// kernel lets the two share no port, and socksgate does not use SO_REUSEPORT, under which a
// stray process could share it too. Those old listeners are closed first, then addr is opened;
// if it still cannot be, they are reopened. It returns the old addresses it closed (for
// takeBack, should a later address of the reload fail). Between the close and the open,
// connections to that port are refused: a moment, instead of a reload refused outright.
func (e *explicitInbound) handOver(addr string, wanted map[string]bool) (net.Listener, []string, error) {
	var freed []string
	for old, l := range e.lns {
		if !wanted[old] && overlaps(old, addr) {
			l.ln.Close() // its serve loop ends; connections it accepted go on
			freed = append(freed, old)
		}
	}
	if len(freed) == 0 {
		return nil, nil, fmt.Errorf("%w (and no port of the running set to hand over)", syscall.EADDRINUSE)
	}
	ln, err := listenExplicit(addr)
	if err != nil {
		e.takeBack(freed)
		return nil, nil, err
	}
	e.log.WithFields(logrus.Fields{"addr": addr, "was": freed}).Info("explicit proxy port handed over to an overlapping address")
	return ln, freed, nil
}

// takeBack reopens old listeners handOver closed, when the reload that closed them fails.
func (e *explicitInbound) takeBack(addrs []string) {
	for _, addr := range addrs {
		l := e.lns[addr]
		ln, err := listenExplicit(addr)
		if err != nil {
			e.log.WithError(err).WithField("addr", addr).Error("reload refused, and the explicit port it had closed could not be reopened")
			e.health.stopped(l.name, fmt.Errorf("reopen after a refused reload: %w", err))
			l.failed.Store(true) // the next reload opens it anew
			continue
		}
		nl := &explicitListener{ln: ln, name: l.name}
		nl.kind.Store(l.kind.Load())
		e.lns[addr] = nl
		go e.serve(nl)
	}
}

// overlaps reports whether two listen addresses (host:port) would share a port in the kernel:
// the same port, and the same host or either of them a wildcard.
func overlaps(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	wild := func(h string) bool {
		ip, err := netip.ParseAddr(h)
		return h == "" || err == nil && ip.IsUnspecified()
	}
	return ah == bh || wild(ah) || wild(bh)
}

// serve accepts on l until it is closed; a listener that stops otherwise is reported down.
func (e *explicitInbound) serve(l *explicitListener) {
	err := e.g.serveAccept(e.ctx, l.ln, func(c net.Conn) {
		if e.g.refuseOwnDial(c, inboundOf(*l.kind.Load())) {
			c.Close()
			return
		}
		if s := e.servers.Load(); s != nil {
			s.serve(e.ctx, *l.kind.Load(), c)
			return
		}
		c.Close() // the last explicit port is being closed
	})
	if err != nil {
		l.failed.Store(true)
		e.log.WithError(err).WithField("addr", l.ln.Addr().String()).Error("explicit listener stopped")
		e.health.stopped(l.name, err)
	}
}

// clipText cuts what a client sent to n bytes for a log line.
func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// inboundOf is the inbound a port of kind records its flows as; a mixed port's connection
// refused before its first byte is read is recorded as SOCKS.
func inboundOf(kind string) route.Inbound {
	if kind == route.HTTP.String() {
		return route.HTTP
	}
	return route.SOCKS
}

// retire lets an HTTP server no longer in force finish its requests, until shutdown's deadline.
func (e *explicitInbound) retire(s *explicitServers) {
	e.retired.Go(func() { s.hsrv.Shutdown(e.cut) })
}

// close closes every explicit port and retires the servers; it returns once their requests
// in progress are done, or e.cut has ended them.
func (e *explicitInbound) close() {
	for addr, l := range e.lns {
		l.ln.Close()
		delete(e.lns, addr)
	}
	if s := e.servers.Swap(nil); s != nil {
		e.retire(s)
	}
	e.retired.Wait()
}

// newServers builds the HTTP and SOCKS servers for cfg's explicit settings.
func (e *explicitInbound) newServers(cfg *configs.Config) (*explicitServers, error) {
	l := cfg.Listen
	allow, err := explicitACL(cfg)
	if err != nil {
		return nil, err
	}
	var auth func(user, pass string) bool
	if len(l.Users) > 0 {
		users := make(map[string]string, len(l.Users))
		for _, u := range l.Users {
			users[u.Username] = string(u.Password)
		}
		auth = httpproxy.Credentials(users)
	}
	hs := time.Duration(cfg.Timeouts.Handshake)
	log := e.log
	report := func(inbound string) func(netip.AddrPort, error) {
		return func(src netip.AddrPort, err error) {
			if le := (*httpproxy.LoopError)(nil); errors.As(err, &le) {
				// Its Via shows it has passed through socksgate already: the flow's refusal,
				// counted and logged as one (the client got 403 saying so).
				t := le.Target
				e.g.refuse(route.Flow{Network: route.TCP, Src: src, Dst: t.Addr, Host: t.Host, Port: t.Port, Inbound: route.HTTP},
					&Refusal{errViaLoop.Reason, errViaLoop.text + " (Via: " + clipText(le.Via, 200) + ")"})
				return
			}
			line := log.WithFields(logrus.Fields{"inbound": inbound, "src": src.String()}).WithError(err)
			switch {
			case errors.Is(err, httpproxy.ErrRefusedSource), errors.Is(err, socksserver.ErrRefusedSource):
				line.Warn("explicit client refused")
			case errors.Is(err, httpproxy.ErrAuthFailed), errors.Is(err, socksserver.ErrAuthFailed),
				errors.Is(err, socksserver.ErrSOCKS4WithUsers):
				line.Warn("explicit client not authenticated")
			case errors.Is(err, httpproxy.ErrAuthRequired):
				line.Debug("explicit client asked for credentials (407 challenge)") // every normal login starts so
			case errors.Is(err, httpproxy.ErrServerLog):
				if strings.Contains(err.Error(), "body copy") { // an origin cut a response: the flow's line says so
					line.Debug("http proxy: net/http")
				} else {
					line.Warn("http proxy: net/http")
				}
			default:
				line.Debug("explicit client handshake failed")
			}
		}
	}
	return &explicitServers{
		settings: settingsOf(cfg),
		hsrv: &httpproxy.Server{
			Tunneler:         &httpInbound{g: e.g, guard: e.guard},
			Authenticate:     auth,
			Allow:            allow,
			HandshakeTimeout: hs,
			ErrorLog:         report(route.HTTP.String()),
		},
		ssrv: &socksserver.Server{
			Tunneler:         &socksInbound{g: e.g, guard: e.guard},
			Counters:         &e.g.Stats.SOCKSUDP, // one set for every server of the run, across reloads
			Authenticate:     auth,
			Allow:            allow,
			HandshakeTimeout: hs,
			ErrorLog:         report(route.SOCKS.String()),
		},
		hs:     hs,
		report: report,
	}, nil
}

// serve hands c, accepted on a port of kind, to its server; a mixed port tells SOCKS from HTTP
// by the first byte.
func (s *explicitServers) serve(ctx context.Context, kind string, c net.Conn) {
	switch kind {
	case route.HTTP.String():
		s.hsrv.ServeConn(ctx, c)
		return
	case route.SOCKS.String():
		s.ssrv.ServeConn(ctx, c)
		return
	}
	b, err := peekByte(c, s.hs)
	if err != nil {
		c.Close()
		s.report("mixed")(addrPort(c.RemoteAddr()), fmt.Errorf("read first byte: %w", err))
		return
	}
	if b == socks.Version4 || b == socks.Version5 {
		s.ssrv.ServeConn(ctx, c)
		return
	}
	s.hsrv.ServeConn(ctx, c)
}

// set replaces the listeners the guard knows.
func (l *loopGuard) set(own []netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.own = own
}

// listenerHealth knows the listeners that should be serving and stopped with an error
// instead; /healthz reports them.
type listenerHealth struct {
	mu   sync.Mutex
	down map[string]error
}

func (h *listenerHealth) stopped(name string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down = map[string]error{}
	}
	h.down[name] = err
}

// isDown reports whether the listener name stopped with an error.
func (h *listenerHealth) isDown(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, down := h.down[name]
	return down
}

// forget drops a listener that is no longer meant to be open (closed by a reload).
func (h *listenerHealth) forget(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.down, name)
}

// Unhealthy lists "NAME stopped: ERROR" for each listener down, sorted.
func (h *listenerHealth) Unhealthy() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.down))
	for name, err := range h.down {
		out = append(out, name+" stopped: "+err.Error())
	}
	slices.Sort(out)
	return out
}

// listenAddrs expands one listen.* entry: "lan:PORT" is each address of each lan.interfaces
// interface (IPv6 link-local ones skipped: they need a zone and are no LAN clients' target);
// anything else is listened on as written.
func listenAddrs(cfg *configs.Config, s string) ([]string, error) {
	a, err := configs.ParseListenAddr(s)
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(int(a.Port))
	if !a.LAN {
		return []string{net.JoinHostPort(a.Host, port)}, nil
	}
	var out []string
	for _, name := range cfg.LAN.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("lan interface %s: %w", name, err)
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", name, err)
		}
		for _, ad := range addrs {
			ipn, ok := ad.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.Is6() && ip.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, net.JoinHostPort(ip.String(), port))
		}
	}
	return out, nil
}

// explicitACL is listen.allow, or by default loopback plus the LAN: lan.prefixes and the
// prefixes of the lan.interfaces addresses.
func explicitACL(cfg *configs.Config) (func(netip.Addr) bool, error) {
	allow := cfg.Listen.Allow
	if len(allow) == 0 {
		allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
		allow = append(allow, cfg.LAN.Prefixes...)
		if len(cfg.LAN.Interfaces) > 0 {
			own, err := redirect.InterfacePrefixes(cfg.LAN.Interfaces)
			if err != nil {
				return nil, fmt.Errorf("listen.allow (default, from lan.interfaces): %w", err)
			}
			allow = append(allow, own...)
		}
	}
	return func(a netip.Addr) bool {
		a = a.Unmap()
		return slices.ContainsFunc(allow, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

// peekByte returns the first byte the client sent without taking it from the socket (MSG_PEEK),
// so the server that gets the connection reads it whole and the relay can still splice.
func peekByte(c net.Conn, timeout time.Duration) (byte, error) {
	if timeout > 0 {
		c.SetReadDeadline(time.Now().Add(timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var b [1]byte
	var n int
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return rerr != syscall.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	return b[0], err
}
