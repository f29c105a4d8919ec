package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/httpproxy"
	"github.com/socksgate/socksgate/socksclient"
)

// NewUpstreams builds every configured upstream and group, keyed by name, plus "direct". An
// upstream with `via` is reached through the named one: each hop takes the dial function of the
// hop below, so chains of any depth are plain composition. Every socket at the bottom of every
// chain is opened by direct and so carries socksgate's mark (and is kept in direct.Own while it
// is open). A group (*Group) is an Upstream in the same map; its health checks start here and
// log their state changes to log.
//
// stop ends the health checks and waits for them; call it once the upstreams are no longer used
// (dials still work afterwards, with the members' last known state). On error nothing runs.
func NewUpstreams(cfg *configs.Config, direct Direct, log *logrus.Entry) (ups map[string]Upstream, stop func(), err error) {
	ups, groups, err := buildUpstreams(cfg, direct, log)
	if err != nil {
		return nil, nil, err
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

// NewUpstreamsIdle builds what NewUpstreams builds but starts nothing: no health check runs
// and nothing is dialled until a caller dials (socksgate explain routes flows through them
// without touching the network). Every group member is in its initial state, up.
func NewUpstreamsIdle(cfg *configs.Config, direct Direct) (map[string]Upstream, error) {
	ups, _, err := buildUpstreams(cfg, direct, nil)
	return ups, err
}

// buildUpstreams builds the upstreams and groups; the groups' health checks are not started.
func buildUpstreams(cfg *configs.Config, direct Direct, log *logrus.Entry) (map[string]Upstream, []*Group, error) {
	ups, err := newUpstreams(cfg, direct, log)
	if err != nil {
		return nil, nil, err
	}
	directUp := ups[configs.SchemeDirect]
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
		groups = append(groups, NewGroup(gc, members, directUp, log))
		ups[gc.Name] = groups[len(groups)-1]
	}
	return ups, groups, nil
}

// newUpstreams builds the configured upstreams (not the groups).
func newUpstreams(cfg *configs.Config, direct Direct, log *logrus.Entry) (map[string]Upstream, error) {
	// Upstreams are pointers: an Upstream is its own identity (a map key for the ways out of
	// a UDP session), whatever its URL says.
	ups := map[string]Upstream{configs.SchemeDirect: &direct}
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
		below := Upstream(&direct)
		if c.Via != "" {
			var err error
			if below, err = build(c.Via, depth+1); err != nil {
				return nil, fmt.Errorf("upstream %q: %w", name, err)
			}
		}
		u, err := newUpstream(c, below, direct, log)
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
func newUpstream(c *configs.Upstream, below Upstream, direct Direct, log *logrus.Entry) (Upstream, error) {
	u := c.URL
	var user, pass string
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	// Failures to reach the proxy through the hop below are marked, so a group can tell "this
	// proxy is unusable" from "this proxy refused the destination".
	proxyDial := reachDial(below.DialContext)
	if c.IsTLS() {
		// The proxy's protocol is spoken over TLS to it: the TLS hop sits between the hop below
		// and the dialer.
		td, err := newTLSDialer(c, proxyDial)
		if err != nil {
			return nil, err
		}
		proxyDial = td.DialContext
	}
	switch u.Scheme {
	case configs.SchemeDirect:
		return direct, nil
	case configs.SchemeHTTP, configs.SchemeHTTPS:
		h := &httpUpstream{own: direct.Own, host: proxyHost(u.Host), d: &httpproxy.Dialer{
			Address:   u.Host,
			Username:  user,
			Password:  pass,
			ProxyDial: proxyDial,
		}}
		h.name = nameVia(withScheme(h.d.String(), u.Scheme), c, below)
		return h, nil
	case configs.SchemeSOCKS5, configs.SchemeSOCKS5H, configs.SchemeSOCKS4, configs.SchemeSOCKS4A, configs.SchemeSOCKS5TLS:
		v := map[string]socksclient.Version{
			configs.SchemeSOCKS5: socksclient.SOCKS5, configs.SchemeSOCKS5H: socksclient.SOCKS5,
			configs.SchemeSOCKS4: socksclient.SOCKS4, configs.SchemeSOCKS4A: socksclient.SOCKS4A,
			configs.SchemeSOCKS5TLS: socksclient.SOCKS5,
		}[u.Scheme]
		s := &socksUpstream{own: direct.Own, host: proxyHost(u.Host), viaChain: c.Via != "", overTLS: c.IsTLS(), log: log, probeTimeout: pipelineProbeTimeout, retry: pipelineRetry, d: &socksclient.Dialer{
			Version:   v,
			Address:   u.Host,
			Username:  user,
			Password:  pass,
			ProxyDial: proxyDial,
			ListenUDP: direct.ListenUDP,
		}}
		s.name = nameVia(withScheme(s.d.String(), u.Scheme), c, below)
		if v == socksclient.SOCKS5 && user == "" {
			dp := *s.d
			dp.Pipeline = true
			s.dp = &dp
		}
		return s, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// socksUpstream adapts socksclient.Dialer to Upstream.
//
// A SOCKS5 proxy without credentials is asked once, in the background at its first dial,
// whether it answers a request sent together with the greeting (socksclient.ProbePipelining);
// if it does, later dials send both in one write and save a round trip to the proxy each.
// Until then, and for a proxy that does not (microsocks), dials wait for the method choice as
// the RFC has it. A probe that could not reach the proxy is repeated at a dial after
// pipelineRetry. A pipelined dial that the proxy answered only up to the greeting
// (socksclient.ErrPipelinedUnanswered) asks again at once: a proxy replaced by one that does
// not read ahead is found out after one failed flow, and one that was only slow to reach the
// destination answers yes again.
type socksUpstream struct {
	d         *socksclient.Dialer
	dp        *socksclient.Dialer // d with Pipeline; nil when d cannot pipeline (SOCKS4, credentials)
	pipeline  atomic.Int32        // a pipeline* state
	nextProbe atomic.Int64        // unix nanoseconds before which a failed probe is not repeated
	log       *logrus.Entry
	name      string // d.String(), built once
	viaChain  bool   // reached through another upstream: no UDP
	overTLS   bool   // socks5+tls: no UDP (the datagrams would travel in clear)
	// probeTimeout bounds the probe: a proxy that answers pipelined requests answers the probe
	// (a request for 0.0.0.0:0, which it can only refuse) within a few round trips. retry is
	// how long a probe that could not reach the proxy waits to be repeated.
	probeTimeout, retry time.Duration
	own                 *OwnConns  // handshakes in flight, for loop detection; nil: none kept
	host                netip.Addr // the proxy's address (none for a name), as OwnConns.Handshake keys it
}

// Pipelining states of a socksUpstream.
const (
	pipelineUnknown int32 = iota
	pipelineProbing
	pipelineYes
	pipelineNo
)

// The defaults of socksUpstream.probeTimeout and retry.
const pipelineProbeTimeout, pipelineRetry = 3 * time.Second, 30 * time.Second

func (s *socksUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	s.own.Handshake(s.host, address)
	defer s.own.HandshakeDone(s.host, address)
	if s.dp != nil {
		switch s.pipeline.Load() {
		case pipelineYes:
			c, err := s.dp.DialContext(ctx, network, address)
			if errors.Is(err, socksclient.ErrPipelinedUnanswered) && s.pipeline.CompareAndSwap(pipelineYes, pipelineProbing) {
				go s.probePipelining(true)
			}
			return c, err
		case pipelineUnknown:
			if time.Now().UnixNano() >= s.nextProbe.Load() && s.pipeline.CompareAndSwap(pipelineUnknown, pipelineProbing) {
				go s.probePipelining(false)
			}
		}
	}
	return s.d.DialContext(ctx, network, address)
}

// probePipelining asks the proxy whether it takes pipelined requests and records the answer;
// again says a pipelined dial has just gone unanswered.
func (s *socksUpstream) probePipelining(again bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.probeTimeout)
	defer cancel()
	ok, err := s.dp.ProbePipelining(ctx)
	switch {
	case err != nil:
		s.nextProbe.Store(time.Now().Add(s.retry).UnixNano())
		s.pipeline.Store(pipelineUnknown)
		if s.log != nil {
			s.log.WithError(err).Debugf("upstream %s: could not ask whether it takes pipelined requests; asking again in %v", s.name, s.retry)
		}
	case ok:
		s.pipeline.Store(pipelineYes)
		if s.log != nil && again {
			s.log.Debugf("upstream %s left a pipelined request unanswered but answers the probe: still pipelining", s.name)
		} else if s.log != nil {
			s.log.Infof("upstream %s answers a request sent with its greeting: pipelining them (one round trip less per flow)", s.name)
		}
	default:
		s.pipeline.Store(pipelineNo)
		if s.log != nil && again {
			s.log.Warnf("upstream %s stopped answering requests sent with its greeting: waiting for its method choice on each flow from now on", s.name)
		} else if s.log != nil {
			s.log.Infof("upstream %s does not answer a request sent with its greeting: waiting for its method choice on each flow", s.name)
		}
	}
}

func (s *socksUpstream) ListenPacket(ctx context.Context) (net.PacketConn, error) {
	if s.d.Version != socksclient.SOCKS5 {
		return nil, fmt.Errorf("%s: %w", s.d, ErrUDPUnsupported)
	}
	if s.viaChain {
		// The association's datagrams would go straight to the relay, around the chain.
		return nil, fmt.Errorf("%s reached via another upstream: %w", s.d, ErrUDPUnsupported)
	}
	if s.overTLS {
		// UDP ASSOCIATE's datagrams go to the relay in plain UDP, beside the TLS: destinations
		// and payloads in clear on the path the TLS was chosen to hide them from (and a TLS
		// terminator in front of the SOCKS server relays none of it).
		return nil, fmt.Errorf("%s: SOCKS5 over TLS: %w", s.name, ErrUDPUnsupported)
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
	name string     // d.String(), built once
	own  *OwnConns  // handshakes in flight, for loop detection; nil: none kept
	host netip.Addr // the proxy's address (none for a name), as OwnConns.Handshake keys it
}

func (h *httpUpstream) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	h.own.Handshake(h.host, address)
	defer h.own.HandshakeDone(h.host, address)
	return h.d.DialContext(ctx, network, address)
}

func (h *httpUpstream) ListenPacket(context.Context) (net.PacketConn, error) {
	return nil, fmt.Errorf("%s: HTTP CONNECT: %w", h.name, ErrUDPUnsupported)
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

// proxyHost is the address of a proxy's host:port; none when it is a name.
func proxyHost(hostport string) netip.Addr {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		h = hostport
	}
	a, _ := netip.ParseAddr(h)
	return a.Unmap().WithZone("")
}

// nameVia is an upstream's name for logs and metrics: its redacted URL, and for a chained one
// the hop it is reached through, so that two upstreams with one URL (one reached via another)
// are told apart.
func nameVia(url string, c *configs.Upstream, below Upstream) string {
	if c.Via == "" {
		return url
	}
	return url + " via " + below.String()
}
