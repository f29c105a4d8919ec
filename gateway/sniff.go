package gateway

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/internal/rawio"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/sniff"
)

// Sniffing configures reading a name from the first bytes of captured TCP flows
// (transparent.sniff): the TLS ClientHello's SNI or the HTTP Host header becomes Flow.Host, so
// rules can match it and a proxy upstream is asked for the name instead of the address.
type Sniffing struct {
	Ports    []configs.PortRange // destination ports sniffed
	Timeout  time.Duration       // how long to wait for the client's first bytes
	Override bool                // hand a proxy the sniffed name, not the client's address
}

// NewSniffing returns the sniffing settings of cfg, or nil when sniffing is off.
func NewSniffing(cfg configs.Sniff) *Sniffing {
	if !cfg.Enabled || len(cfg.Ports) == 0 || cfg.Timeout <= 0 {
		return nil
	}
	return &Sniffing{Ports: cfg.Ports, Timeout: time.Duration(cfg.Timeout), Override: cfg.Override}
}

func (s *Sniffing) applies(port uint16) bool {
	if s == nil {
		return false
	}
	for _, r := range s.Ports {
		if r.From <= port && port <= r.To { // not r.Contains: see its comment
			return true
		}
	}
	return false
}

// sniffBufs holds the buffers sniffName reads into; a flow holds one only until its first bytes
// have been replayed to the remote.
var sniffBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// sniffName reads the client's first bytes, before anything is dialed, until they yield a
// name, turn out to be neither TLS nor HTTP, reach sniff.MaxBytes, or the timeout passes (a
// protocol where the server speaks first sends nothing, and waits no longer than that). It
// sets f.Host when a name was found and returns every byte read, which the caller must
// replay to the remote unchanged, and then give back with putSniffed. It reads from the
// *net.TCPConn itself, with raw calls (package rawio), and leaves it as it was (no deadline),
// so the relay afterwards still splices.
//
// A client that speaks first has usually sent its request by the time its connection is
// accepted: what is already there is read without waiting, and only when it is not enough is
// the timeout armed (a timer per flow, and a thread woken for it, saved otherwise).
func (g *Gateway) sniffName(c *net.TCPConn, f *route.Flow) *[]byte {
	if f.Host != "" || !g.Sniff.applies(f.DstPort()) { // a name from socksgate's DNS is better than a claim
		return nil
	}
	bp := sniffBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	if x := rawio.Get(c); x != nil {
		n, err := x.ReadNow(buf[:cap(buf)])
		x.Put()
		buf = buf[:n]
		switch {
		case n > 0:
			name, _, perr := sniff.Name(buf)
			if perr == nil {
				f.Host, f.From = name, route.NameSniff
			}
			if !errors.Is(perr, sniff.ErrIncomplete) {
				*bp = buf
				return bp
			}
		case !errors.Is(err, rawio.ErrWouldBlock):
			*bp = buf // end of stream or an error: proceed with the address
			return bp
		}
	}
	if err := c.SetReadDeadline(time.Now().Add(g.Sniff.Timeout)); err != nil {
		*bp = buf
		return bp
	}
	defer c.SetReadDeadline(time.Time{})
	r, done := rawio.Reader(c)
	defer done()
	*bp = sniffInto(r, buf, f)
	return bp
}

func sniffInto(r io.Reader, buf []byte, f *route.Flow) []byte {
	for len(buf) < sniff.MaxBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grow
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), sniff.MaxBytes)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			name, _, perr := sniff.Name(buf)
			if perr == nil {
				f.Host, f.From = name, route.NameSniff
				return buf
			}
			if !errors.Is(perr, sniff.ErrIncomplete) {
				return buf
			}
		}
		if err != nil {
			return buf // timeout, EOF or reset: proceed with the address
		}
	}
	return buf
}

// sniffed is what sniffName read (nil: nothing).
func sniffed(bp *[]byte) []byte {
	if bp == nil {
		return nil
	}
	return *bp
}

// putSniffed gives back sniffName's buffer once its bytes have been replayed.
func putSniffed(bp *[]byte) {
	if bp != nil && cap(*bp) <= 4096 {
		*bp = (*bp)[:0]
		sniffBufs.Put(bp)
	}
}
