package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message the way the kernel lays it out.
func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func sockaddr4(ap netip.AddrPort) []byte {
	var sa unix.RawSockaddrInet4
	sa.Family = unix.AF_INET
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	sa.Addr = ap.Addr().As4()
	return append([]byte(nil), (*[unix.SizeofSockaddrInet4]byte)(unsafe.Pointer(&sa))[:]...)
}

func sockaddr6(ap netip.AddrPort) []byte {
	var sa unix.RawSockaddrInet6
	sa.Family = unix.AF_INET6
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	sa.Addr = ap.Addr().As16()
	return append([]byte(nil), (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&sa))[:]...)
}

// The original destination is found in either family's control message, after unrelated
// ones, with v4-mapped IPv6 unmapped; anything else is ErrNoOriginalDst.
func TestOrigDstFromControlMessages(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.10:53")
	v6 := netip.MustParseAddrPort("[2001:db8:3::10]:5353")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), v4.Port())
	ttl := cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0})
	for _, tc := range []struct {
		name string
		oob  []byte
		want netip.AddrPort
	}{
		{"ipv4", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4)), v4},
		{"ipv6", cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6)), v6},
		{"v4-mapped ipv6", cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(mapped)), v4},
		{"after another message", append(append([]byte(nil), ttl...), cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4))...), v4},
		{"empty", nil, netip.AddrPort{}},
		{"only another message", ttl, netip.AddrPort{}},
		{"truncated sockaddr", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4)[:6]), netip.AddrPort{}},
		{"wrong family", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr6(v6)[:16]), netip.AddrPort{}},
		{"truncated header", cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4))[:10], netip.AddrPort{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := origDstFromOOB(tc.oob)
			if !tc.want.IsValid() {
				if !errors.Is(err, ErrNoOriginalDst) {
					t.Fatalf("got %v, %v; want ErrNoOriginalDst", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// The allocation-free decoder agrees with x/sys/unix's ParseSocketControlMessage and
// ParseOrigDstAddr wherever those find an original destination.
func FuzzOrigDstFromOOB(f *testing.F) {
	f.Add(cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(netip.MustParseAddrPort("203.0.113.10:53"))))
	f.Add(cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(netip.MustParseAddrPort("[2001:db8::1]:443"))))
	f.Add(append(cmsg(unix.SOL_IP, unix.IP_TTL, []byte{1, 0, 0, 0}), cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(netip.MustParseAddrPort("1.2.3.4:5")))...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		got, err := origDstFromOOB(oob)
		if err != nil && !errors.Is(err, ErrNoOriginalDst) {
			t.Fatalf("error %v does not wrap ErrNoOriginalDst", err)
		}
		msgs, perr := unix.ParseSocketControlMessage(oob)
		if perr != nil {
			return // the oracle gives up on malformed input; ours just must not panic
		}
		for i := range msgs {
			h := msgs[i].Header
			need := unix.SizeofSockaddrInet4
			if h.Level == unix.SOL_IPV6 {
				need = unix.SizeofSockaddrInet6
			}
			isOrig := h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR ||
				h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_ORIGDSTADDR
			if isOrig && len(msgs[i].Data) < need {
				// unix reads past (or panics on) a short message; ours refuses it.
				if err == nil {
					t.Fatalf("decoded %v from a short message", got)
				}
				return
			}
			sa, serr := unix.ParseOrigDstAddr(&msgs[i])
			if serr != nil {
				continue
			}
			var want netip.AddrPort
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				want = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
			case *unix.SockaddrInet6:
				want = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
			}
			if err != nil || got != want {
				// unix does not check the sockaddr's family; ours does, so a refusal is right
				// when the family does not fit the message.
				wantFam := uint16(unix.AF_INET)
				if msgs[i].Header.Level == unix.SOL_IPV6 {
					wantFam = unix.AF_INET6
				}
				if fam := binary.NativeEndian.Uint16(msgs[i].Data); err != nil && fam != wantFam {
					return
				}
				t.Fatalf("decoded %v, %v; unix says %v", got, err, want)
			}
			return
		}
	})
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for IP_TRANSPARENT sockets")
	}
}

// On loopback (no TPROXY needed: IP_RECVORIGDSTADDR reports the address a datagram was sent
// to), the dual-stack listener reads both families with the destination and an unmapped source.
func TestUDPListenerReadsOriginalDestination(t *testing.T) {
	needRoot(t)
	l, err := ListenUDPTransparent(context.Background(), "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.LocalAddr().(*net.UDPAddr).Port
	for _, host := range []string{"127.0.0.1", "::1"} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port))
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("ping " + host))
		buf := make([]byte, 100)
		l.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, src, gotDst, err := l.ReadDatagram(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != "ping "+host || gotDst != dst || src != c.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Errorf("%s: got %q from %s to %s", host, buf[:n], src, gotDst)
		}
		c.Close()
	}
}

// Reply sockets share an address with each other (SO_REUSEADDR) but not with a socket a local
// daemon bound without it (EADDRINUSE), and they send from the address they are bound to.
func TestListenReplyBindsTheRemoteAddress(t *testing.T) {
	needRoot(t)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	remote := netip.MustParseAddrPort("127.0.0.1:0")
	r1, err := ListenReply(remote, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	remote = r1.(interface{ LocalAddr() net.Addr }).LocalAddr().(*net.UDPAddr).AddrPort()
	r2, err := ListenReply(remote, nil)
	if err != nil {
		t.Fatalf("second reply socket on %s: %v", remote, err)
	}
	defer r2.Close()
	if _, err := r2.WriteToUDPAddrPort([]byte("pong"), client.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "pong" || from != remote {
		t.Fatalf("got %q from %s (%v), want pong from %s", buf[:n], from, err, remote)
	}

	daemon, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer daemon.Close()
	if _, err := ListenReply(daemon.LocalAddr().(*net.UDPAddr).AddrPort(), nil); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("reply socket on a daemon's port: %v, want EADDRINUSE", err)
	}
}
