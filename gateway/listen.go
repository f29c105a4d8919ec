package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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

// startExplicit opens the explicit proxy ports (HTTP, SOCKS, mixed) of cfg.Listen. Explicit
// clients get the same routing and upstreams as captured flows: the servers parse their
// protocol and hand each destination to the adapters below, which build the Flow and call
// Handle (CONNECT-style tunnels), Dial (HTTP forwarding) or route each UDP datagram.
func (g *Gateway) startExplicit(ctx context.Context, cfg *configs.Config, log *logrus.Logger) ([]io.Closer, error) {
	l := cfg.Listen
	if len(l.HTTP)+len(l.SOCKS)+len(l.Mixed) == 0 {
		return nil, nil
	}
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
	guard := &loopGuard{}
	report := func(inbound string) func(netip.AddrPort, error) {
		return func(src netip.AddrPort, err error) {
			e := log.WithFields(logrus.Fields{"inbound": inbound, "src": src.String()}).WithError(err)
			switch {
			case errors.Is(err, httpproxy.ErrRefusedSource), errors.Is(err, socksserver.ErrRefusedSource):
				e.Warn("explicit client refused")
			case errors.Is(err, httpproxy.ErrAuthFailed), errors.Is(err, socksserver.ErrAuthFailed),
				errors.Is(err, socksserver.ErrSOCKS4WithUsers):
				e.Warn("explicit client not authenticated")
			case errors.Is(err, httpproxy.ErrAuthRequired):
				e.Debug("explicit client asked for credentials (407 challenge)") // every normal login starts so
			case errors.Is(err, httpproxy.ErrServerLog):
				if strings.Contains(err.Error(), "body copy") { // an origin cut a response: the flow's line says so
					e.Debug("http proxy: net/http")
				} else {
					e.Warn("http proxy: net/http")
				}
			default:
				e.Debug("explicit client handshake failed")
			}
		}
	}
	hsrv := &httpproxy.Server{
		Tunneler:         &httpInbound{g: g, guard: guard},
		Authenticate:     auth,
		Allow:            allow,
		HandshakeTimeout: hs,
		ErrorLog:         report(route.HTTP.String()),
	}
	ssrv := &socksserver.Server{
		Tunneler:         &socksInbound{g: g, guard: guard},
		Counters:         &g.Stats.SOCKSUDP, // one set for every server of the run, across reloads
		Authenticate:     auth,
		Allow:            allow,
		HandshakeTimeout: hs,
		ErrorLog:         report(route.SOCKS.String()),
	}
	mixed := func(c net.Conn) {
		b, err := peekByte(c, hs)
		if err != nil {
			c.Close()
			report("mixed")(addrPort(c.RemoteAddr()), fmt.Errorf("read first byte: %w", err))
			return
		}
		if b == socks.Version4 || b == socks.Version5 {
			ssrv.ServeConn(ctx, c)
			return
		}
		hsrv.ServeConn(ctx, c)
	}
	var lns []io.Closer
	grace := time.Duration(cfg.Timeouts.Grace)
	httpCloser := closerFunc(func() error { return hsrv.CloseGrace(grace) })
	for _, kind := range []struct {
		name  string
		addrs configs.AddrList
		serve func(net.Conn)
	}{
		{route.HTTP.String(), l.HTTP, func(c net.Conn) { hsrv.ServeConn(ctx, c) }},
		{route.SOCKS.String(), l.SOCKS, func(c net.Conn) { ssrv.ServeConn(ctx, c) }},
		{"mixed", l.Mixed, mixed},
	} {
		for i, s := range kind.addrs {
			addrs, err := listenAddrs(cfg, s)
			if err != nil {
				return append(lns, httpCloser), fmt.Errorf("listen.%s[%d]: %w", kind.name, i, err)
			}
			for _, a := range addrs {
				lc := net.ListenConfig{KeepAliveConfig: upstream.KeepAlive}
				ln, err := lc.Listen(context.Background(), "tcp", a)
				if err != nil {
					return append(lns, httpCloser), fmt.Errorf("listen.%s[%d]: %w", kind.name, i, err)
				}
				lns = append(lns, ln)
				guard.add(addrPort(ln.Addr()))
				log.WithFields(logrus.Fields{"kind": kind.name, "addr": ln.Addr().String()}).Info("explicit proxy listening")
				go func() {
					if err := g.serveAccept(ctx, ln, kind.serve); err != nil {
						log.WithError(err).WithField("addr", ln.Addr().String()).Error("explicit listener stopped")
					}
				}()
			}
		}
	}
	if len(cfg.LAN.Interfaces) > 0 {
		guard.add(netip.AddrPortFrom(netip.IPv6Unspecified(), cfg.Transparent.TCPPort))
	}
	g.guard.Store(guard)
	// The listeners close first (no new clients), then the HTTP server lets requests in
	// progress finish.
	return append(lns, httpCloser), nil
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
