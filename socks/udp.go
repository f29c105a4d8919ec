package socks

import (
	"fmt"
	"io"
)

// MaxUDPHeaderLen is the longest SOCKS5 UDP request header: RSV (2), FRAG, and the longest
// address.
const MaxUDPHeaderLen = 3 + MaxAddrLen

// UDPHeader is the header of every datagram exchanged with a SOCKS5 UDP relay (RFC 1928
// section 7): RSV (two zero bytes), FRAG, then the remote address.
type UDPHeader struct {
	Frag byte // fragment number; 0 for a whole datagram (the only kind most relays support)
	Addr Addr // the datagram's destination (client to relay) or source (relay to client)
}

// AppendUDPHeader appends the encoding of h. With an IP address and a b of enough capacity it
// does not allocate; the payload is then appended by the caller.
func AppendUDPHeader(b []byte, h UDPHeader) ([]byte, error) {
	b = append(b, 0, 0, h.Frag)
	return h.Addr.AppendBinary(b)
}

// ParseUDPHeader decodes the header at the start of datagram b and returns it with the header's
// length: the payload is b[n:]. An IP address is decoded without allocating; a name allocates its
// string. The reserved bytes are not checked.
func ParseUDPHeader(b []byte) (h UDPHeader, n int, err error) {
	if len(b) < 4 {
		return UDPHeader{}, 0, fmt.Errorf("parse udp header: %w", io.ErrUnexpectedEOF)
	}
	a, an, err := ParseAddrBytes(b[3:])
	if err != nil {
		return UDPHeader{}, 0, fmt.Errorf("parse udp header: %w", err)
	}
	return UDPHeader{Frag: b[2], Addr: a}, 3 + an, nil
}
