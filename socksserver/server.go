// Package socksserver is socksgate's explicit SOCKS port: SOCKS4 and SOCKS4a CONNECT, SOCKS5
// CONNECT and UDP ASSOCIATE (RFC 1928) with no authentication or username/password (RFC 1929),
// for IPv4, IPv6 and domain destinations. It parses the client's side of the protocol with the
// shared codec in package socks and hands every destination to a Tunneler (the gateway), which
// routes, dials, relays and logs; a name the client sent stays a name, so the router can match
// it and a SOCKS5 or SOCKS4a upstream resolves it.
//
// The package never logs: handshake failures and refused clients are reported through
// Server.ErrorLog, and flows are logged by the Tunneler.
package socksserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/socksgate/socksgate/internal/prefixconn"
	"github.com/socksgate/socksgate/socks"
	"github.com/socksgate/socksgate/socksclient"
)

// DefaultHandshakeTimeout bounds a client's handshake when Server.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// Target is a destination a client asked for: an address, or a name with a port.
type Target struct {
	Src  netip.AddrPort // the client
	Host string         // destination name, when the client sent one (SOCKS4a, SOCKS5 domain)
	Addr netip.AddrPort // destination address, when the client sent one (unmapped)
	Port uint16         // destination port, in both cases
	User string         // the SOCKS5 username the client authenticated with; "" for none
}

// String is "host:port".
func (t Target) String() string {
	if t.Host != "" {
		return net.JoinHostPort(t.Host, fmt.Sprint(t.Port))
	}
	return t.Addr.String()
}

// ErrNotAllowed is what a Tunneler wraps for a destination a rule refuses: the client gets
// SOCKS5 reply 0x02 ("connection not allowed by ruleset") or SOCKS4 0x5B.
var ErrNotAllowed = errors.New("not allowed by ruleset")

// Tunneler routes and carries what clients ask for. The gateway implements it.
type Tunneler interface {
	// Tunnel takes over client for a CONNECT: it routes and dials t, calls reply exactly once
	// with the outcome (nil or the dial error; the server writes its protocol's answer
	// there), relays both ways, and closes client.
	Tunnel(ctx context.Context, client net.Conn, t Target, reply func(error) error)
	// OpenUDP starts the routing side of one UDP association of client src. Replies from
	// any remote are handed to deliver with their real source; deliver may be called from
	// several goroutines at once and must not keep payload.
	OpenUDP(ctx context.Context, src netip.AddrPort, deliver func(payload []byte, from socks.Addr)) (UDPSession, error)
}

// UDPSession is the gateway's side of one UDP association.
type UDPSession interface {
	// Send routes one datagram to dst and sends it. An error means the datagram was dropped
	// (blocked, no route, upstream failure); the association goes on.
	Send(ctx context.Context, payload []byte, dst Target) error
	// Close ends the session and every upstream path it opened.
	Close() error
}

// A UDPSession that can be ended from the gateway's side (through an admin API) also has
// Context, derived from OpenUDP's ctx and done when the session has ended: the server then
// closes the control connection, so that the client sees the association end, and the relay
// socket.
type endingUDPSession interface {
	Context() context.Context
}

// Server serves SOCKS clients. Set its fields before the first ServeConn; it is safe for
// concurrent use.
type Server struct {
	// Tunneler carries the flows; required.
	Tunneler Tunneler
	// Authenticate, when set, makes SOCKS5 clients authenticate with username/password
	// (RFC 1929) and refuses SOCKS4/4a (which carries no password) with 0x5B. It must
	// compare in constant time.
	Authenticate func(user, pass string) bool
	// Allow is the source ACL; nil allows everyone. A refused client gets SOCKS5 reply 0x02
	// or SOCKS4 0x5B.
	Allow func(netip.Addr) bool
	// HandshakeTimeout bounds the handshake, from accept to the request; default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// ListenUDP opens a UDP ASSOCIATE relay socket ("udp4"/"udp6", "ip:0"); nil means
	// net.ListenPacket.
	ListenUDP func(network, address string) (net.PacketConn, error)
	// ErrorLog receives handshake failures and refusals, one call per client; nil discards.
	ErrorLog func(src netip.AddrPort, err error)
	// Counters, when set, is where the server counts the UDP datagrams it drops, so that a
	// caller replacing its Server (a reload) can hand the next one the same counters and
	// the counts go on; nil means counters of the server's own. Stats reads them either way.
	Counters *UDPCounters

	own UDPCounters
}

// UDPCounters count the UDP datagrams of SOCKS5 associations that a Server drops. The zero
// value is ready to use; it is safe for concurrent use.
type UDPCounters struct {
	frag, foreign, malformed, dropped atomic.Uint64
}

// Load returns the counts.
func (c *UDPCounters) Load() Stats {
	return Stats{
		Fragmented: c.frag.Load(), Foreign: c.foreign.Load(),
		Malformed: c.malformed.Load(), Dropped: c.dropped.Load(),
	}
}

// Stats are the counts of dropped UDP datagrams.
type Stats struct {
	Fragmented uint64 // FRAG != 0 (reassembly is not supported)
	Foreign    uint64 // from another source than the association's client socket
	Malformed  uint64 // unparsable SOCKS5 UDP header
	Dropped    uint64 // refused by the Tunneler (blocked, unroutable, upstream failure), or undeliverable
}

// Stats returns the counters: those of Counters when it is set.
func (s *Server) Stats() Stats { return s.counters().Load() }

func (s *Server) counters() *UDPCounters {
	if s.Counters != nil {
		return s.Counters
	}
	return &s.own
}

// Error kinds reported to ErrorLog. A client that does not authenticate is reported as an
// *AuthError, which matches ErrAuthFailed.
var (
	ErrRefusedSource   = errors.New("source not allowed by listen.allow")
	ErrAuthFailed      = errors.New("authentication failed")
	ErrSOCKS4WithUsers = errors.New("SOCKS4 refused: authentication is required and SOCKS4 carries no password")
)

// AuthError is a SOCKS5 client that did not authenticate: it offered no method the server
// takes, or its username and password were refused. It matches ErrAuthFailed (errors.Is), so
// that a caller logs it as it logs any failed authentication, and it never holds a password.
type AuthError struct {
	Want    socks.Method   // the method the server asks for
	Offered []socks.Method // the methods the client offered, when none was Want
	User    string         // the username sent, when username/password was refused
}

func (e *AuthError) Error() string {
	if e.Offered != nil {
		names := make([]string, len(e.Offered))
		for i, m := range e.Offered {
			names[i] = m.String()
		}
		return fmt.Sprintf("%v: client offers no acceptable method (offered: %s; want %v)",
			ErrAuthFailed, strings.Join(names, ", "), e.Want)
	}
	return fmt.Sprintf("%v: wrong username or password for user %q", ErrAuthFailed, e.User)
}

// Unwrap returns ErrAuthFailed.
func (e *AuthError) Unwrap() error { return ErrAuthFailed }

func (s *Server) report(src netip.AddrPort, err error) {
	if s.ErrorLog != nil {
		s.ErrorLog(src, err)
	}
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// ServeConn serves one client connection and closes it. It returns when the client's flow
// has ended.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	src := addrPortOf(c.RemoteAddr())
	c.SetDeadline(time.Now().Add(s.handshakeTimeout()))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(c, 512)
	handoff, err := s.handshake(ctx, c, br, src)
	stop()
	if err != nil {
		c.Close()
		s.report(src, err)
		return
	}
	if handoff != nil {
		handoff()
	}
}

// handshake reads the client's request and returns what carries the flow on; the flow itself
// runs without the handshake deadline.
func (s *Server) handshake(ctx context.Context, c net.Conn, br *bufio.Reader, src netip.AddrPort) (func(), error) {
	allowed := s.Allow == nil || s.Allow(src.Addr())
	v, err := br.Peek(1)
	if err != nil {
		return nil, fmt.Errorf("read version: %w", err)
	}
	switch v[0] {
	case socks.Version4:
		return s.handshake4(ctx, c, br, src, allowed)
	case socks.Version5:
		return s.handshake5(ctx, c, br, src, allowed)
	}
	return nil, fmt.Errorf("not a SOCKS client: first byte 0x%02x", v[0])
}

func (s *Server) handshake4(ctx context.Context, c net.Conn, br *bufio.Reader, src netip.AddrPort, allowed bool) (func(), error) {
	reject := func(err error) (func(), error) {
		c.Write(socks.AppendReply4(nil, socks.Reply4{Code: socks.Reply4Rejected}))
		return nil, err
	}
	req, err := socks.ReadRequest4(br)
	if err != nil {
		if malformed(err) {
			return reject(err)
		}
		return nil, err
	}
	switch {
	case !allowed:
		return reject(ErrRefusedSource)
	case s.Authenticate != nil:
		return reject(ErrSOCKS4WithUsers)
	case req.Cmd != socks.CmdConnect:
		return reject(fmt.Errorf("socks4 %v: not supported", req.Cmd))
	}
	t := Target{Src: src, Port: req.Port}
	if req.Name != "" {
		t = targetFromName(src, req.Name, req.Port)
	} else {
		t.Addr = netip.AddrPortFrom(req.IP, req.Port)
	}
	if err := t.check(); err != nil {
		return reject(err)
	}
	return s.connect(ctx, c, br, t, func(err error) error {
		code := socks.Reply4Granted
		if err != nil {
			code = socks.Reply4Rejected
		}
		_, werr := c.Write(socks.AppendReply4(nil, socks.Reply4{Code: code}))
		return werr
	}), nil
}

func (s *Server) handshake5(ctx context.Context, c net.Conn, br *bufio.Reader, src netip.AddrPort, allowed bool) (func(), error) {
	methods, err := socks.ReadGreeting(br)
	if err != nil {
		if malformed(err) {
			c.Write(socks.AppendMethodSelection(nil, socks.MethodNoAcceptable))
		}
		return nil, err
	}
	want := socks.MethodNoAuth
	if s.Authenticate != nil && allowed {
		want = socks.MethodUserPass
	}
	offered := false
	for _, m := range methods {
		offered = offered || m == want
	}
	if !offered {
		c.Write(socks.AppendMethodSelection(nil, socks.MethodNoAcceptable))
		if !allowed {
			return nil, ErrRefusedSource
		}
		return nil, &AuthError{Want: want, Offered: methods}
	}
	if _, err := c.Write(socks.AppendMethodSelection(nil, want)); err != nil {
		return nil, fmt.Errorf("write method selection: %w", err)
	}
	var user string // authenticated
	if want == socks.MethodUserPass {
		name, pass, err := socks.ReadUserPassRequest(br)
		if err != nil {
			if malformed(err) {
				c.Write(socks.AppendUserPassReply(nil, socks.UserPassFailure))
			}
			return nil, err
		}
		if !s.Authenticate(name, pass) {
			c.Write(socks.AppendUserPassReply(nil, socks.UserPassFailure))
			return nil, &AuthError{Want: want, User: name}
		}
		user = name
		if _, err := c.Write(socks.AppendUserPassReply(nil, socks.UserPassSuccess)); err != nil {
			return nil, fmt.Errorf("write auth reply: %w", err)
		}
	}
	req, err := socks.ReadRequest(br)
	if err != nil {
		switch {
		case errors.Is(err, socks.ErrBadAddrType):
			writeReply5(c, socks.ReplyAddrTypeNotSupported, socks.Addr{})
		case malformed(err):
			writeReply5(c, socks.ReplyGeneralFailure, socks.Addr{})
		}
		return nil, err
	}
	if !allowed {
		writeReply5(c, socks.ReplyNotAllowed, socks.Addr{})
		return nil, ErrRefusedSource
	}
	var t Target
	if req.Addr.IsName() {
		t = targetFromName(src, req.Addr.Name, req.Addr.Port)
	} else {
		ap, _ := req.Addr.AddrPort()
		t = Target{Src: src, Addr: ap, Port: ap.Port()}
	}
	t.User = user
	switch req.Cmd {
	case socks.CmdConnect:
		if err := t.check(); err != nil {
			writeReply5(c, socks.ReplyNotAllowed, socks.Addr{})
			return nil, err
		}
		bound := socks.AddrFromAddrPort(addrPortOf(c.LocalAddr()))
		return s.connect(ctx, c, br, t, func(err error) error {
			if err != nil {
				return writeReply5(c, ReplyCode(err), socks.Addr{})
			}
			return writeReply5(c, socks.ReplySucceeded, bound)
		}), nil
	case socks.CmdUDPAssociate:
		return s.associate(ctx, c, br, src, t)
	}
	writeReply5(c, socks.ReplyCommandNotSupported, socks.Addr{})
	return nil, fmt.Errorf("socks5 %v: not supported", req.Cmd)
}

// malformed reports whether a handshake read failed on what the client sent (a bad version, an
// oversize or empty field) rather than on the connection itself (EOF, reset, the handshake
// deadline): such a client still gets the protocol's failure reply before the close.
func malformed(err error) bool {
	var ne net.Error
	return !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &ne)
}

// ErrBadDestination is a destination that names no remote host; see Target.check.
var ErrBadDestination = errors.New("destination names no remote host")

// check refuses a destination that names no remote host: port 0, the unspecified address (a
// dial to it reaches this host), or an IP literal with a zone sent as a name. SOCKS cannot
// carry a zone, and as a name such a literal would escape every rule's address matcher while
// the dialer still connects to the address ("::ffff:10.0.0.1%x" dials 10.0.0.1).
func (t Target) check() error {
	switch {
	case t.Port == 0:
		return fmt.Errorf("%w: %s: port 0", ErrBadDestination, t)
	case t.Host == "" && t.Addr.Addr().IsUnspecified():
		return fmt.Errorf("%w: %s: the unspecified address", ErrBadDestination, t)
	case t.Host != "":
		if _, err := netip.ParseAddr(t.Host); err == nil { // zoned: targetFromName took the rest
			return fmt.Errorf("%w: %q: an IP address with a zone", ErrBadDestination, t.Host)
		}
	}
	return nil
}

// targetFromName keeps an IP literal sent as a name as an address.
func targetFromName(src netip.AddrPort, name string, port uint16) Target {
	if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
		return Target{Src: src, Addr: netip.AddrPortFrom(ip.Unmap(), port), Port: port}
	}
	return Target{Src: src, Host: name, Port: port}
}

func writeReply5(c net.Conn, code socks.ReplyCode, bound socks.Addr) error {
	b, err := socks.AppendReply(nil, socks.Reply{Code: code, Addr: bound})
	if err != nil {
		b, _ = socks.AppendReply(nil, socks.Reply{Code: code})
	}
	_, err = c.Write(b)
	return err
}

// connect returns the hand-off of a CONNECT to the Tunneler. Bytes the client sent after its
// request (optimistic data) travel in front of the connection.
func (s *Server) connect(ctx context.Context, c net.Conn, br *bufio.Reader, t Target, reply func(error) error) func() {
	return func() {
		c.SetDeadline(time.Time{})
		client := c
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			client = prefixconn.New(c, append([]byte(nil), b...))
		}
		replied := false
		s.Tunneler.Tunnel(ctx, client, t, func(err error) error {
			if replied {
				return nil
			}
			replied = true
			return reply(err)
		})
	}
}

// ReplyCode is the SOCKS5 reply for a Tunneler's dial error:
//
//	nil                                     0x00 succeeded
//	ErrNotAllowed                           0x02 connection not allowed by ruleset
//	a SOCKS5 upstream's refusal             the upstream's own code
//	timeout (dial or handshake)             0x04 host unreachable
//	EHOSTUNREACH, a name that did not resolve 0x04 host unreachable
//	ENETUNREACH                             0x03 network unreachable
//	ECONNREFUSED                            0x05 connection refused
//	anything else                           0x01 general failure
//
// A timeout is answered "host unreachable" rather than 0x06 "TTL expired": the destination
// did not answer in time, which is what clients (curl: "Host unreachable") show their users;
// TTL expired names a routing loop, which it is not.
func ReplyCode(err error) socks.ReplyCode {
	var re *socksclient.ReplyError
	var dnsErr *net.DNSError
	var ne net.Error
	switch {
	case err == nil:
		return socks.ReplySucceeded
	case errors.Is(err, ErrNotAllowed):
		return socks.ReplyNotAllowed
	case errors.As(err, &re) && re.Version == socksclient.SOCKS5 && re.Code > 0 && re.Code <= socks.ReplyAddrTypeNotSupported:
		return re.Code
	case errors.Is(err, syscall.ECONNREFUSED):
		return socks.ReplyConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return socks.ReplyNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.As(err, &dnsErr):
		return socks.ReplyHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return socks.ReplyHostUnreachable
	}
	return socks.ReplyGeneralFailure
}

// addrPortOf returns the unmapped address of a TCP or UDP net.Addr.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
