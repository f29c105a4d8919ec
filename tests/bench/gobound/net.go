//go:build linux

package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"

	"github.com/socksgate/socksgate/nat"
)

// runNet is the same job written the idiomatic way: net's listener and dialer, a goroutine
// per accepted connection and one more for the second direction, the relay as two io.Copy
// (splice between the sockets) with a half-close. Side by side with the loop it says what the
// goroutine-per-flow model itself costs, apart from anything socksgate does per flow.
func runNet(lnAP, pAP netip.AddrPort) error {
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(lnAP))
	if err != nil {
		return err
	}
	proxy := pAP.String()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return err
		}
		go serveNet(c, proxy)
	}
}

func serveNet(c *net.TCPConn, proxy string) {
	defer c.Close()
	dst, err := nat.OriginalDst(c)
	if err != nil || !dst.Addr().Is4() {
		return
	}
	u, err := net.Dial("tcp4", proxy)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	req := [13]byte{5, 1, 0, 5, 1, 0, 1}
	a4 := dst.Addr().As4()
	copy(req[7:], a4[:])
	binary.BigEndian.PutUint16(req[11:], dst.Port())
	if _, err := up.Write(req[:]); err != nil {
		return
	}
	var rep [12]byte
	if _, err := io.ReadFull(up, rep[:]); err != nil || rep[1] != 0 || rep[3] != 0 || rep[5] != 1 {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.CloseWrite()
	<-done
}
