package redirect

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/configs"
)

// TestTrafficIsCaptured sends real packets from a "lan" namespace through a
// veth pair into the namespace holding the rules, IPv4 and IPv6: TCP to a
// foreign address arrives at the REDIRECT listener, UDP at the TPROXY socket
// (which proves the fwmark rule and the local route), and a bypassed
// destination is not captured.
func TestTrafficIsCaptured(t *testing.T) {
	gw := newNS(t)
	lan := newNS(t)
	// Replace gw's lan0 by a veth pair whose other end lives in lan.
	run(t, "ip", "-n", gw.name, "link", "del", "lan0")
	run(t, "ip", "-n", lan.name, "link", "del", "lan0")
	run(t, "ip", "-n", gw.name, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan.name)
	run(t, "ip", "-n", gw.name, "addr", "add", "192.0.2.1/24", "dev", "lan0")
	run(t, "ip", "-n", gw.name, "addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad")
	run(t, "ip", "-n", gw.name, "link", "set", "lan0", "up")
	run(t, "ip", "-n", lan.name, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	run(t, "ip", "-n", lan.name, "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad")
	run(t, "ip", "-n", lan.name, "link", "set", "eth0", "up")
	run(t, "ip", "-n", lan.name, "route", "add", "default", "via", "192.0.2.1")
	run(t, "ip", "-n", lan.name, "-6", "route", "add", "default", "via", "2001:db8:1::1")
	run(t, "ip", "netns", "exec", gw.name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	s := systemSpec()
	s.LANInterfaces = []string{"lan0"}
	r := applyIn(t, gw, s)

	// Listeners inside gw: a plain TCP one for REDIRECT and a transparent
	// dual-stack UDP one for TPROXY.
	var tcpLn net.Listener
	var udpPC net.PacketConn
	inNS(t, gw, func() {
		var err error
		if tcpLn, err = net.Listen("tcp", "[::]:12345"); err != nil {
			t.Errorf("listen tcp: %v", err)
			return
		}
		lc := net.ListenConfig{Control: transparent}
		if udpPC, err = lc.ListenPacket(t.Context(), "udp", "[::]:12346"); err != nil {
			t.Errorf("listen udp: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	defer tcpLn.Close()
	defer udpPC.Close()

	for _, dst := range []string{"198.51.100.9", "2001:db8:99::9"} {
		t.Run("tcp to "+dst, func(t *testing.T) {
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := tcpLn.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			var dialErr error
			inNS(t, lan, func() {
				var c net.Conn
				c, dialErr = net.DialTimeout("tcp", net.JoinHostPort(dst, "80"), 2*time.Second)
				if dialErr == nil {
					c.Close()
				}
			})
			if dialErr != nil {
				t.Fatalf("dial from lan: %v", dialErr)
			}
			select {
			case c := <-accepted:
				src := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
				if !src.IsValid() || !(src == netip.MustParseAddr("192.0.2.2") || src == netip.MustParseAddr("2001:db8:1::2")) {
					t.Errorf("accepted from %v, want the lan host", src)
				}
				c.Close()
			case <-time.After(2 * time.Second):
				t.Fatal("redirect listener accepted nothing")
			}
		})
		t.Run("udp to "+dst, func(t *testing.T) {
			inNS(t, lan, func() {
				c, err := net.Dial("udp", net.JoinHostPort(dst, "53"))
				if err != nil {
					t.Errorf("dial udp: %v", err)
					return
				}
				defer c.Close()
				_, _ = c.Write([]byte("ping " + dst))
			})
			_ = udpPC.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			n, from, err := udpPC.ReadFrom(buf)
			if err != nil {
				t.Fatalf("tproxy socket received nothing: %v", err)
			}
			if string(buf[:n]) != "ping "+dst {
				t.Errorf("received %q from %v", buf[:n], from)
			}
		})
	}

	t.Run("tcp tproxy keeps the original destination", func(t *testing.T) {
		s.TCPMode = configs.TCPModeTProxy
		if err := r.Replace(s); err != nil {
			t.Fatalf("Replace with tcp tproxy: %v", err)
		}
		tcpLn.Close()
		var ln net.Listener
		inNS(t, gw, func() {
			var err error
			lc := net.ListenConfig{Control: transparent}
			if ln, err = lc.Listen(t.Context(), "tcp", "[::]:12345"); err != nil {
				t.Errorf("listen transparent tcp: %v", err)
			}
		})
		if ln == nil {
			t.FailNow()
		}
		defer ln.Close()
		for _, dst := range []string{"198.51.100.9:80", "[2001:db8:99::9]:443"} {
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
			}()
			inNS(t, lan, func() {
				c, err := net.DialTimeout("tcp", dst, 2*time.Second)
				if err != nil {
					t.Errorf("dial %s from lan: %v", dst, err)
					return
				}
				c.Close()
			})
			select {
			case c := <-accepted:
				local := netip.MustParseAddrPort(c.LocalAddr().String())
				if got := netip.AddrPortFrom(local.Addr().Unmap(), local.Port()); got != netip.MustParseAddrPort(dst) {
					t.Errorf("accepted socket's local address = %v, want the original destination %v", got, dst)
				}
				c.Close()
			case <-time.After(2 * time.Second):
				t.Fatalf("tproxy listener accepted nothing for %s", dst)
			}
		}
	})

	t.Run("on_crash closed: tcp without a tproxy listener is reset, not forwarded", func(t *testing.T) {
		// The tproxy listener is closed now: TPROXY finds no socket and does
		// not match. Without the reject rule gw would forward the SYN and, having
		// no route, answer "unreachable".
		inNS(t, lan, func() {
			_, err := net.DialTimeout("tcp", "198.51.100.9:80", 2*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial with socksgate gone: %v, want connection refused", err)
			}
		})
	})

	t.Run("bypassed destination is not captured", func(t *testing.T) {
		inNS(t, lan, func() {
			c, err := net.DialTimeout("tcp", "10.9.9.9:80", 300*time.Millisecond)
			if err == nil {
				c.Close()
				t.Error("connection to a bypassed address was answered")
			}
		})
	})
}

// transparent sets IPV6_TRANSPARENT, which lets a dual-stack socket take
// TPROXY'd packets of both families.
func transparent(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	}); err != nil {
		return err
	}
	return serr
}
