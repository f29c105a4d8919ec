package httpproxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/socksgate/socksgate/internal/netctx"
	"github.com/socksgate/socksgate/internal/prefixconn"
)

// MaxResponseHeader bounds the proxy's answer to CONNECT (status line and headers together). A
// proxy that sends more without ending its header fails the dial with ErrResponseTooLarge.
const MaxResponseHeader = 16 << 10

// Errors a dial can wrap. Test with errors.Is; a refusal comes as *StatusError (errors.As).
var (
	// ErrProtocol: the proxy's answer is not an HTTP/1.x response.
	ErrProtocol = errors.New("http connect: malformed response")
	// ErrResponseTooLarge: the response header exceeds MaxResponseHeader.
	ErrResponseTooLarge = fmt.Errorf("http connect: response header larger than %d bytes", MaxResponseHeader)
)

// StatusError is a CONNECT the proxy answered with a status other than 2xx.
type StatusError struct {
	Code   int    // e.g. 407
	Status string // the status line's reason phrase as sent, e.g. "Proxy Authentication Required"
}

func (e *StatusError) Error() string {
	s := "proxy answered " + strconv.Itoa(e.Code)
	if e.Status != "" {
		s += " " + e.Status
	}
	switch e.Code {
	case http.StatusProxyAuthRequired:
		s += " (407: the proxy wants credentials, or refused the ones given)"
	case http.StatusUnauthorized: // tinyproxy answers a CONNECT with bad credentials this way
		s += " (401: the proxy refused the credentials given, or wants some)"
	case http.StatusForbidden:
		s += " (403: forbidden by the proxy's access rules)"
	}
	return s
}

// DialFunc opens a connection the way net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Dialer connects through one HTTP proxy with CONNECT (RFC 9110, section 9.3.6). Its fields are
// read at each dial and must not change while dials are in flight; a Dialer is safe for
// concurrent use.
type Dialer struct {
	// Address is the proxy's "host:port".
	Address string
	// Username and Password, when Username is set, are sent as Basic Proxy-Authorization.
	// The password appears in no error and no String.
	Username, Password string
	// ProxyDial opens the TCP connection to the proxy; nil means a plain net.Dialer. This is
	// how proxies chain (pass the DialContext of the hop below) and how the gateway makes its
	// sockets carry SO_MARK.
	ProxyDial DialFunc
}

// String returns the proxy as a URL without the password, e.g. "http://user@10.0.0.3:3128".
func (d *Dialer) String() string {
	u := url.URL{Scheme: "http", Host: d.Address}
	if d.Username != "" {
		u.User = url.User(d.Username)
	}
	return u.String()
}

// DialContext connects to address ("host:port", the host a name or an IP literal) through the
// proxy: it sends `CONNECT host:port HTTP/1.1` with a Host header, a Via header naming this
// process (Via), and Proxy-Authorization when credentials are set, and waits for a 2xx answer.
// network must be "tcp", "tcp4" or "tcp6".
//
// ctx bounds the whole dial and exchange: its deadline applies, and cancelling it aborts an
// exchange in progress. Bytes the proxy sent after its response header belong to the tunnel
// and are returned first by the connection's Read. When there are none, the returned
// connection is the one ProxyDial returned (a *net.TCPConn for the default dialer, so relays
// can splice); otherwise it is a wrapper that still offers CloseWrite. No deadline is left set.
//
// Errors are *net.OpError{Op: "http connect", Net: network, Source: the proxy, Addr: the
// destination}; Err wraps a *StatusError for a refusal, ErrProtocol, ErrResponseTooLarge, an
// I/O error, or the context's error.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	proxy := addr(d.Address)
	opErr := func(dst net.Addr, err error) error {
		return &net.OpError{Op: "http connect", Net: network, Source: proxy, Addr: dst, Err: err}
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, opErr(nil, fmt.Errorf("network %q not supported", network))
	}
	target, port, err := connectTarget(address)
	if err != nil {
		return nil, opErr(nil, err)
	}
	dst := addr(target)
	dial := d.ProxyDial
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	c, err := dial(ctx, "tcp", d.Address)
	if err != nil {
		return nil, opErr(dst, fmt.Errorf("dial proxy: %w", err))
	}
	var rest []byte
	err = netctx.Do(ctx, c, func() error {
		req := d.request(target)
		_, err := c.Write(req)
		clear(req) // the credentials
		if err != nil {
			return fmt.Errorf("write CONNECT: %w", err)
		}
		var resp Response
		resp, rest, err = ReadResponse(c)
		if err != nil {
			return err
		}
		if resp.Code/100 != 2 {
			return refusal(resp, port)
		}
		return nil
	})
	if err != nil {
		c.Close()
		return nil, opErr(dst, err)
	}
	if len(rest) == 0 {
		return c, nil
	}
	return prefixconn.New(c, rest), nil
}

// refusal turns a non-2xx answer into an error, explaining the common port-443-only trap.
func refusal(resp Response, port string) error {
	se := &StatusError{Code: resp.Code, Status: resp.Status}
	if (resp.Code == http.StatusForbidden || resp.Code == http.StatusMethodNotAllowed) && port != "443" {
		return fmt.Errorf("%w; many proxies allow CONNECT only to port 443 (squid's default "+
			"\"http_access deny CONNECT !SSL_ports\"): allow port %s for CONNECT in the proxy's config", se, port)
	}
	return se
}

// connectTarget validates "host:port" and returns it in the form CONNECT wants (IPv6 in
// brackets) and its port.
func connectTarget(address string) (target, port string, err error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return "", "", fmt.Errorf("destination: %w", err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("destination %q: bad port", address)
	}
	if host == "" || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' || r == '@' }) {
		return "", "", fmt.Errorf("destination %q: bad host", address)
	}
	return net.JoinHostPort(host, port), port, nil
}

// request is the CONNECT request for target.
func (d *Dialer) request(target string) []byte {
	b := make([]byte, 0, 128)
	b = append(b, "CONNECT "...)
	b = append(b, target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, target...)
	// Via names this process, so that a proxy chain that leads back to socksgate is refused
	// there as a loop (Via, LoopError) instead of nesting tunnels.
	b = append(b, "\r\nVia: 1.1 "...)
	b = append(b, Via...)
	b = append(b, "\r\n"...)
	if d.Username != "" {
		cred := []byte(d.Username + ":" + d.Password)
		b = append(b, "Proxy-Authorization: Basic "...)
		b = base64.StdEncoding.AppendEncode(b, cred)
		clear(cred)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// Response is the part of a proxy's answer to CONNECT that matters: the status.
type Response struct {
	Proto  string // "HTTP/1.1" or "HTTP/1.0"
	Code   int
	Status string // reason phrase, possibly empty
}

// ReadResponse reads one final response header from r, skipping interim 1xx responses, reading
// at most MaxResponseHeader bytes in all. It returns the response and the bytes read past the
// header's end (the start of the tunnel, for a 2xx). The response's body, if any, is never read:
// a client must ignore the framing headers of a successful CONNECT, and a refusal ends the
// connection.
func ReadResponse(r io.Reader) (Response, []byte, error) {
	buf := make([]byte, 0, 2048)
	consumed := 0 // start of the current response inside buf
	scanned := 0  // how much of buf[consumed:] is known to hold no header end
	for {
		if end := headerEnd(buf[consumed:], scanned); end >= 0 {
			resp, err := parseHeader(buf[consumed : consumed+end])
			if err != nil {
				return Response{}, nil, err
			}
			consumed += end
			scanned = 0
			if resp.Code/100 == 1 && resp.Code != http.StatusSwitchingProtocols {
				continue // interim response: the final one follows
			}
			return resp, bytes.Clone(buf[consumed:]), nil
		}
		// A header end needs up to two bytes after a newline: rescan only those next time, so a
		// proxy trickling its header a byte at a time costs linear, not quadratic, work.
		scanned = max(len(buf)-consumed-2, 0)
		if len(buf) >= MaxResponseHeader {
			return Response{}, nil, ErrResponseTooLarge
		}
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*cap(buf), MaxResponseHeader))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil && headerEnd(buf[consumed:], scanned) < 0 {
			switch {
			case errors.Is(err, io.EOF) && len(buf) == 0:
				return Response{}, nil, fmt.Errorf("read response: proxy closed the connection: %w", io.ErrUnexpectedEOF)
			case errors.Is(err, io.EOF):
				return Response{}, nil, fmt.Errorf("read response: %w", io.ErrUnexpectedEOF)
			}
			return Response{}, nil, fmt.Errorf("read response: %w", err)
		}
	}
}

// headerEnd returns the length of the header at the start of b including its blank line, or -1
// when b does not hold a whole header yet; the search starts at from (b[:from] holds no header
// end). Lines may end in CRLF or a bare LF.
func headerEnd(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

// parseHeader parses a status line and header lines (the header's end included).
func parseHeader(h []byte) (Response, error) {
	lines := strings.Split(strings.TrimRight(string(h), "\r\n"), "\n")
	status := strings.TrimSuffix(lines[0], "\r")
	proto, rest, ok := strings.Cut(status, " ")
	if !ok || (proto != "HTTP/1.1" && proto != "HTTP/1.0") {
		return Response{}, fmt.Errorf("%w: status line %q", ErrProtocol, clip(status))
	}
	codeStr, reason, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeStr)
	if err != nil || len(codeStr) != 3 || code < 100 {
		return Response{}, fmt.Errorf("%w: status line %q", ErrProtocol, clip(status))
	}
	for _, l := range lines[1:] {
		l = strings.TrimSuffix(l, "\r")
		if name, _, ok := strings.Cut(l, ":"); !ok || name == "" || strings.ContainsAny(name, " \t") {
			return Response{}, fmt.Errorf("%w: header line %q", ErrProtocol, clip(l))
		}
	}
	return Response{Proto: proto, Code: code, Status: strings.TrimSpace(reason)}, nil
}

// clip shortens what a hostile proxy sent before it goes into an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// addr is a "host:port" as a net.Addr for errors.
type addr string

func (a addr) Network() string { return "tcp" }
func (a addr) String() string  { return string(a) }
