package gateway

import (
	"errors"
	"net"
	"time"

	"github.com/socksgate/socksgate/configs"
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
		if r.Contains(port) {
			return true
		}
	}
	return false
}

// sniffName reads the client's first bytes, before anything is dialed, until they yield a
// name, turn out to be neither TLS nor HTTP, reach sniff.MaxBytes, or the timeout passes (a
// protocol where the server speaks first sends nothing, and waits no longer than that). It
// sets f.Host when a name was found and returns every byte read, which the caller must
// replay to the remote unchanged. It reads from the *net.TCPConn itself and leaves it as it
// was (no deadline), so the relay afterwards still splices.
func (g *Gateway) sniffName(c *net.TCPConn, f *route.Flow) []byte {
	if f.Host != "" || !g.Sniff.applies(f.DstPort()) { // a name from socksgate's DNS is better than a claim
		return nil
	}
	if err := c.SetReadDeadline(time.Now().Add(g.Sniff.Timeout)); err != nil {
		return nil
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 2048)
	for len(buf) < sniff.MaxBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grow
		}
		n, err := c.Read(buf[len(buf):min(cap(buf), sniff.MaxBytes)])
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
