package socksserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socksgate/socksgate/socks"
)

// maxDatagram bounds a relayed datagram, header included (the largest UDP payload).
const maxDatagram = 65535

// associate answers a UDP ASSOCIATE: it opens a relay socket on the local address the client
// reached us on, tells the client where it is, and returns the relay loop, which runs until
// the control connection ends.
//
// The association belongs to one socket of the client: its IP address is the control
// connection's, its port the one the client declared in its request, or, when the client
// declared port 0 (RFC 1928 allows it when the client does not know it yet), the port of the
// first datagram the relay takes from the client's address. Datagrams from any other source,
// other ports of the client's host included, are dropped and counted as foreign, and replies
// go only to that socket (dante does the same). Fragments (FRAG != 0) are dropped and counted.
func (s *Server) associate(ctx context.Context, c net.Conn, br *bufio.Reader, src netip.AddrPort, declared Target) (func(), error) {
	local := addrPortOf(c.LocalAddr()).Addr()
	network := "udp6"
	if local.Is4() {
		network = "udp4"
	}
	listen := s.ListenUDP
	if listen == nil {
		listen = net.ListenPacket
	}
	pc, err := listen(network, net.JoinHostPort(local.String(), "0"))
	if err != nil {
		writeReply5(c, socks.ReplyGeneralFailure, socks.Addr{})
		return nil, fmt.Errorf("udp associate: open relay socket: %w", err)
	}
	r := &udpRelay{stats: s.counters(), pc: pc, clientIP: src.Addr(), user: declared.User}
	if declared.Host == "" && declared.Addr.Port() != 0 {
		r.peer.Store(ptr(netip.AddrPortFrom(src.Addr(), declared.Addr.Port())))
	}
	sess, err := s.Tunneler.OpenUDP(ctx, src, r.deliver)
	if err != nil {
		pc.Close()
		writeReply5(c, ReplyCode(err), socks.Addr{})
		return nil, fmt.Errorf("udp associate: %w", err)
	}
	r.sess = sess
	bound := socks.AddrFromAddrPort(addrPortOf(pc.LocalAddr()))
	if err := writeReply5(c, socks.ReplySucceeded, bound); err != nil {
		pc.Close()
		sess.Close()
		return nil, fmt.Errorf("udp associate: write reply: %w", err)
	}
	return func() {
		c.SetDeadline(time.Time{})
		// The association lives as long as the control connection: when the client closes
		// it (or it breaks), or the server shuts down, the relay socket closes too.
		go func() {
			io.Copy(io.Discard, br)
			pc.Close()
		}()
		ended := ctx
		if es, ok := sess.(endingUDPSession); ok {
			ended = es.Context() // the gateway's, which the server's ends too
		}
		stop := context.AfterFunc(ended, func() { c.Close() })
		r.loop(ctx)
		stop()
		c.Close()
		sess.Close()
	}, nil
}

func ptr[T any](v T) *T { return &v }

// udpRelay is one association's relay socket.
type udpRelay struct {
	stats    *UDPCounters
	pc       net.PacketConn
	sess     UDPSession
	clientIP netip.Addr
	user     string // the association's authenticated user, on every datagram's Target
	// peer is the client's socket: datagrams are taken only from it and replies go only to
	// it. It is declared, or else set once, by loop, from the first datagram it relays.
	peer atomic.Pointer[netip.AddrPort]

	wmu  sync.Mutex
	wbuf []byte
}

func (r *udpRelay) loop(ctx context.Context) {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		ap := addrPortOf(from)
		peer := r.peer.Load()
		if ap.Addr() != r.clientIP || (peer != nil && ap != *peer) {
			r.stats.foreign.Add(1)
			continue
		}
		h, hl, err := socks.ParseUDPHeader(buf[:n])
		if err != nil {
			r.stats.malformed.Add(1)
			continue
		}
		if h.Frag != 0 {
			r.stats.frag.Add(1)
			continue
		}
		var t Target
		if h.Addr.IsName() {
			t = targetFromName(ap, h.Addr.Name, h.Addr.Port)
		} else {
			a, _ := h.Addr.AddrPort()
			t = Target{Src: ap, Addr: a, Port: a.Port()}
		}
		if t.check() != nil {
			r.stats.malformed.Add(1)
			continue
		}
		t.User = r.user
		if peer == nil {
			r.peer.Store(ptr(ap)) // the first datagram relayed binds the association
		}
		if err := r.sess.Send(ctx, buf[hl:n], t); err != nil {
			r.stats.dropped.Add(1)
		}
	}
}

// deliver sends a reply from a remote to the client, with the remote in the SOCKS5 header.
func (r *udpRelay) deliver(payload []byte, from socks.Addr) {
	p := r.peer.Load()
	if p == nil {
		r.stats.dropped.Add(1)
		return
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	b, err := socks.AppendUDPHeader(r.wbuf[:0], socks.UDPHeader{Addr: from})
	if err != nil {
		r.stats.dropped.Add(1)
		return
	}
	b = append(b, payload...)
	r.wbuf = b[:0]
	if _, err := r.pc.WriteTo(b, net.UDPAddrFromAddrPort(*p)); err != nil {
		r.stats.dropped.Add(1)
	}
}
