package dns

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/socksgate/socksgate/internal/netctx"
)

// Exchanger asks one resolver (or a list of them) a question: a way out for DNS. Exchange must
// be safe for concurrent use, must honour ctx and returns an error for an answer that does not
// answer the query (ErrGarbage). An Exchanger that keeps connections (DoH) implements
// io.Closer: close it when a reload drops it.
type Exchanger interface {
	Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error)
	// String names the resolver and its way out for logs and metrics labels.
	String() string
}

// DialFunc opens a connection, as upstream.Upstream.DialContext or a marked net.Dialer does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ListenPacketFunc opens a UDP socket whose WriteTo carries the real destination, as
// upstream.Upstream.ListenPacket (a SOCKS5 UDP association) does.
type ListenPacketFunc func(ctx context.Context) (net.PacketConn, error)

// DefaultTimeout bounds one exchange with one server when Transport.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// ErrGarbage is wrapped by Exchange when the answer cannot be parsed or does not answer the
// query (not a response, another ID, another question).
var ErrGarbage = errors.New("garbage answer")

// ednsSize is the EDNS0 UDP payload size socksgate offers (DNS flag day 2020: no fragments).
const ednsSize = 1232

// Transport is the way out an Endpoint is reached through.
type Transport struct {
	// Dial opens TCP connections (and UDP ones for plain DNS when ListenPacket is nil and NoUDP
	// is false). Required.
	Dial DialFunc
	// ListenPacket, when set, carries plain DNS over UDP (a SOCKS5 UDP association).
	ListenPacket ListenPacketFunc
	// NoUDP makes plain DNS use TCP only: for a way out that carries no UDP (HTTP CONNECT,
	// SOCKS4, SOCKS5 without UDP ASSOCIATE). An udp:// server cannot be reached over it.
	NoUDP bool
	// Timeout bounds one exchange (dial, handshake, query, answer); DefaultTimeout when zero.
	Timeout time.Duration
	// TLSConfig is the base TLS configuration for tls:// and https:// (root CAs); cloned, with
	// ServerName set from the endpoint. Nil: the system roots.
	TLSConfig *tls.Config
	// Via names the way out in String ("udp://1.1.1.1:53 via proxyA"); empty: nothing added.
	Via string
}

func (t Transport) timeout() time.Duration {
	if t.Timeout > 0 {
		return t.Timeout
	}
	return DefaultTimeout
}

func (t Transport) label(e Endpoint) string {
	if t.Via == "" {
		return e.String()
	}
	return e.String() + " via " + t.Via
}

func (t Transport) tlsConfig(serverName string) *tls.Config {
	c := &tls.Config{}
	if t.TLSConfig != nil {
		c = t.TLSConfig.Clone()
	}
	c.ServerName = serverName
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// Exchanger returns the resolver e reached through t. Build it once per configuration and
// keep it: each one is its own cache partition (and, for DoH, its own connection pool).
func (e Endpoint) Exchanger(t Transport) (Exchanger, error) {
	if t.Dial == nil {
		return nil, fmt.Errorf("dns server %s: no dialer", e)
	}
	switch e.Proto {
	case ProtoDNS, ProtoUDP, ProtoTCP:
		if e.Proto == ProtoUDP && t.NoUDP {
			return nil, fmt.Errorf("dns server %s: the way out carries no UDP; use tcp:// or a plain address", e)
		}
		return &plainExchanger{e: e, t: t, label: t.label(e)}, nil
	case ProtoTLS:
		return &tlsExchanger{e: e, t: t, label: t.label(e), cfg: t.tlsConfig(e.ServerName)}, nil
	case ProtoHTTPS:
		return newHTTPSExchanger(e, t), nil
	}
	return nil, fmt.Errorf("dns server %s: unknown protocol", e)
}

// checkAnswer returns an error wrapping ErrGarbage when r does not answer q.
func checkAnswer(q, r *mdns.Msg) error {
	if !r.Response {
		return fmt.Errorf("%w: not a response", ErrGarbage)
	}
	if r.Id != q.Id {
		return fmt.Errorf("%w: ID %d, want %d", ErrGarbage, r.Id, q.Id)
	}
	if len(r.Question) == 0 && r.Rcode != mdns.RcodeSuccess && r.Rcode != mdns.RcodeNameError {
		return nil // an error answer may carry no question (FORMERR, REFUSED, NOTIMP)
	}
	if len(r.Question) != 1 || len(q.Question) != 1 {
		return fmt.Errorf("%w: %d questions", ErrGarbage, len(r.Question))
	}
	a, b := r.Question[0], q.Question[0]
	if a.Qtype != b.Qtype || a.Qclass != b.Qclass || !strings.EqualFold(a.Name, b.Name) {
		return fmt.Errorf("%w: answers %s %s, asked %s %s", ErrGarbage, a.Name, mdns.TypeToString[a.Qtype], b.Name, mdns.TypeToString[b.Qtype])
	}
	return nil
}

// unpackAnswer parses b as the answer to q.
func unpackAnswer(q *mdns.Msg, b []byte) (*mdns.Msg, error) {
	r := new(mdns.Msg)
	if err := r.Unpack(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrGarbage, err)
	}
	return r, checkAnswer(q, r)
}

// exchangeStream asks q over a stream (TCP or TLS) connection, in DNS's two-byte framing.
func exchangeStream(ctx context.Context, c net.Conn, q *mdns.Msg) (*mdns.Msg, error) {
	var r *mdns.Msg
	err := netctx.Do(ctx, c, func() error {
		co := &mdns.Conn{Conn: c}
		if err := co.WriteMsg(q); err != nil {
			return err
		}
		b, err := co.ReadMsgHeader(nil)
		if err != nil {
			if errors.Is(err, mdns.ErrShortRead) {
				return fmt.Errorf("%w: %v", ErrGarbage, err)
			}
			return err
		}
		r, err = unpackAnswer(q, b)
		return err
	})
	return r, err
}

// exchangeDatagram asks q over a connected datagram socket.
func exchangeDatagram(ctx context.Context, c net.Conn, q *mdns.Msg) (*mdns.Msg, error) {
	out, err := q.Pack()
	if err != nil {
		return nil, err
	}
	var r *mdns.Msg
	err = netctx.Do(ctx, c, func() error {
		if _, err := c.Write(out); err != nil {
			return err
		}
		buf := make([]byte, mdns.MaxMsgSize)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		r, err = unpackAnswer(q, buf[:n])
		return err
	})
	return r, err
}

// aLongTimeAgo unblocks a read when its context ends.
var aLongTimeAgo = time.Unix(1, 0)

// exchangePacket asks q to `to` over pc, a socket whose WriteTo carries the destination (a
// SOCKS5 UDP association). Datagrams from other sources are ignored.
func exchangePacket(ctx context.Context, pc net.PacketConn, to *net.UDPAddr, q *mdns.Msg) (*mdns.Msg, error) {
	out, err := q.Pack()
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		pc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { pc.SetDeadline(aLongTimeAgo) })
	defer stop()
	if _, err := pc.WriteTo(out, to); err != nil {
		return nil, ctxErr(ctx, err)
	}
	buf := make([]byte, mdns.MaxMsgSize)
	want := to.AddrPort()
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		if ua, ok := from.(*net.UDPAddr); ok {
			ap := ua.AddrPort()
			if ap.Addr().Unmap() != want.Addr().Unmap() || ap.Port() != want.Port() {
				continue
			}
		}
		return unpackAnswer(q, buf[:n])
	}
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// plainExchanger speaks plain DNS over UDP (with TCP on truncation), a UDP association or TCP.
type plainExchanger struct {
	e     Endpoint
	t     Transport
	label string
}

func (x *plainExchanger) String() string { return x.label }

func (x *plainExchanger) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, x.t.timeout())
	defer cancel()
	if x.e.Proto == ProtoTCP || (x.e.Proto == ProtoDNS && x.t.NoUDP) {
		return x.tcp(ctx, q)
	}
	var r *mdns.Msg
	var err error
	if x.t.ListenPacket != nil {
		r, err = x.packet(ctx, q)
	} else {
		r, err = x.udp(ctx, q)
	}
	if err == nil && r.Truncated {
		return x.tcp(ctx, q)
	}
	return r, err
}

func (x *plainExchanger) tcp(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	c, err := x.t.Dial(ctx, "tcp", x.e.target())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return exchangeStream(ctx, c, q)
}

func (x *plainExchanger) udp(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	c, err := x.t.Dial(ctx, "udp", x.e.target())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return exchangeDatagram(ctx, c, q)
}

func (x *plainExchanger) packet(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	pc, err := x.t.ListenPacket(ctx)
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	return exchangePacket(ctx, pc, net.UDPAddrFromAddrPort(x.e.Addr), q)
}

// tlsExchanger speaks DNS over TLS, one connection per query.
type tlsExchanger struct {
	e     Endpoint
	t     Transport
	label string
	cfg   *tls.Config
}

func (x *tlsExchanger) String() string { return x.label }

func (x *tlsExchanger) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, x.t.timeout())
	defer cancel()
	c, err := x.t.Dial(ctx, "tcp", x.e.target())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tc := tls.Client(c, x.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake with %s: %w", x.e.target(), err)
	}
	return exchangeStream(ctx, tc, q)
}

// httpsExchanger speaks DNS over HTTPS (RFC 8484, POST), over a pool of connections made by
// the Transport's dialer.
type httpsExchanger struct {
	e      Endpoint
	t      Transport
	label  string
	client *http.Client
}

// maxDoHBody bounds a DoH answer: a DNS message is at most 65535 bytes.
const maxDoHBody = mdns.MaxMsgSize

func newHTTPSExchanger(e Endpoint, t Transport) *httpsExchanger {
	dial := t.Dial
	pinned := ""
	if e.Addr.IsValid() {
		pinned = e.Addr.String()
	}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if pinned != "" {
				addr = pinned // the host is never looked up
			}
			return dial(ctx, "tcp", addr)
		},
		TLSClientConfig:     t.tlsConfig(e.ServerName),
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     60 * time.Second,
		TLSHandshakeTimeout: t.timeout(),
	}
	return &httpsExchanger{e: e, t: t, label: t.label(e), client: &http.Client{Transport: tr}}
}

func (x *httpsExchanger) String() string { return x.label }

func (x *httpsExchanger) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, x.t.timeout())
	defer cancel()
	// RFC 8484 §4.1: ID 0 makes answers cacheable by HTTP caches; ours is restored after.
	q0 := q.Copy()
	q0.Id = 0
	body, err := q0.Pack()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, x.e.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/dns-message")
	req.Header.Set("Accept", "application/dns-message")
	resp, err := x.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("doh %s: HTTP %s", x.e.URL, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/dns-message") {
		return nil, fmt.Errorf("%w: doh content type %q", ErrGarbage, ct)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDoHBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDoHBody {
		return nil, fmt.Errorf("%w: doh answer over %d bytes", ErrGarbage, maxDoHBody)
	}
	r, err := unpackAnswer(q0, b)
	if r != nil {
		r.Id = q.Id
	}
	return r, err
}

// Close closes the exchanger's idle connections; call it when dropping it on reload.
func (x *httpsExchanger) Close() error { x.client.CloseIdleConnections(); return nil }

// sequence asks its exchangers in order until one answers.
type sequence struct {
	list  []Exchanger
	label string
}

// NewSequence returns an Exchanger that asks each of list in order and returns the first
// answer that is neither an error nor SERVFAIL/REFUSED; when all fail, the last answer or
// error. A list of one is that Exchanger itself.
func NewSequence(list ...Exchanger) Exchanger {
	if len(list) == 1 {
		return list[0]
	}
	names := make([]string, len(list))
	for i, x := range list {
		names[i] = x.String()
	}
	return &sequence{list: append([]Exchanger(nil), list...), label: strings.Join(names, ", ")}
}

func (s *sequence) String() string { return s.label }

func (s *sequence) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	var r *mdns.Msg
	err := errors.New("no dns servers")
	for _, x := range s.list {
		if ctx.Err() != nil {
			break
		}
		r, err = x.Exchange(ctx, q)
		if err == nil && r.Rcode != mdns.RcodeServerFailure && r.Rcode != mdns.RcodeRefused {
			return r, nil
		}
	}
	return r, err
}
