// Package socks is the byte-level codec for SOCKS4, SOCKS4a and SOCKS5 (RFC 1928), with the
// username/password sub-negotiation of RFC 1929 and the SOCKS5 UDP request header. Client and
// server both build on it: every message has an Append function that encodes it and a Read (or
// Parse, for datagrams) function that decodes it, so a dialer and a server share one definition
// of the wire format.
//
// Decoders read exactly the bytes of one message from an io.Reader (never more, so the stream
// that follows is left intact), bound every length by the protocol's one-byte fields, and return
// an error, never panic, on malformed input. Encoders append to a caller's slice and allocate
// only when it must grow.
package socks

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Protocol versions, as the first byte of a client's message.
const (
	Version4 = 0x04
	Version5 = 0x05
)

// AddrType is the ATYP field of SOCKS5 requests, replies and UDP headers.
type AddrType byte

// SOCKS5 address types.
const (
	AddrTypeIPv4   AddrType = 0x01
	AddrTypeDomain AddrType = 0x03
	AddrTypeIPv6   AddrType = 0x04
)

// MaxNameLen is the longest domain name a SOCKS5 address or a SOCKS4a request can carry.
const MaxNameLen = 255

// MaxAddrLen is the longest encoded SOCKS5 address: ATYP, length byte, 255-byte name, port.
const MaxAddrLen = 1 + 1 + MaxNameLen + 2

// Errors common to the decoders; each is wrapped with what was being read.
var (
	ErrBadVersion  = errors.New("unexpected protocol version")
	ErrBadAddrType = errors.New("unsupported address type")
	ErrBadName     = errors.New("invalid domain name length")
	ErrTooLong     = errors.New("field longer than 255 bytes")
)

// Addr is a SOCKS destination or bound address: an IP address (IPv4 or IPv6) or a domain name,
// and a port. Exactly one of IP and Name is set in a valid Addr. It implements net.Addr, so it can
// be handed to WriteTo or carried in a *net.OpError.
type Addr struct {
	IP   netip.Addr // valid for IPv4 and IPv6 addresses; an IPv4-mapped address is sent as IPv4
	Name string     // the domain name, when IP is not valid
	Port uint16
}

// AddrFromAddrPort returns the Addr of an IP address and port.
func AddrFromAddrPort(ap netip.AddrPort) Addr {
	return Addr{IP: ap.Addr(), Port: ap.Port()}
}

// ParseAddr parses "host:port", where host is an IPv4 or IPv6 literal or a domain name of at most
// 255 bytes. An IPv6 zone cannot travel in SOCKS and is an error.
func ParseAddr(hostport string) (Addr, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return Addr{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("invalid port %q", port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Addr{}, fmt.Errorf("address %q: an IPv6 zone cannot be sent over SOCKS", hostport)
		}
		return Addr{IP: ip, Port: uint16(p)}, nil
	}
	if len(host) == 0 || len(host) > MaxNameLen {
		return Addr{}, fmt.Errorf("host %q: %w", host, ErrBadName)
	}
	return Addr{Name: host, Port: uint16(p)}, nil
}

// Network returns "socks"; the address may be used for TCP or UDP.
func (a Addr) Network() string { return "socks" }

// String returns "host:port", with IPv6 addresses in brackets.
func (a Addr) String() string {
	host := a.Name
	if a.IP.IsValid() {
		host = a.IP.Unmap().String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
}

// IsName reports whether the address is a domain name rather than an IP address.
func (a Addr) IsName() bool { return !a.IP.IsValid() }

// AddrPort returns the IP address and port, unmapped; ok is false for a name.
func (a Addr) AddrPort() (ap netip.AddrPort, ok bool) {
	if !a.IP.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.IP.Unmap(), a.Port), true
}

// Type returns the SOCKS5 ATYP the address is encoded with.
func (a Addr) Type() AddrType {
	switch {
	case a.IP.Is4() || a.IP.Is4In6():
		return AddrTypeIPv4
	case a.IP.Is6():
		return AddrTypeIPv6
	}
	return AddrTypeDomain
}

// EncodedLen is the length of the address in SOCKS5 encoding (ATYP, address, port).
func (a Addr) EncodedLen() int {
	switch a.Type() {
	case AddrTypeIPv4:
		return 1 + 4 + 2
	case AddrTypeIPv6:
		return 1 + 16 + 2
	}
	return 1 + 1 + len(a.Name) + 2
}

// AppendBinary appends the SOCKS5 encoding of the address (ATYP, address, port) to b.
// It fails for an empty or over-long name. It implements encoding.BinaryAppender.
func (a Addr) AppendBinary(b []byte) ([]byte, error) {
	switch a.Type() {
	case AddrTypeIPv4:
		ip := a.IP.Unmap().As4()
		b = append(b, byte(AddrTypeIPv4))
		b = append(b, ip[:]...)
	case AddrTypeIPv6:
		ip := a.IP.As16()
		b = append(b, byte(AddrTypeIPv6))
		b = append(b, ip[:]...)
	default:
		if len(a.Name) == 0 || len(a.Name) > MaxNameLen {
			return b, fmt.Errorf("encode address %q: %w", a.Name, ErrBadName)
		}
		b = append(b, byte(AddrTypeDomain), byte(len(a.Name)))
		b = append(b, a.Name...)
	}
	return append(b, byte(a.Port>>8), byte(a.Port)), nil
}

// MarshalBinary returns the SOCKS5 encoding of the address.
func (a Addr) MarshalBinary() ([]byte, error) {
	return a.AppendBinary(make([]byte, 0, a.EncodedLen()))
}

// ReadAddr reads one SOCKS5-encoded address (ATYP, address, port) from r, reading no further.
func ReadAddr(r io.Reader) (Addr, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Addr{}, fmt.Errorf("read address: %w", eofUnexpected(err))
	}
	return readAddrRest(r, buf[:], AddrType(buf[0]), buf[1])
}

// readAddrRest finishes reading an address whose ATYP and first byte were already read. buf is a
// scratch buffer of at least MaxAddrLen bytes.
func readAddrRest(r io.Reader, buf []byte, atyp AddrType, first byte) (Addr, error) {
	var rest int // bytes still to read after the first address byte
	switch atyp {
	case AddrTypeIPv4:
		rest = 3 + 2
	case AddrTypeIPv6:
		rest = 15 + 2
	case AddrTypeDomain:
		if first == 0 {
			return Addr{}, fmt.Errorf("read address: %w", ErrBadName)
		}
		rest = int(first) + 2
	default:
		return Addr{}, fmt.Errorf("read address: %w 0x%02x", ErrBadAddrType, byte(atyp))
	}
	buf = buf[:rest+1]
	buf[0] = first
	if _, err := io.ReadFull(r, buf[1:]); err != nil {
		return Addr{}, fmt.Errorf("read address: %w", eofUnexpected(err))
	}
	a, _, err := decodeAddrBody(atyp, buf)
	return a, err
}

// ParseAddrBytes decodes one SOCKS5-encoded address at the start of b and returns it with the
// number of bytes it took. An IP address is decoded without allocating.
func ParseAddrBytes(b []byte) (Addr, int, error) {
	if len(b) < 2 {
		return Addr{}, 0, fmt.Errorf("parse address: %w", io.ErrUnexpectedEOF)
	}
	a, n, err := decodeAddrBody(AddrType(b[0]), b[1:])
	return a, n + 1, err
}

// decodeAddrBody decodes the address and port following ATYP in b.
func decodeAddrBody(atyp AddrType, b []byte) (Addr, int, error) {
	var a Addr
	var n int
	switch atyp {
	case AddrTypeIPv4:
		n = 4
		if len(b) < n+2 {
			return Addr{}, 0, fmt.Errorf("parse address: %w", io.ErrUnexpectedEOF)
		}
		a.IP = netip.AddrFrom4([4]byte(b[:4]))
	case AddrTypeIPv6:
		n = 16
		if len(b) < n+2 {
			return Addr{}, 0, fmt.Errorf("parse address: %w", io.ErrUnexpectedEOF)
		}
		a.IP = netip.AddrFrom16([16]byte(b[:16]))
	case AddrTypeDomain:
		if len(b) < 1 {
			return Addr{}, 0, fmt.Errorf("parse address: %w", io.ErrUnexpectedEOF)
		}
		l := int(b[0])
		if l == 0 {
			return Addr{}, 0, fmt.Errorf("parse address: %w", ErrBadName)
		}
		n = 1 + l
		if len(b) < n+2 {
			return Addr{}, 0, fmt.Errorf("parse address: %w", io.ErrUnexpectedEOF)
		}
		a.Name = string(b[1:n])
	default:
		return Addr{}, 0, fmt.Errorf("parse address: %w 0x%02x", ErrBadAddrType, byte(atyp))
	}
	a.Port = uint16(b[n])<<8 | uint16(b[n+1])
	return a, n + 2, nil
}

// eofUnexpected turns a bare io.EOF in the middle of a message into io.ErrUnexpectedEOF.
func eofUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
