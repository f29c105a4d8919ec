package socks

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// Request4 is a SOCKS4 or SOCKS4a request: VN, CD, DSTPORT, DSTIP, USERID, NUL, and for SOCKS4a
// the destination name and a NUL after it.
type Request4 struct {
	Cmd    Command    // CmdConnect or CmdBind
	IP     netip.Addr // IPv4 destination; ignored on encode when Name is set
	Port   uint16
	UserID string // at most 255 bytes, no NUL
	Name   string // SOCKS4a destination name (1 to 255 bytes, no NUL); empty for plain SOCKS4
}

// socks4aMarker is the DSTIP a SOCKS4a client sends with a name: 0.0.0.x with x non-zero.
var socks4aMarker = netip.AddrFrom4([4]byte{0, 0, 0, 1})

// Is4a reports whether ip is a SOCKS4a marker address, 0.0.0.x with x non-zero.
func Is4a(ip netip.Addr) bool {
	if !ip.Is4() {
		return false
	}
	b := ip.As4()
	return b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] != 0
}

// AppendRequest4 appends the encoding of req: SOCKS4a when req.Name is set, else SOCKS4, which
// needs an IPv4 (or IPv4-mapped) address.
func AppendRequest4(b []byte, req Request4) ([]byte, error) {
	if len(req.UserID) > 255 || strings.IndexByte(req.UserID, 0) >= 0 {
		return b, errors.New("encode socks4 request: user id longer than 255 bytes or containing NUL")
	}
	ip := req.IP.Unmap()
	if req.Name != "" {
		if len(req.Name) > MaxNameLen || strings.IndexByte(req.Name, 0) >= 0 {
			return b, fmt.Errorf("encode socks4a request: %w", ErrBadName)
		}
		ip = socks4aMarker
	} else if !ip.Is4() {
		return b, fmt.Errorf("encode socks4 request: destination %v is not an IPv4 address", req.IP)
	}
	a := ip.As4()
	b = append(b, Version4, byte(req.Cmd), byte(req.Port>>8), byte(req.Port), a[0], a[1], a[2], a[3])
	b = append(b, req.UserID...)
	b = append(b, 0)
	if req.Name != "" {
		b = append(b, req.Name...)
		b = append(b, 0)
	}
	return b, nil
}

// ReadRequest4 reads a SOCKS4 or SOCKS4a request, version byte included. The user id and the name
// are each bounded to 255 bytes; the reader is consumed up to the final NUL and no further (one
// byte at a time unless r is an io.ByteReader, such as a bufio.Reader).
func ReadRequest4(r io.Reader) (Request4, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:8]); err != nil {
		return Request4{}, fmt.Errorf("read socks4 request: %w", eofUnexpected(err))
	}
	if buf[0] != Version4 {
		return Request4{}, fmt.Errorf("read socks4 request: %w 0x%02x", ErrBadVersion, buf[0])
	}
	req := Request4{
		Cmd:  Command(buf[1]),
		Port: uint16(buf[2])<<8 | uint16(buf[3]),
		IP:   netip.AddrFrom4([4]byte(buf[4:8])),
	}
	var err error
	if req.UserID, err = readCString(r, buf); err != nil {
		return Request4{}, fmt.Errorf("read socks4 request: user id: %w", err)
	}
	if Is4a(req.IP) {
		if req.Name, err = readCString(r, buf); err != nil {
			return Request4{}, fmt.Errorf("read socks4a request: name: %w", err)
		}
		if req.Name == "" {
			return Request4{}, fmt.Errorf("read socks4a request: %w", ErrBadName)
		}
	}
	return req, nil
}

// readCString reads a NUL-terminated string of at most 255 bytes before the NUL, using buf as
// scratch space.
func readCString(r io.Reader, buf *scratch) (string, error) {
	br, _ := r.(io.ByteReader)
	for i := range 256 {
		var c byte
		if br != nil {
			var err error
			if c, err = br.ReadByte(); err != nil {
				return "", eofUnexpected(err)
			}
		} else {
			if _, err := io.ReadFull(r, buf[i:i+1]); err != nil {
				return "", eofUnexpected(err)
			}
			c = buf[i]
		}
		if c == 0 {
			return string(buf[:i]), nil
		}
		buf[i] = c
	}
	return "", ErrTooLong
}

// Reply4 is a SOCKS4 reply: VN (0), CD, DSTPORT, DSTIP.
type Reply4 struct {
	Code ReplyCode // Reply4Granted on success
	IP   netip.Addr
	Port uint16
}

// AppendReply4 appends the encoding of rep. An invalid or non-IPv4 IP is sent as 0.0.0.0.
func AppendReply4(b []byte, rep Reply4) []byte {
	var a [4]byte
	if ip := rep.IP.Unmap(); ip.Is4() {
		a = ip.As4()
	}
	return append(b, 0, byte(rep.Code), byte(rep.Port>>8), byte(rep.Port), a[0], a[1], a[2], a[3])
}

// ReadReply4 reads a SOCKS4 reply (8 bytes). Its version byte must be 0.
func ReadReply4(r io.Reader) (Reply4, error) {
	buf := getScratch()
	defer putScratch(buf)
	if _, err := io.ReadFull(r, buf[:8]); err != nil {
		return Reply4{}, fmt.Errorf("read socks4 reply: %w", eofUnexpected(err))
	}
	if buf[0] != 0 {
		return Reply4{}, fmt.Errorf("read socks4 reply: %w 0x%02x", ErrBadVersion, buf[0])
	}
	return Reply4{
		Code: ReplyCode(buf[1]),
		Port: uint16(buf[2])<<8 | uint16(buf[3]),
		IP:   netip.AddrFrom4([4]byte(buf[4:8])),
	}, nil
}
