// Package prefixconn is a connection with bytes already read from it in front: what a server
// peeked at, or what an HTTP proxy sent along with its CONNECT answer. It keeps the half-close
// and the splice paths of the connection underneath once the prefix is drained.
package prefixconn

import (
	"fmt"
	"io"
	"net"
)

// Conn serves Prefix, then reads c.Conn. It deliberately has no SyscallConn: waiting for the
// descriptor to be readable would stall while the prefix still holds bytes.
type Conn struct {
	net.Conn
	Prefix []byte
}

// New returns c with prefix in front (prefix is used as is, not copied).
func New(c net.Conn, prefix []byte) *Conn { return &Conn{Conn: c, Prefix: prefix} }

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.Prefix) > 0 {
		n := copy(p, c.Prefix)
		c.Prefix = c.Prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteTo writes the prefix, then lets the connection underneath copy (splice) the rest.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(c.Prefix) > 0 {
		n, err := w.Write(c.Prefix)
		total += int64(n)
		c.Prefix = c.Prefix[n:]
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// ReadFrom copies into the connection underneath (splice when both are TCP).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

// NetConn returns the connection underneath, for what reads its socket's state (TCP_INFO).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// CloseWrite shuts down the sending half, when the connection underneath can.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %T cannot half-close", c.Conn)
}

// CloseRead shuts down the receiving half, when the connection underneath can.
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return fmt.Errorf("close read: %T cannot half-close", c.Conn)
}
