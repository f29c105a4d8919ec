package httpproxy

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
)

// framing follows the requests in a client connection's byte stream the way net/http's server
// reads them, for the one thing net/http does not tell its handler: whether an HTTP/1.0
// request carried Transfer-Encoding. net/http deletes that header from such a request and
// reads its body by Content-Length, or as empty (Go issue 12785), so a chunked body would be
// read as the next request (a smuggled one, behind a front proxy that honoured the chunking).
//
// RFC 9112, section 6.1, leaves two choices: honour the chunking, as squid does, or treat the
// framing as faulty and close after answering. socksgate answers 400 and closes: it cannot make
// net/http read the chunks, and HTTP/1.0 clients that chunk do not exist outside of attacks.
//
// The scan is incremental over what net/http reads: request line and header lines, then the
// body (Content-Length, or chunks of an HTTP/1.1 request) skipped without looking at it.
// Anything it does not follow exactly as net/http does (a CONNECT or Upgrade, which leave HTTP;
// a header net/http refuses and closes on; a malformed chunk) ends the scan for the rest of the
// connection: from there on no request is flagged. It records one verdict per request header,
// in order; the handler of each request takes the next one.
type framing struct {
	mu       sync.Mutex
	verdicts []bool // per request header scanned and not yet taken: its framing is faulty

	state int
	line  []byte // the line being read
	lead  int    // CR and LF bytes skipped before a request line (net/http skips up to 4)
	left  int64  // bytes left of a Content-Length body or of a chunk's data
	hdr   int    // bytes of the current header so far

	// the request whose header is being read
	http10  bool
	te      int // Transfer-Encoding lines
	chunked bool
	cl      []string
	leaves  bool // CONNECT or Upgrade: the stream stops being HTTP requests after it
}

const (
	frLine       = iota // reading a request line
	frHeader            // reading header lines
	frBody              // skipping a Content-Length body
	frChunkSize         // reading a chunk-size line
	frChunkData         // skipping a chunk's data
	frChunkEnd          // reading the CRLF after a chunk's data
	frTrailer           // reading trailer lines
	frOff               // no longer following
	frMaxLine    = 64 << 10
	frMaxHeader  = 1 << 20
	frMaxPending = 64 // verdicts not yet taken (pipelined requests)
)

// take returns the verdict for the next request net/http hands to a handler: true when its
// framing is faulty (HTTP/1.0 with Transfer-Encoding). With no verdict (the scan stopped) it
// is false.
func (f *framing) take() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.verdicts) == 0 {
		return false
	}
	v := f.verdicts[0]
	f.verdicts = f.verdicts[1:]
	return v
}

// feed scans bytes net/http has read from the client.
func (f *framing) feed(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(p) > 0 && f.state != frOff {
		switch f.state {
		case frBody, frChunkData:
			n := int64(len(p))
			if n > f.left {
				n = f.left
			}
			f.left -= n
			p = p[n:]
			if f.left == 0 {
				if f.state == frBody {
					f.state = frLine
				} else {
					f.state = frChunkEnd
				}
			}
			continue
		case frLine:
			if len(f.line) == 0 && (p[0] == '\r' || p[0] == '\n') && f.lead < 4 {
				f.lead++
				p = p[1:]
				continue
			}
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.line = append(f.line, p...)
			p = nil
		} else {
			f.line = append(f.line, p[:i+1]...)
			p = p[i+1:]
		}
		if len(f.line) > frMaxLine {
			f.state = frOff
			break
		}
		if f.state == frChunkEnd {
			// exactly CRLF after a chunk's data, as net/http wants
			if len(f.line) < 2 {
				if i < 0 {
					continue
				}
				f.state = frOff
				break
			}
			if string(f.line) != "\r\n" {
				f.state = frOff
				break
			}
			f.line = f.line[:0]
			f.state = frChunkSize
			continue
		}
		if i < 0 {
			continue
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(f.line), "\n"), "\r")
		f.line = f.line[:0]
		f.lineDone(line)
	}
	if f.state == frOff {
		f.line = nil
	}
}

// lineDone handles one whole line (its CRLF or LF cut off).
func (f *framing) lineDone(line string) {
	switch f.state {
	case frLine:
		f.lead = 0
		f.hdr = len(line)
		f.requestLine(line)
	case frHeader:
		f.hdr += len(line)
		if f.hdr > frMaxHeader {
			f.state = frOff
			return
		}
		if line == "" {
			f.headerDone()
			return
		}
		f.headerLine(line)
	case frChunkSize:
		size, _, _ := strings.Cut(line, ";")
		size = strings.TrimRight(size, " \t")
		n, err := strconv.ParseUint(size, 16, 63)
		if err != nil || size == "" {
			f.state = frOff
			return
		}
		if n == 0 {
			f.state = frTrailer
			return
		}
		f.left = int64(n)
		f.state = frChunkData
	case frTrailer:
		if line == "" {
			f.state = frLine
		}
	}
}

func (f *framing) requestLine(line string) {
	method, rest, ok1 := strings.Cut(line, " ")
	_, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" {
		f.state = frOff
		return
	}
	f.http10, f.te, f.chunked, f.cl, f.leaves = false, 0, false, f.cl[:0], method == "CONNECT"
	switch proto {
	case "HTTP/1.1":
	case "HTTP/1.0":
		f.http10 = true
	default:
		f.state = frOff // net/http refuses it (505, 400) and closes
		return
	}
	f.state = frHeader
}

func (f *framing) headerLine(line string) {
	if line[0] == ' ' || line[0] == '\t' {
		f.state = frOff // a folded line: not worth following
		return
	}
	name, value, ok := strings.Cut(line, ":")
	if !ok {
		f.state = frOff // net/http refuses it (400) and closes
		return
	}
	value = strings.Trim(value, " \t")
	switch {
	case strings.EqualFold(name, "Transfer-Encoding"):
		f.te++
		f.chunked = strings.EqualFold(value, "chunked")
	case strings.EqualFold(name, "Content-Length"):
		f.cl = append(f.cl, value)
	case strings.EqualFold(name, "Upgrade"):
		f.leaves = true
	}
}

func (f *framing) headerDone() {
	faulty := f.http10 && f.te > 0
	if len(f.verdicts) >= frMaxPending {
		f.state = frOff
		return
	}
	f.verdicts = append(f.verdicts, faulty)
	switch {
	case faulty, f.leaves:
		f.state = frOff // answered 400 and closed; or no longer HTTP requests
	case f.te > 0:
		if f.te != 1 || !f.chunked {
			f.state = frOff // net/http answers 501 and closes
			return
		}
		f.state = frChunkSize
	case len(f.cl) > 0:
		n, err := strconv.ParseUint(f.cl[0], 10, 63)
		for _, v := range f.cl[1:] {
			if v != f.cl[0] {
				err = strconv.ErrSyntax // net/http refuses differing lengths
			}
		}
		if err != nil || f.cl[0][0] == '+' {
			f.state = frOff
			return
		}
		f.left = int64(n)
		f.state = frLine
		if n > 0 {
			f.state = frBody
		}
	default:
		f.state = frLine
	}
}
