package socks

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Command is the CMD field of a SOCKS4 or SOCKS5 request. The values are the same in both.
type Command byte

// Commands.
const (
	CmdConnect      Command = 0x01
	CmdBind         Command = 0x02
	CmdUDPAssociate Command = 0x03 // SOCKS5 only
)

func (c Command) String() string {
	switch c {
	case CmdConnect:
		return "connect"
	case CmdBind:
		return "bind"
	case CmdUDPAssociate:
		return "udp associate"
	}
	return "command 0x" + strconv.FormatUint(uint64(c), 16)
}

// Method is a SOCKS5 authentication method.
type Method byte

// Authentication methods.
const (
	MethodNoAuth       Method = 0x00
	MethodGSSAPI       Method = 0x01
	MethodUserPass     Method = 0x02 // RFC 1929
	MethodNoAcceptable Method = 0xff
)

func (m Method) String() string {
	switch m {
	case MethodNoAuth:
		return "no authentication required"
	case MethodGSSAPI:
		return "GSSAPI"
	case MethodUserPass:
		return "username/password"
	case MethodNoAcceptable:
		return "no acceptable methods"
	}
	return "method 0x" + strconv.FormatUint(uint64(m), 16)
}

// ReplyCode is the REP field of a SOCKS5 reply or the CD field of a SOCKS4 reply. The two ranges
// do not overlap (SOCKS5 0x00-0x08, SOCKS4 0x5a-0x5d), so one type names both.
type ReplyCode byte

// SOCKS5 reply codes (RFC 1928 section 6).
const (
	ReplySucceeded            ReplyCode = 0x00
	ReplyGeneralFailure       ReplyCode = 0x01
	ReplyNotAllowed           ReplyCode = 0x02
	ReplyNetworkUnreachable   ReplyCode = 0x03
	ReplyHostUnreachable      ReplyCode = 0x04
	ReplyConnectionRefused    ReplyCode = 0x05
	ReplyTTLExpired           ReplyCode = 0x06
	ReplyCommandNotSupported  ReplyCode = 0x07
	ReplyAddrTypeNotSupported ReplyCode = 0x08
	Reply4Granted             ReplyCode = 0x5a // SOCKS4: request granted
	Reply4Rejected            ReplyCode = 0x5b // SOCKS4: rejected or failed
	Reply4IdentUnreachable    ReplyCode = 0x5c // SOCKS4: no identd on the client
	Reply4IdentMismatch       ReplyCode = 0x5d // SOCKS4: identd reports another user id
)

var replyNames = map[ReplyCode]string{
	ReplySucceeded:            "succeeded",
	ReplyGeneralFailure:       "general SOCKS server failure",
	ReplyNotAllowed:           "connection not allowed by ruleset",
	ReplyNetworkUnreachable:   "network unreachable",
	ReplyHostUnreachable:      "host unreachable",
	ReplyConnectionRefused:    "connection refused",
	ReplyTTLExpired:           "TTL expired",
	ReplyCommandNotSupported:  "command not supported",
	ReplyAddrTypeNotSupported: "address type not supported",
	Reply4Granted:             "request granted",
	Reply4Rejected:            "request rejected or failed",
	Reply4IdentUnreachable:    "request rejected: identd unreachable",
	Reply4IdentMismatch:       "request rejected: user id mismatch",
}

func (c ReplyCode) String() string {
	if s, ok := replyNames[c]; ok {
		return s
	}
	return "unknown reply code 0x" + strconv.FormatUint(uint64(c), 16)
}

// AppendGreeting appends a SOCKS5 client greeting offering methods (VER, NMETHODS, METHODS).
func AppendGreeting(b []byte, methods ...Method) ([]byte, error) {
	if len(methods) == 0 || len(methods) > 255 {
		return b, fmt.Errorf("encode greeting: %d methods, want 1 to 255", len(methods))
	}
	b = append(b, Version5, byte(len(methods)))
	for _, m := range methods {
		b = append(b, byte(m))
	}
	return b, nil
}

// ReadGreeting reads a SOCKS5 client greeting, version byte included, and returns the methods
// offered (at most 255).
func ReadGreeting(r io.Reader) ([]Method, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", eofUnexpected(err))
	}
	if buf[0] != Version5 {
		return nil, fmt.Errorf("read greeting: %w 0x%02x", ErrBadVersion, buf[0])
	}
	n := int(buf[1])
	if n == 0 {
		return nil, errors.New("read greeting: no methods offered")
	}
	if _, err := io.ReadFull(r, buf[2:2+n]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", eofUnexpected(err))
	}
	methods := make([]Method, n)
	for i := range methods {
		methods[i] = Method(buf[2+i])
	}
	return methods, nil
}

// AppendMethodSelection appends the server's method choice (VER, METHOD).
func AppendMethodSelection(b []byte, m Method) []byte {
	return append(b, Version5, byte(m))
}

// ReadMethodSelection reads the server's method choice.
func ReadMethodSelection(r io.Reader) (Method, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return 0, fmt.Errorf("read method selection: %w", eofUnexpected(err))
	}
	if buf[0] != Version5 {
		return 0, fmt.Errorf("read method selection: %w 0x%02x", ErrBadVersion, buf[0])
	}
	return Method(buf[1]), nil
}

// Request is a SOCKS5 request: VER, CMD, RSV, then the destination address.
type Request struct {
	Cmd  Command
	Addr Addr
}

// AppendRequest appends the encoding of req.
func AppendRequest(b []byte, req Request) ([]byte, error) {
	b = append(b, Version5, byte(req.Cmd), 0)
	return req.Addr.AppendBinary(b)
}

// ReadRequest reads a SOCKS5 request, version byte included. The command is returned as sent;
// the server decides which it supports.
func ReadRequest(r io.Reader) (Request, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:5]); err != nil {
		return Request{}, fmt.Errorf("read request: %w", eofUnexpected(err))
	}
	if buf[0] != Version5 {
		return Request{}, fmt.Errorf("read request: %w 0x%02x", ErrBadVersion, buf[0])
	}
	cmd := Command(buf[1])
	a, err := readAddrRest(r, buf[:], AddrType(buf[3]), buf[4]) // reuses buf
	if err != nil {
		return Request{}, fmt.Errorf("read request: %w", err)
	}
	return Request{Cmd: cmd, Addr: a}, nil
}

// Reply is a SOCKS5 reply: VER, REP, RSV, then the bound address.
type Reply struct {
	Code ReplyCode
	Addr Addr // BND.ADDR and BND.PORT; zero when Code is not ReplySucceeded
}

// AppendReply appends the encoding of rep. A zero Addr is sent as 0.0.0.0:0.
func AppendReply(b []byte, rep Reply) ([]byte, error) {
	b = append(b, Version5, byte(rep.Code), 0)
	a := rep.Addr
	if !a.IP.IsValid() && a.Name == "" {
		return append(b, byte(AddrTypeIPv4), 0, 0, 0, 0, 0, 0), nil
	}
	return a.AppendBinary(b)
}

// ReadReply reads a SOCKS5 reply. A reply whose code is not ReplySucceeded is returned without
// error as soon as its code is known, with a zero Addr: servers differ in what address (if any)
// follows a failure, and the connection is of no further use. A reply's version must be 5.
func ReadReply(r io.Reader) (Reply, error) {
	buf := getScratch()
	defer putScratch(buf)
	n, err := io.ReadFull(r, buf[:5])
	if n >= 2 && buf[0] == Version5 && ReplyCode(buf[1]) != ReplySucceeded {
		return Reply{Code: ReplyCode(buf[1])}, nil
	}
	if err != nil {
		return Reply{}, fmt.Errorf("read reply: %w", eofUnexpected(err))
	}
	if buf[0] != Version5 {
		return Reply{}, fmt.Errorf("read reply: %w 0x%02x", ErrBadVersion, buf[0])
	}
	a, err := readAddrRest(r, buf[:], AddrType(buf[3]), buf[4])
	if err != nil {
		return Reply{}, fmt.Errorf("read reply: %w", err)
	}
	return Reply{Code: ReplySucceeded, Addr: a}, nil
}

// Username/password sub-negotiation (RFC 1929).
const (
	UserPassVersion      = 0x01
	UserPassSuccess byte = 0x00
	UserPassFailure byte = 0x01 // any non-zero status is a failure
)

// AppendUserPassRequest appends an RFC 1929 request (VER, ULEN, UNAME, PLEN, PASSWD). Each
// field is at most 255 bytes. The error never contains the password.
func AppendUserPassRequest(b []byte, user, pass string) ([]byte, error) {
	if len(user) > 255 {
		return b, fmt.Errorf("encode username/password: username %w", ErrTooLong)
	}
	if len(pass) > 255 {
		return b, fmt.Errorf("encode username/password: password %w", ErrTooLong)
	}
	b = append(b, UserPassVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...), nil
}

// ReadUserPassRequest reads an RFC 1929 request.
func ReadUserPassRequest(r io.Reader) (user, pass string, err error) {
	buf := getScratch()
	defer func() {
		clear(buf[:]) // the password
		putScratch(buf)
	}()
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return "", "", fmt.Errorf("read username/password: %w", eofUnexpected(err))
	}
	if buf[0] != UserPassVersion {
		return "", "", fmt.Errorf("read username/password: %w 0x%02x", ErrBadVersion, buf[0])
	}
	ulen := int(buf[1])
	if _, err := io.ReadFull(r, buf[:ulen+1]); err != nil {
		return "", "", fmt.Errorf("read username/password: %w", eofUnexpected(err))
	}
	user = string(buf[:ulen])
	plen := int(buf[ulen])
	if _, err := io.ReadFull(r, buf[:plen]); err != nil {
		return "", "", fmt.Errorf("read username/password: %w", eofUnexpected(err))
	}
	return user, string(buf[:plen]), nil
}

// AppendUserPassReply appends an RFC 1929 reply (VER, STATUS).
func AppendUserPassReply(b []byte, status byte) []byte {
	return append(b, UserPassVersion, status)
}

// ReadUserPassReply reads an RFC 1929 reply and returns its status (0 is success). The version
// must be 1; 5, which some servers send, is accepted too.
func ReadUserPassReply(r io.Reader) (status byte, err error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return 0, fmt.Errorf("read username/password reply: %w", eofUnexpected(err))
	}
	if buf[0] != UserPassVersion && buf[0] != Version5 {
		return 0, fmt.Errorf("read username/password reply: %w 0x%02x", ErrBadVersion, buf[0])
	}
	return buf[1], nil
}
