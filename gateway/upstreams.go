package gateway

import (
	"context"
	"fmt"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/socksclient"
)

// NewUpstreams builds every configured upstream and group, keyed by name, plus "direct". An
// upstream with `via` is reached through the named one: each hop takes the dial function of the
// hop below, so chains of any depth are plain composition. Every socket at the bottom of every
// chain is opened by Direct and so carries socksgate's mark. A group (*Group) is an Upstream in
// the same map; its health checks start here and log their state changes to log.
//
// stop ends the health checks and waits for them; call it once the upstreams are no longer used
// (dials still work afterwards, with the members' last known state). On error nothing runs.
func NewUpstreams(cfg *configs.Config, control Control, log *logrus.Entry) (ups map[string]Upstream, stop func(), err error) {
	ups, err = newUpstreams(cfg, control)
	if err != nil {
		return nil, nil, err
	}
	direct := ups[configs.SchemeDirect]
	var groups []*Group
	for i := range cfg.Groups {
		gc := cfg.Groups[i]
		if _, dup := ups[gc.Name]; dup {
			return nil, nil, fmt.Errorf("group %q: name already used by an upstream", gc.Name)
		}
		members := make([]GroupMember, 0, len(gc.Upstreams))
		for _, name := range gc.Upstreams {
			u, ok := ups[name]
			if !ok {
				return nil, nil, fmt.Errorf("group %q: no upstream named %q", gc.Name, name)
			}
			members = append(members, GroupMember{Name: name, Upstream: u})
		}
		if len(members) == 0 {
			return nil, nil, fmt.Errorf("group %q: no upstreams", gc.Name)
		}
		groups = append(groups, NewGroup(gc, members, direct, log))
		ups[gc.Name] = groups[len(groups)-1]
	}
	for _, g := range groups {
		g.Start()
	}
	return ups, func() {
		for _, g := range groups {
			g.Close()
		}
	}, nil
}

// newUpstreams builds the configured upstreams (not the groups).
func newUpstreams(cfg *configs.Config, control Control) (map[string]Upstream, error) {
	direct := Direct{Control: control}
	ups := map[string]Upstream{configs.SchemeDirect: direct}
	byName := make(map[string]*configs.Upstream, len(cfg.Upstreams))
	for i := range cfg.Upstreams {
		byName[cfg.Upstreams[i].Name] = &cfg.Upstreams[i]
	}
	var build func(name string, depth int) (Upstream, error)
	build = func(name string, depth int) (Upstream, error) {
		if u, ok := ups[name]; ok {
			return u, nil
		}
		c, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("no upstream named %q", name)
		}
		if depth > len(byName) {
			return nil, fmt.Errorf("upstream %q: via cycle", name)
		}
		below := Upstream(direct)
		if c.Via != "" {
			var err error
			if below, err = build(c.Via, depth+1); err != nil {
				return nil, fmt.Errorf("upstream %q: %w", name, err)
			}
		}
		u, err := newUpstream(c, below, direct)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", name, err)
		}
		ups[name] = u
		return u, nil
	}
	for _, c := range cfg.Upstreams {
		if _, err := build(c.Name, 0); err != nil {
			return nil, err
		}
	}
	return ups, nil
}

// newUpstream makes one hop reached through below.
func newUpstream(c *configs.Upstream, below Upstream, direct Direct) (Upstream, error) {
	u := c.URL
	var user, pass string
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	// Failures to reach the proxy through the hop below are marked, so a group can tell "this
	// proxy is unusable" from "this proxy refused the destination".
	proxyDial := reachDial(below.DialContext)
	switch u.Scheme {
	case configs.SchemeDirect:
		return direct, nil
	case configs.SchemeHTTP:
		h := &httpUpstream{d: &httpproxy.Dialer{
			Address:   u.Host,
			Username:  user,
			Password:  pass,
			ProxyDial: proxyDial,
		}}
		h.name = h.d.String()
		return h, nil
	case configs.SchemeSOCKS5, configs.SchemeSOCKS5H, configs.SchemeSOCKS4, configs.SchemeSOCKS4A:
		v := map[string]socksclient.Version{
			configs.SchemeSOCKS5: socksclient.SOCKS5, configs.SchemeSOCKS5H: socksclient.SOCKS5,
			configs.SchemeSOCKS4: socksclient.SOCKS4, configs.SchemeSOCKS4A: socksclient.SOCKS4A,
		}[u.Scheme]
		s := &socksUpstream{viaChain: c.Via != "", d: &socksclient.Dialer{
			Version:   v,
			Address:   u.Host,
			Username:  user,
			Password:  pass,
			ProxyDial: proxyDial,
			ListenUDP: direct.ListenUDP,
		}}
		s.name = s.d.String()
		return s, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// socksUpstream adapts socksclient.Dialer to Upstream.
type socksUpstream struct {
	d        *socksclient.Dialer
	name     string // d.String(), built once
	viaChain bool   // reached through another upstream: no UDP
}

func (s *socksUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return s.d.DialContext(ctx, network, address)
}

func (s *socksUpstream) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	if s.d.Version != socksclient.SOCKS5 {
		return nil, fmt.Errorf("%s: %w", s.d, ErrUDPUnsupported)
	}
	if s.viaChain {
		// The association's datagrams would go straight to the relay, around the chain.
		return nil, fmt.Errorf("%s reached via another upstream: %w", s.d, ErrUDPUnsupported)
	}
	return s.d.ListenPacket(ctx)
}

// String is the dialer's redacted URL, built once: every flow's log line and counters use it.
func (s *socksUpstream) String() string { return s.name }

func (s *socksUpstream) probeProxy(ctx context.Context) error {
	return probeDial(ctx, s.d.ProxyDial, s.d.Address)
}

// httpUpstream adapts httpproxy.Dialer (HTTP CONNECT) to Upstream. CONNECT carries no UDP.
type httpUpstream struct {
	d    *httpproxy.Dialer
	name string // d.String(), built once
}

func (h *httpUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return h.d.DialContext(ctx, network, address)
}

func (h *httpUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, fmt.Errorf("%s: HTTP CONNECT: %w", h.d, ErrUDPUnsupported)
}

func (h *httpUpstream) String() string { return h.name }

func (h *httpUpstream) probeProxy(ctx context.Context) error {
	return probeDial(ctx, h.d.ProxyDial, h.d.Address)
}

// probeDial checks that a proxy accepts a TCP connection through the hop below.
func probeDial(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), address string) error {
	c, err := dial(ctx, "tcp", address)
	if err != nil {
		return err
	}
	return c.Close()
}
