// Package socksclient dials through SOCKS proxies: SOCKS5 CONNECT (RFC 1928) with no
// authentication or username/password (RFC 1929), SOCKS4 and SOCKS4a CONNECT, and SOCKS5 UDP
// ASSOCIATE as a net.PacketConn. A Dialer reaches its proxy through a dial function of the hop
// below (ProxyDial), so proxies chain by composition, and the caller decides how sockets are
// made (the gateway marks them with SO_MARK). The wire format lives in package socks.
//
// By default the handshake never pipelines: each message waits for the server's answer to the
// one before. Some servers (microsocks) hang when the RFC 1929 sub-negotiation arrives with the
// greeting, and some mishandle a request sent before their method choice; the round trip it
// costs is paid once per connection. Dialer.Pipeline sends the greeting and the request together
// when no authentication is offered, for servers known to take it.
package socksclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"

	"github.com/socksgate/socksgate/internal/netctx"
	"github.com/socksgate/socksgate/internal/rawio"
	"github.com/socksgate/socksgate/socks"
)

// Version selects the protocol a Dialer speaks. The zero value is SOCKS5.
type Version int

// Protocol versions.
const (
	SOCKS5  Version = iota // RFC 1928; names travel to the proxy (remote resolution)
	SOCKS4                 // IPv4 destinations only
	SOCKS4A                // SOCKS4 plus names; IPv4 literals go as plain SOCKS4
)

// String returns the URL scheme of the version: "socks5", "socks4" or "socks4a".
func (v Version) String() string {
	switch v {
	case SOCKS5:
		return "socks5"
	case SOCKS4:
		return "socks4"
	case SOCKS4A:
		return "socks4a"
	}
	return "socks(" + strconv.Itoa(int(v)) + ")"
}

// Errors a dial can wrap. Test with errors.Is; reply codes come as *ReplyError (errors.As).
var (
	// ErrAuthFailed: the SOCKS5 server rejected the username and password (RFC 1929 status
	// not zero).
	ErrAuthFailed = errors.New("socks: authentication failed")
	// ErrNoAcceptableMethods: the SOCKS5 server accepted none of the offered authentication
	// methods (0xFF): it wants credentials and none are configured, or it wants none and
	// only username/password was offered.
	ErrNoAcceptableMethods = errors.New("socks: no acceptable authentication methods")
	// ErrUnsupportedDestination: the destination cannot be expressed in the dialer's
	// version (a name or an IPv6 address over SOCKS4, an IPv6 address over SOCKS4a).
	ErrUnsupportedDestination = errors.New("socks: destination not supported by this protocol version")
	// ErrUDPUnsupported: SOCKS4 and SOCKS4a have no UDP. It wraps errors.ErrUnsupported.
	ErrUDPUnsupported = fmt.Errorf("socks: UDP needs SOCKS5: %w", errors.ErrUnsupported)
	// ErrProtocol: the server sent something the protocol does not allow.
	ErrProtocol = errors.New("socks: protocol violation")
	// ErrPipelinedUnanswered: with Pipeline, the server answered the greeting and then closed
	// or stayed silent until the dial's end instead of answering the request that came with
	// it. A server that does not read ahead behaves so; so does one still connecting to a slow
	// destination when the deadline comes, which is why it is only a hint.
	ErrPipelinedUnanswered = errors.New("socks: no answer to a pipelined request")
)

// ReplyError is a request the proxy answered with a failure code: a SOCKS5 REP (0x01-0x08 and
// beyond) or a SOCKS4 CD (0x5b-0x5d).
type ReplyError struct {
	Version Version
	Code    socks.ReplyCode
}

func (e *ReplyError) Error() string {
	v := "socks5"
	if e.Version != SOCKS5 {
		v = "socks4"
	}
	return fmt.Sprintf("%s reply 0x%02x: %s", v, byte(e.Code), e.Code)
}

// DialFunc opens a connection the way net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ListenFunc opens a packet socket the way net.ListenConfig.ListenPacket does.
type ListenFunc func(ctx context.Context, network, address string) (net.PacketConn, error)

// Dialer connects through one SOCKS proxy. Its fields are read at each dial and must not change
// while dials are in flight; a Dialer is safe for concurrent use.
type Dialer struct {
	// Version is the protocol spoken to the proxy; the zero value is SOCKS5.
	Version Version
	// Address is the proxy's "host:port".
	Address string
	// Username and Password, when Username is set, make a SOCKS5 dialer offer only the
	// username/password method (RFC 1929); otherwise it offers only "no authentication".
	// SOCKS4 and SOCKS4a send Username as the user id and ignore Password. The password
	// appears in no error and no String.
	Username, Password string
	// ProxyDial opens the TCP connection to the proxy; nil means a plain net.Dialer. This is
	// how proxies chain (pass the DialContext of the hop below) and how the gateway makes
	// its sockets carry SO_MARK (a net.Dialer with its Control hook).
	ProxyDial DialFunc
	// ListenUDP opens the local UDP socket of a UDP association (network "udp4" or "udp6",
	// address ":0"); nil means net.ListenConfig{}.ListenPacket. The gateway sets it to a
	// net.ListenConfig with the same SO_MARK Control hook as ProxyDial, so the datagrams to
	// the relay are not captured again.
	ListenUDP ListenFunc
	// Pipeline makes a SOCKS5 dialer without credentials send its greeting and its request in
	// one write, without waiting for the server's method choice: one round trip and one write
	// fewer per dial. Off by default: the RFC has the client wait, and not every server reads
	// ahead (microsocks does not answer a pipelined request). Dante 1.4 takes it;
	// ProbePipelining tells. It has no effect with a Username (the credentials always wait for
	// the method choice) or on SOCKS4.
	Pipeline bool
}

// FromURL returns a Dialer for a proxy URL: socks5://, socks5h:// (the same: names always travel
// to a SOCKS5 proxy), socks4:// or socks4a://, with optional user info. The port defaults to
// 1080. ProxyDial and ListenUDP are left nil for the caller to set.
func FromURL(u *url.URL) (*Dialer, error) {
	d := &Dialer{}
	switch u.Scheme {
	case "socks5", "socks5h":
		d.Version = SOCKS5
	case "socks4":
		d.Version = SOCKS4
	case "socks4a":
		d.Version = SOCKS4A
	default:
		return nil, fmt.Errorf("socks proxy URL: unsupported scheme %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("socks proxy URL: no host")
	}
	port := u.Port()
	if port == "" {
		port = "1080"
	}
	d.Address = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		d.Username = u.User.Username()
		d.Password, _ = u.User.Password()
	}
	return d, nil
}

// String returns the proxy as a URL without the password, e.g. "socks5://user@10.0.0.2:1080".
func (d *Dialer) String() string {
	u := url.URL{Scheme: d.Version.String(), Host: d.Address}
	if d.Username != "" {
		u.User = url.User(d.Username)
	}
	return u.String()
}

// DialContext connects to address ("host:port") through the proxy. The host may be a name,
// sent to the proxy to resolve (SOCKS5, SOCKS4a), or an IPv4 or IPv6 literal. network must be
// "tcp", "tcp4" or "tcp6"; it is not checked against the address family.
//
// ctx bounds the whole dial and handshake: its deadline applies, and cancelling it aborts a
// handshake in progress. The returned connection is the one ProxyDial returned (a *net.TCPConn
// for the default dialer, so relays can splice), with no deadline set.
//
// Errors are *net.OpError{Op: "socks connect", Net: network, Source: the proxy, Addr: the
// destination}; Err wraps a *ReplyError for a refusal, ErrAuthFailed,
// ErrNoAcceptableMethods, ErrUnsupportedDestination, ErrProtocol, or the context's error.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	opErr := func(dst net.Addr, err error) error {
		return &net.OpError{Op: "socks connect", Net: network, Source: d.proxyAddr(), Addr: dst, Err: err}
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, opErr(nil, fmt.Errorf("network %q not supported", network))
	}
	dst, err := socks.ParseAddr(address)
	if err != nil {
		return nil, opErr(nil, fmt.Errorf("destination: %w", err))
	}
	if err := d.checkDestination(dst); err != nil {
		return nil, opErr(dst, err)
	}
	c, err := d.dialProxy(ctx)
	if err != nil {
		return nil, opErr(dst, err)
	}
	var herr error // the exchange's own error, which netctx.Do replaces when ctx ended
	err = netctx.Do(ctx, c, func() error {
		// Raw reads and writes (package rawio): the handshake's calls wake no sysmon.
		rw := io.ReadWriter(c)
		if x := rawio.Get(c); x != nil {
			rw = x
			defer x.Put()
		}
		if d.Version == SOCKS5 {
			_, herr = d.handshake5(rw, socks.CmdConnect, dst)
			return herr
		}
		return d.handshake4(rw, dst)
	})
	if err != nil {
		c.Close()
		if errors.Is(herr, ErrPipelinedUnanswered) && !errors.Is(err, ErrPipelinedUnanswered) {
			err = fmt.Errorf("%w: %w", ErrPipelinedUnanswered, err)
		}
		return nil, opErr(dst, err)
	}
	return c, nil
}

// checkDestination refuses what the version cannot carry, before any byte is sent.
func (d *Dialer) checkDestination(dst socks.Addr) error {
	switch d.Version {
	case SOCKS5:
		return nil
	case SOCKS4, SOCKS4A:
		if dst.IsName() {
			if d.Version == SOCKS4 {
				return fmt.Errorf("%w: socks4 cannot send the name %q (use socks4a or socks5)", ErrUnsupportedDestination, dst.Name)
			}
			return nil
		}
		if !dst.IP.Unmap().Is4() {
			return fmt.Errorf("%w: %s cannot reach the IPv6 address %v (use socks5)", ErrUnsupportedDestination, d.Version, dst.IP)
		}
		return nil
	}
	return fmt.Errorf("unknown socks version %d", int(d.Version))
}

func (d *Dialer) dialProxy(ctx context.Context) (net.Conn, error) {
	dial := d.ProxyDial
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	c, err := dial(ctx, "tcp", d.Address)
	if err != nil {
		return nil, fmt.Errorf("dial proxy: %w", err)
	}
	return c, nil
}

// proxyAddr is the proxy as a net.Addr for errors.
func (d *Dialer) proxyAddr() net.Addr {
	if a, err := socks.ParseAddr(d.Address); err == nil {
		return a
	}
	return rawAddr(d.Address)
}

type rawAddr string

func (a rawAddr) Network() string { return "tcp" }
func (a rawAddr) String() string  { return string(a) }

// msgLen is the longest message a handshake writes: a SOCKS4a request (8 + 256 + 256); an RFC
// 1929 request (3 + 255 + 255) and a pipelined SOCKS5 greeting and request (3 + 3 +
// socks.MaxAddrLen) are shorter.
const msgLen = 8 + 256 + 256

// msgPool holds the handshakes' write buffers: a buffer handed to net.Conn.Write escapes to the
// heap, and a handshake runs once per new flow.
var msgPool = sync.Pool{New: func() any { return new([msgLen]byte) }}

// handshake5 authenticates and sends one request, returning the reply's bound address.
func (d *Dialer) handshake5(c io.ReadWriter, cmd socks.Command, dst socks.Addr) (socks.Addr, error) {
	mb := msgPool.Get().(*[msgLen]byte)
	defer msgPool.Put(mb)
	buf := mb[:0] // greeting, request or credentials
	method := socks.MethodNoAuth
	if d.Username != "" {
		method = socks.MethodUserPass
	}
	buf, _ = socks.AppendGreeting(buf, method)
	pipelined := d.Pipeline && method == socks.MethodNoAuth
	if pipelined {
		var err error
		if buf, err = socks.AppendRequest(buf, socks.Request{Cmd: cmd, Addr: dst}); err != nil {
			return socks.Addr{}, err
		}
	}
	if _, err := c.Write(buf); err != nil {
		return socks.Addr{}, fmt.Errorf("write greeting: %w", err)
	}
	chosen, err := socks.ReadMethodSelection(c)
	if err != nil {
		return socks.Addr{}, protoErr(err)
	}
	switch chosen {
	case method:
	case socks.MethodNoAcceptable:
		return socks.Addr{}, fmt.Errorf("%w (offered %s)", ErrNoAcceptableMethods, method)
	default:
		return socks.Addr{}, fmt.Errorf("%w: server chose %s, offered %s", ErrProtocol, chosen, method)
	}
	if method == socks.MethodUserPass {
		buf, err = socks.AppendUserPassRequest(buf[:0], d.Username, d.Password)
		if err != nil {
			return socks.Addr{}, err
		}
		_, err = c.Write(buf)
		clear(buf) // the password
		if err != nil {
			return socks.Addr{}, fmt.Errorf("write credentials: %w", err)
		}
		status, err := socks.ReadUserPassReply(c)
		if err != nil {
			return socks.Addr{}, protoErr(err)
		}
		if status != socks.UserPassSuccess {
			return socks.Addr{}, fmt.Errorf("%w for user %q (status 0x%02x)", ErrAuthFailed, d.Username, status)
		}
	}
	if !pipelined {
		buf, err = socks.AppendRequest(buf[:0], socks.Request{Cmd: cmd, Addr: dst})
		if err != nil {
			return socks.Addr{}, err
		}
		if _, err := c.Write(buf); err != nil {
			return socks.Addr{}, fmt.Errorf("write %s request: %w", cmd, err)
		}
	}
	rep, err := socks.ReadReply(c)
	if err != nil {
		if pipelined && isSilence(err) {
			return socks.Addr{}, fmt.Errorf("%w: %w", ErrPipelinedUnanswered, err)
		}
		return socks.Addr{}, protoErr(err)
	}
	if rep.Code != socks.ReplySucceeded {
		return socks.Addr{}, &ReplyError{Version: SOCKS5, Code: rep.Code}
	}
	return rep.Addr, nil
}

// handshake4 sends one SOCKS4 or SOCKS4a CONNECT and reads its reply.
func (d *Dialer) handshake4(c io.ReadWriter, dst socks.Addr) error {
	req := socks.Request4{Cmd: socks.CmdConnect, Port: dst.Port, UserID: d.Username}
	if dst.IsName() {
		req.Name = dst.Name // checkDestination allowed it: SOCKS4a
	} else {
		req.IP = dst.IP.Unmap()
	}
	mb := msgPool.Get().(*[msgLen]byte)
	defer msgPool.Put(mb)
	buf, err := socks.AppendRequest4(mb[:0], req)
	if err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return fmt.Errorf("write socks4 request: %w", err)
	}
	rep, err := socks.ReadReply4(c)
	if err != nil {
		return protoErr(err)
	}
	if rep.Code != socks.Reply4Granted {
		return &ReplyError{Version: d.Version, Code: rep.Code}
	}
	return nil
}

// protoErr marks a decoding failure as ErrProtocol, keeping I/O errors (timeouts, EOF) intact.
// isSilence reports a read that ended without an answer: end of stream or a deadline.
func isSilence(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || (errors.As(err, &ne) && ne.Timeout())
}

func protoErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, net.ErrClosed) {
		return err
	}
	if errors.Is(err, socks.ErrBadVersion) || errors.Is(err, socks.ErrBadAddrType) || errors.Is(err, socks.ErrBadName) {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return err
}
