package nat

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
)

// UDPListener is the transparent UDP socket TPROXY delivers captured datagrams to. Each
// datagram carries its original destination in a control message.
type UDPListener struct {
	conn  *net.UDPConn
	rc    syscall.RawConn
	oob   []byte
	laddr net.Addr

	mu     sync.Mutex
	raw    *udploop.Conn // once WatchDatagrams moved the socket into a loop
	closed bool
}

// ListenUDPTransparent opens the TPROXY listener on addr, e.g. "[::]:12345": one dual-stack
// socket takes both families. IPV6_TRANSPARENT, IP_TRANSPARENT, IPV6_RECVORIGDSTADDR and
// IP_RECVORIGDSTADDR are set before bind (an IPv4 addr gets only the IPv4 options). It needs
// CAP_NET_ADMIN.
func ListenUDPTransparent(ctx context.Context, addr string) (*UDPListener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("transparent udp listener %q: %w", addr, err)
	}
	v4 := ap.Addr().Is4()
	network := "udp"
	if v4 {
		network = "udp4"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setSockopts(c, listenerOpts(v4))
	}}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("transparent udp listener %s: %w", addr, err)
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("transparent udp listener %s: %w", addr, err)
	}
	return &UDPListener{conn: uc, rc: rc, oob: make([]byte, origDstOOBSize), laddr: uc.LocalAddr()}, nil
}

type sockopt struct {
	level, name int
	what        string
}

func listenerOpts(v4 bool) []sockopt {
	opts := []sockopt{
		{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"},
		{unix.SOL_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR"},
	}
	if !v4 {
		opts = append(opts,
			sockopt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"},
			sockopt{unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR"})
	}
	return opts
}

func setSockopts(c syscall.RawConn, opts []sockopt) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range opts {
			if err := unix.SetsockoptInt(int(fd), o.level, o.name, 1); err != nil {
				serr = fmt.Errorf("setsockopt %s: %w", o.what, err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// ReadDatagram reads one captured datagram into b and returns its client (src) and original
// destination (dst), IPv4 ones unmapped. A datagram without the control message (not
// delivered by TPROXY) returns an error wrapping ErrNoOriginalDst. Not safe for concurrent
// use: one goroutine reads.
func (l *UDPListener) ReadDatagram(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	n, oobn, _, src, err := l.conn.ReadMsgUDPAddrPort(b, l.oob)
	if err != nil {
		return 0, netip.AddrPort{}, netip.AddrPort{}, err
	}
	dst, err := origDstFromOOB(l.oob[:oobn])
	if err != nil {
		return n, unmapAddrPort(src), netip.AddrPort{}, fmt.Errorf("datagram from %s: %w", src, err)
	}
	return n, unmapAddrPort(src), dst, nil
}

// origDstOOBSize holds the original destination's control message, of either family.
var origDstOOBSize = unix.CmsgSpace(unix.SizeofSockaddrInet6) * 2

// listenerBatch is how many captured datagrams one recvmmsg takes at most.
const listenerBatch = 8

// ServeDatagrams reads captured datagrams in batches (recvmmsg) and calls fn for each, with
// its client and original destination (err wraps ErrNoOriginalDst for a datagram without
// one), until the listener fails or is closed. b is valid only during fn. Not to be used
// with ReadDatagram at the same time.
func (l *UDPListener) ServeDatagrams(fn func(b []byte, src, dst netip.AddrPort, err error)) error {
	batch := udpbatch.New(listenerBatch, maxDatagram, origDstOOBSize)
	same := func() *udpbatch.Batch { return batch }
	return udpbatch.Serve(l.rc, same, func(*udpbatch.Batch) {}, func(b *udpbatch.Batch, n int) bool {
		for i := range n {
			dst, err := origDstFromOOB(b.OOB[i][:b.OOBN[i]])
			if err != nil {
				err = fmt.Errorf("datagram from %s: %w", b.From[i], err)
			}
			fn(b.Bufs[i][:b.N[i]], b.From[i], dst, err)
		}
		return true
	})
}

// WatchDatagrams moves the listener's socket into loop, which reads it in batches (recvmmsg)
// and calls fn for each captured datagram as ServeDatagrams does, from the loop's goroutine.
// done yields when the listener is closed (nil) or its socket fails. ReadDatagram and
// ServeDatagrams are not used afterwards.
func (l *UDPListener) WatchDatagrams(loop *udploop.Loop, fn func(b []byte, src, dst netip.AddrPort, err error)) (<-chan error, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.raw != nil {
		return nil, net.ErrClosed
	}
	raw, err := udploop.Dup(l.conn)
	if err != nil {
		return nil, err
	}
	batch := udpbatch.New(listenerBatch, maxDatagram, origDstOOBSize)
	done := make(chan error, 1)
	err = loop.WatchBatches(raw, batch, func(b *udpbatch.Batch, n int) {
		for i := range n {
			dst, err := origDstFromOOB(b.OOB[i][:b.OOBN[i]])
			if err != nil {
				err = fmt.Errorf("datagram from %s: %w", b.From[i], err)
			}
			fn(b.Bufs[i][:b.N[i]], b.From[i], dst, err)
		}
	}, func(err error) { done <- err })
	if err != nil {
		raw.Close()
		return nil, err
	}
	l.raw = raw
	l.conn.Close() // off Go's poller; the socket lives on in raw
	return done, nil
}

// LocalAddr is the listener's address.
func (l *UDPListener) LocalAddr() net.Addr { return l.laddr }

// Close closes the listener; a pending ReadDatagram returns net.ErrClosed.
func (l *UDPListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.raw != nil {
		return l.raw.Close()
	}
	return l.conn.Close()
}

// cmsgAlign rounds n up the way CMSG_ALIGN does.
func cmsgAlign(n int) int { return unix.CmsgSpace(n) - unix.CmsgSpace(0) }

// origDstFromOOB finds IP_ORIGDSTADDR or IPV6_ORIGDSTADDR among the control messages and
// decodes its sockaddr, without allocating. It agrees with unix.ParseSocketControlMessage
// followed by unix.ParseOrigDstAddr (FuzzOrigDstFromOOB checks that), which allocate on every
// datagram.
func origDstFromOOB(oob []byte) (netip.AddrPort, error) {
	lenSize := unix.SizeofCmsghdr - 8 // cmsg_len is a size_t, then two int32s
	for len(oob) >= unix.SizeofCmsghdr {
		var l uint64
		if lenSize == 8 {
			l = binary.NativeEndian.Uint64(oob)
		} else {
			l = uint64(binary.NativeEndian.Uint32(oob))
		}
		level := int32(binary.NativeEndian.Uint32(oob[lenSize:]))
		typ := int32(binary.NativeEndian.Uint32(oob[lenSize+4:]))
		if l < uint64(unix.SizeofCmsghdr) || l > uint64(len(oob)) {
			break
		}
		data := oob[cmsgAlign(unix.SizeofCmsghdr):l]
		switch {
		case level == unix.SOL_IP && typ == unix.IP_ORIGDSTADDR:
			if len(data) < unix.SizeofSockaddrInet4 {
				return netip.AddrPort{}, fmt.Errorf("%w: short IP_ORIGDSTADDR", ErrNoOriginalDst)
			}
			if binary.NativeEndian.Uint16(data) != unix.AF_INET {
				return netip.AddrPort{}, fmt.Errorf("%w: IP_ORIGDSTADDR of family %d", ErrNoOriginalDst, binary.NativeEndian.Uint16(data))
			}
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(data[4:8])), binary.BigEndian.Uint16(data[2:4])), nil
		case level == unix.SOL_IPV6 && typ == unix.IPV6_ORIGDSTADDR:
			if len(data) < unix.SizeofSockaddrInet6 {
				return netip.AddrPort{}, fmt.Errorf("%w: short IPV6_ORIGDSTADDR", ErrNoOriginalDst)
			}
			if binary.NativeEndian.Uint16(data) != unix.AF_INET6 {
				return netip.AddrPort{}, fmt.Errorf("%w: IPV6_ORIGDSTADDR of family %d", ErrNoOriginalDst, binary.NativeEndian.Uint16(data))
			}
			a := netip.AddrFrom16([16]byte(data[8:24])).Unmap()
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(data[2:4])), nil
		}
		next := cmsgAlign(int(l))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.AddrPort{}, fmt.Errorf("%w: no IP_ORIGDSTADDR/IPV6_ORIGDSTADDR control message", ErrNoOriginalDst)
}

// ListenReply opens the socket that sends replies to clients from remote's address: an
// IP(V6)_TRANSPARENT socket with SO_REUSEADDR bound to remote, so several sessions can answer
// from the same remote, with control applied last (socksgate's SO_MARK hook, so the reply is
// never captured). When a local process holds remote's port without SO_REUSEADDR the bind fails
// with EADDRINUSE.
//
// On Linux the socket is taken off Go's poller (internal/udploop): it is only written to, and
// in the poller each datagram sent would wake a thread for its write space.
func ListenReply(remote netip.AddrPort, control func(network, address string, c syscall.RawConn) error) (ReplyConn, error) {
	remote = unmapAddrPort(remote)
	network := "udp6"
	opts := []sockopt{{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"}}
	if remote.Addr().Is4() {
		network = "udp4"
		opts = append(opts, sockopt{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"})
	} else {
		opts = append(opts, sockopt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"})
	}
	lc := net.ListenConfig{Control: func(nw, addr string, c syscall.RawConn) error {
		if err := setSockopts(c, opts); err != nil {
			return err
		}
		if control != nil {
			return control(nw, addr, c)
		}
		return nil
	}}
	pc, err := lc.ListenPacket(context.Background(), network, remote.String())
	if err != nil {
		return nil, fmt.Errorf("reply socket on %s: %w", remote, err)
	}
	rc, err := udploop.Detach(pc.(*net.UDPConn))
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("reply socket on %s: %w", remote, err)
	}
	return rc, nil
}
