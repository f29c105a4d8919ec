package gateway

import (
	"context"
	"fmt"
	"net"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/socksclient"
)

// NewUpstreams builds every configured upstream, keyed by name, plus "direct". An upstream with
// `via` is reached through the named one: each hop takes the dial function of the hop below,
// so chains of any depth are plain composition. Every socket at the bottom of every chain is
// opened by Direct and so carries socksgate's mark.
func NewUpstreams(cfg *configs.Config, control Control) (map[string]Upstream, error) {
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
	switch u.Scheme {
	case configs.SchemeDirect:
		return direct, nil
	case configs.SchemeSOCKS5, configs.SchemeSOCKS5H, configs.SchemeSOCKS4, configs.SchemeSOCKS4A:
		v := map[string]socksclient.Version{
			configs.SchemeSOCKS5: socksclient.SOCKS5, configs.SchemeSOCKS5H: socksclient.SOCKS5,
			configs.SchemeSOCKS4: socksclient.SOCKS4, configs.SchemeSOCKS4A: socksclient.SOCKS4A,
		}[u.Scheme]
		return &socksUpstream{&socksclient.Dialer{
			Version:   v,
			Address:   u.Host,
			Username:  user,
			Password:  pass,
			ProxyDial: below.DialContext,
			ListenUDP: direct.ListenUDP,
		}}, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// socksUpstream adapts socksclient.Dialer to Upstream.
type socksUpstream struct{ d *socksclient.Dialer }

func (s *socksUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return s.d.DialContext(ctx, network, address)
}

func (s *socksUpstream) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	if s.d.Version != socksclient.SOCKS5 {
		return nil, fmt.Errorf("%s: %w", s.d, ErrUDPUnsupported)
	}
	return s.d.ListenPacket(ctx)
}

func (s *socksUpstream) String() string { return s.d.String() }
