//go:build linux

package main

import (
	"io"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// runNet is the same job written the idiomatic way: net's listener and dialer, a goroutine
// per accepted connection and one more for the second direction, the relay as two io.Copy
// (splice between the sockets) with a half-close. Side by side with the loop it says what the goroutine-per-flow model itself
// costs, apart from anything socksgate does per flow.
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
	var dst [6]byte
	ok := false
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			mreq, err := unix.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, unix.SO_ORIGINAL_DST)
			if err == nil {
				copy(dst[:4], mreq.Multiaddr[4:8])
				copy(dst[4:], mreq.Multiaddr[2:4])
				ok = true
			}
		})
	}
	if !ok {
		return
	}
	u, err := net.Dial("tcp4", proxy)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	req := [13]byte{5, 1, 0, 5, 1, 0, 1}
	copy(req[7:], dst[:])
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
