package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/socksgate/socksgate/configs"
)

// sessionCacheSize is how many TLS sessions an upstream keeps for resumption. Every flow of one
// upstream asks one server name, so the cache holds one entry; the room beyond it costs
// nothing until used.
const sessionCacheSize = 8

// tlsDialer opens a TLS connection to a proxy over the connection the hop below opens
// (https://, socks5+tls://): the HTTP CONNECT or SOCKS5 dialer above it speaks over that.
// In a via chain the TLS runs inside the tunnel of the hop below, end to end with this proxy.
//
// Its tls.Config is built once per upstream and shared by every flow, so its
// ClientSessionCache resumes the session of an earlier flow: after the first, a flow pays an
// abbreviated handshake (no certificate sent or verified, no key exchange signature) instead of
// a full one (BenchmarkTLSUpstreamResumption).
type tlsDialer struct {
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	cfg     *tls.Config
	address string // the proxy's host:port, for errors
}

// newTLSDialer makes the TLS hop of upstream c over dial, reading the CA file (configs
// validated it; it may have changed since).
func newTLSDialer(c *configs.Upstream, dial func(ctx context.Context, network, address string) (net.Conn, error)) (*tlsDialer, error) {
	var t configs.UpstreamTLS
	if c.TLS != nil {
		t = *c.TLS
	}
	cfg := &tls.Config{
		ServerName:         t.ServerName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: t.Insecure,
		ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
	}
	if cfg.ServerName == "" {
		// An IP literal is checked against the certificate's IP addresses, and sent as no SNI.
		cfg.ServerName = c.URL.Hostname()
	}
	if c.URL.Scheme == configs.SchemeHTTPS {
		cfg.NextProtos = []string{"http/1.1"} // what CONNECT is spoken in; some front ends route by ALPN
	}
	if t.CA != "" {
		pool, err := configs.LoadCertPool(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls.ca: %w", err)
		}
		cfg.RootCAs = pool
	}
	if len(t.PinSHA256) > 0 {
		pins := t.PinSHA256
		// Run for every handshake, resumed ones included (their certificates come from the
		// session), after the chain's verification unless insecure.
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the proxy sent no certificate to check the pin against")
			}
			return checkPin(cs.PeerCertificates[0], pins)
		}
	}
	return &tlsDialer{dial: dial, cfg: cfg, address: c.URL.Host}, nil
}

// checkPin reports whether cert's key is one of pins.
func checkPin(cert *x509.Certificate, pins []configs.Pin) error {
	got := configs.PinOf(cert)
	for _, p := range pins {
		if p == got {
			return nil
		}
	}
	return fmt.Errorf("the certificate's key (%v) matches no tls.pin_sha256", got)
}

// DialContext connects to the proxy through the hop below and completes the TLS handshake
// within ctx. The connection is a *tls.Conn: its CloseWrite sends close_notify (the TLS
// half-close). It offers no SyscallConn, so the relay reads and writes it rather than the
// socket under it.
func (d *tlsDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	raw, err := d.dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, d.cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &tlsError{address: d.address, serverName: d.cfg.ServerName, err: err}
	}
	return c, nil
}

// TLSResumed reports whether c, a connection an upstream returned, is spoken over TLS to a
// proxy (ok; in a chain, the last hop's that speaks TLS) and whether that handshake resumed an
// earlier flow's session.
func TLSResumed(c net.Conn) (resumed, ok bool) {
	for c != nil {
		switch x := c.(type) {
		case *tls.Conn:
			return x.ConnectionState().DidResume, true
		case *memberConn:
			c = x.Conn
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return false, false
		}
	}
	return false, false
}

// tlsError is a failed TLS handshake with a proxy: its certificate (chain, name, pin), the
// protocol, or the connection under it. It speaks about the proxy: a group takes the member
// out.
type tlsError struct {
	address, serverName string
	err                 error
}

func (e *tlsError) Error() string {
	return fmt.Sprintf("tls handshake with the proxy %s (server name %s): %v", e.address, e.serverName, e.err)
}

func (e *tlsError) Unwrap() error { return e.err }

// withScheme is a dialer's String (scheme://[user@]host:port) with scheme instead of its own:
// the https:// and socks5+tls:// upstreams' names.
func withScheme(s, scheme string) string {
	if _, rest, ok := strings.Cut(s, "://"); ok {
		return scheme + "://" + rest
	}
	return s
}
