// Package sniff finds the destination name in the first bytes a client sends: the server name
// (SNI) of a TLS ClientHello, or the Host header of an HTTP/1.x request. It is pure: callers
// read the bytes, feed everything read so far, and read more while the answer is
// ErrIncomplete. It never modifies the bytes, which the caller replays unchanged.
package sniff

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
)

// MaxBytes is how much a caller should read at most before giving up: a ClientHello with
// post-quantum key shares and many extensions fits comfortably; anything longer is not worth
// holding a flow for.
const MaxBytes = 16 << 10

var (
	// ErrIncomplete means the bytes so far start like a protocol sniff understands, but the
	// part holding the name has not arrived yet: read more and call again.
	ErrIncomplete = errors.New("sniff: need more bytes")
	// ErrUnknown means the bytes are neither a TLS handshake nor an HTTP/1.x request.
	ErrUnknown = errors.New("sniff: neither TLS nor HTTP")
	// ErrNoName means the protocol was recognised but carries no usable name (no SNI
	// extension, no Host header, an address literal or a malformed name).
	ErrNoName = errors.New("sniff: no name")
)

// Protocol is what the first bytes were recognised as.
type Protocol int

const (
	Unknown Protocol = iota
	TLS
	HTTP
)

func (p Protocol) String() string {
	switch p {
	case TLS:
		return "tls"
	case HTTP:
		return "http"
	}
	return "unknown"
}

// Name returns the destination name in b, the start of a client's byte stream, and the
// protocol it was found in. The error is ErrIncomplete (read more), ErrUnknown or ErrNoName.
// The name is lowercase, without a trailing dot, and a valid DNS hostname.
func Name(b []byte) (string, Protocol, error) {
	if len(b) == 0 {
		return "", Unknown, ErrIncomplete
	}
	switch {
	case b[0] == recordHandshake:
		n, err := SNI(b)
		return n, TLS, err
	case b[0] >= 'A' && b[0] <= 'Z':
		n, err := HTTPHost(b)
		return n, HTTP, err
	}
	return "", Unknown, ErrUnknown
}

const (
	recordHandshake        = 22
	handshakeClientHello   = 1
	extServerName          = 0
	serverNameTypeHostName = 0
	recordHeaderLen        = 5
	maxRecordLen           = 1<<14 + 2048 // TLSCiphertext limit; a plaintext record is smaller
)

// SNI returns the server name of the TLS ClientHello at the start of b. The ClientHello may
// span several handshake records (and so several TCP segments): SNI reassembles the
// handshake message from consecutive records and answers ErrIncomplete until it is whole.
func SNI(b []byte) (string, error) {
	var msg []byte // the handshake message so far, reassembled from record fragments
	need := -1     // its full length once the 4-byte handshake header is known
	for {
		if len(b) < recordHeaderLen {
			if len(b) > 0 && b[0] != recordHandshake {
				return "", ErrUnknown
			}
			if len(b) >= 2 && b[1] != 3 {
				return "", ErrUnknown
			}
			return "", ErrIncomplete
		}
		if b[0] != recordHandshake || b[1] != 3 {
			return "", ErrUnknown
		}
		rlen := int(b[3])<<8 | int(b[4])
		if rlen == 0 || rlen > maxRecordLen {
			return "", ErrUnknown
		}
		if len(b) < recordHeaderLen+rlen {
			// Use what has arrived of this record to fail early on a non-ClientHello.
			msg = append(msg, b[recordHeaderLen:]...)
			if len(msg) > 0 && msg[0] != handshakeClientHello {
				return "", ErrUnknown
			}
			return "", ErrIncomplete
		}
		msg = append(msg, b[recordHeaderLen:recordHeaderLen+rlen]...)
		b = b[recordHeaderLen+rlen:]
		if msg[0] != handshakeClientHello {
			return "", ErrUnknown
		}
		if need < 0 && len(msg) >= 4 {
			need = 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			if need > MaxBytes*4 {
				return "", ErrNoName
			}
		}
		if need >= 0 && len(msg) >= need {
			return clientHelloSNI(msg[4:need])
		}
	}
}

// reader is a bounds-checked cursor over a ClientHello.
type reader struct {
	b  []byte
	ok bool
}

func (r *reader) n(n int) []byte {
	if !r.ok || n > len(r.b) {
		r.ok = false
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() int {
	v := r.n(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (r *reader) u16() int {
	v := r.n(2)
	if v == nil {
		return 0
	}
	return int(v[0])<<8 | int(v[1])
}

// clientHelloSNI parses a ClientHello body (RFC 8446 4.1.2, RFC 6066 3).
func clientHelloSNI(body []byte) (string, error) {
	r := &reader{b: body, ok: true}
	r.n(2)       // legacy_version
	r.n(32)      // random
	r.n(r.u8())  // legacy_session_id
	r.n(r.u16()) // cipher_suites
	r.n(r.u8())  // legacy_compression_methods
	if !r.ok {
		return "", ErrNoName
	}
	if len(r.b) == 0 {
		return "", ErrNoName // no extensions at all (SSL 3.0 style)
	}
	exts := &reader{b: r.n(r.u16()), ok: r.ok}
	for exts.ok && len(exts.b) > 0 {
		typ := exts.u16()
		data := exts.n(exts.u16())
		if !exts.ok {
			break
		}
		if typ != extServerName {
			continue
		}
		sr := &reader{b: data, ok: true}
		list := &reader{b: sr.n(sr.u16()), ok: sr.ok}
		for list.ok && len(list.b) > 0 {
			nt := list.u8()
			name := list.n(list.u16())
			if list.ok && nt == serverNameTypeHostName {
				return cleanName(string(name))
			}
		}
		return "", ErrNoName
	}
	return "", ErrNoName
}

// maxHeaderBytes bounds how far HTTPHost looks for the Host header.
const maxHeaderBytes = MaxBytes

// HTTPHost returns the host of the Host header of the HTTP/1.x request at the start of b,
// without its port. It answers ErrIncomplete while neither the Host header line nor the end
// of the headers has arrived.
func HTTPHost(b []byte) (string, error) {
	// Request line: METHOD SP request-target SP HTTP/1.x CRLF.
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		if len(b) > 20 || !isToken(b) {
			return "", ErrUnknown
		}
		return "", ErrIncomplete
	}
	if sp == 0 || sp > 20 || !isToken(b[:sp]) {
		return "", ErrUnknown
	}
	eol := bytes.IndexByte(b, '\n')
	if eol < 0 {
		if len(b) > maxHeaderBytes {
			return "", ErrNoName
		}
		return "", ErrIncomplete
	}
	line := bytes.TrimRight(b[:eol], "\r")
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp2 <= sp || !bytes.HasPrefix(line[sp2+1:], []byte("HTTP/1.")) {
		return "", ErrUnknown
	}
	rest := b[eol+1:]
	for {
		eol := bytes.IndexByte(rest, '\n')
		if eol < 0 {
			if len(b) > maxHeaderBytes {
				return "", ErrNoName
			}
			return "", ErrIncomplete
		}
		line := bytes.TrimRight(rest[:eol], "\r")
		rest = rest[eol+1:]
		if len(line) == 0 {
			return "", ErrNoName // end of headers without Host
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.EqualFold(name, []byte("Host")) {
			continue
		}
		host := strings.TrimSpace(string(value))
		if h, _, ok := splitHostPort(host); ok {
			host = h
		}
		return cleanName(host)
	}
}

func isToken(b []byte) bool {
	for _, c := range b {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return len(b) > 0
}

// splitHostPort splits "host:port" and "[v6]:port"; ok is false when there is no port.
func splitHostPort(s string) (host, port string, ok bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false
		}
		if len(s) > end+1 && s[end+1] == ':' {
			return s[1:end], s[end+2:], true
		}
		return s[1:end], "", true
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.Count(s, ":") > 1 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// cleanName validates a name as a DNS hostname and normalises it (lowercase, no trailing
// dot). Address literals are not names: the flow already has its address. Nor is anything
// whose last label is a number ("127.1", "10.0x1", "2130706433"): resolvers that accept the
// old inet_aton forms would turn it into an address, which no rule about names expects.
func cleanName(s string) (string, error) {
	s = strings.TrimSuffix(s, ".")
	if len(s) == 0 || len(s) > 253 {
		return "", ErrNoName
	}
	if _, err := netip.ParseAddr(s); err == nil || endsInNumber(s) {
		return "", ErrNoName
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case c >= 'A' && c <= 'Z':
		case c == '-':
			if label == 0 {
				return "", ErrNoName
			}
		case c == '.':
			if label == 0 || s[i-1] == '-' {
				return "", ErrNoName
			}
			label = 0
			continue
		default:
			return "", ErrNoName
		}
		label++
		if label > 63 {
			return "", ErrNoName
		}
	}
	if s[len(s)-1] == '-' {
		return "", ErrNoName
	}
	return strings.ToLower(s), nil
}

// endsInNumber reports whether the last label of s is a decimal or 0x-hexadecimal number, as
// the WHATWG URL standard's host parser decides it (no top-level domain is one).
func endsInNumber(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last == "" {
		return false
	}
	digits := "0123456789"
	if len(last) >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') {
		last, digits = last[2:], "0123456789abcdefABCDEF"
	}
	for i := 0; i < len(last); i++ {
		if !strings.ContainsRune(digits, rune(last[i])) {
			return false
		}
	}
	return true
}
