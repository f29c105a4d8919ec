// Package tcpinfo reads what the kernel knows of a TCP socket (TCP_INFO): how long it has been
// idle or stalled, and how many bytes it carried. Connections are unwrapped through NetConn
// (TLS-style wrappers) to the socket beneath. Off Linux every figure is zero (unknown).
package tcpinfo

import "net"

// Unwrap finds the socket under wrappers that expose it (tls.Conn-style NetConn).
func Unwrap(c any) any {
	for range 8 {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = w.NetConn()
	}
	return c
}
