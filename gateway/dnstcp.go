package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/upstream"
)

// dnsPort is the destination port whose datagrams dns_over_tcp carries over TCP.
const dnsPort = 53

const (
	dnsQueueLen  = 32 // queries waiting per DNS server while its connection opens or writes
	dnsReplyLen  = 64 // replies waiting for the session's reader
	dnsMaxMsgLen = 65535
	// dnsMaxStreams bounds the DNS servers one session talks to at once, and dnsMaxStreamsTotal
	// the connections of all sessions together: each holds a descriptor and two goroutines.
	dnsMaxStreams      = 8
	dnsMaxStreamsTotal = 1024
	// dnsReplyWait is how long a connection waits for the server after a query before it is
	// taken for dead (a path that died without a reset would swallow every later query).
	dnsReplyWaitDefault = 10 * time.Second
)

// dnsStreams counts the DNS-over-TCP connections open, against dnsMaxStreamsTotal.
var dnsStreams atomic.Int64

// fallbackConn is a session's way out through an upstream that carries no UDP: DNS datagrams
// (destination port 53, when dnsTCP) go as DNS over TCP (RFC 7766: each message prefixed by its
// 2-byte length) through the upstream's TCP, one pipelined connection per DNS server; any other
// datagram goes to other (a direct socket, when udp_without_support is direct) or is refused
// with unsupported. Writes never block: each DNS server has a bounded queue.
type fallbackConn struct {
	ctx         context.Context // ended by Close: the open's own ended when it returned
	cancel      context.CancelFunc
	up          upstream.Upstream
	dnsTCP      bool
	other       nat.UDPConn // nil: non-DNS datagrams are refused
	unsupported error
	dialTimeout time.Duration
	replyWait   time.Duration // dnsReplyWaitDefault; tests shorten it

	replies chan dnsReply
	done    chan struct{}
	once    sync.Once

	mu      sync.Mutex
	streams map[netip.AddrPort]*dnsStream
}

type dnsReply struct {
	b    []byte
	from netip.AddrPort
}

type dnsStream struct {
	queue chan []byte
	mu    sync.Mutex
	conn  net.Conn // set once dialed
}

func newFallbackConn(up upstream.Upstream, dnsTCP bool, other nat.UDPConn, unsupported error, dialTimeout, replyWait time.Duration) *fallbackConn {
	if replyWait <= 0 {
		replyWait = dnsReplyWaitDefault
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &fallbackConn{
		ctx: ctx, cancel: cancel, up: up, dnsTCP: dnsTCP, other: other, unsupported: unsupported, dialTimeout: dialTimeout, replyWait: replyWait,
		replies: make(chan dnsReply, dnsReplyLen),
		done:    make(chan struct{}),
		streams: make(map[netip.AddrPort]*dnsStream),
	}
	if other != nil {
		go c.readOther()
	}
	return c
}

// WriteToAddrPort queues a DNS query for its server's TCP connection, or sends any other
// datagram the udp_without_support way.
func (c *fallbackConn) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	if !c.dnsTCP || dst.Port() != dnsPort {
		if c.other == nil {
			return 0, c.unsupported
		}
		return c.other.WriteToAddrPort(b, dst)
	}
	if len(b) > dnsMaxMsgLen {
		return 0, errors.New("dns over tcp: message too long")
	}
	s, err := c.stream(dst)
	if err != nil {
		return 0, err
	}
	msg := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(msg, uint16(len(b)))
	copy(msg[2:], b)
	select {
	case s.queue <- msg:
		return len(b), nil
	default:
		return 0, fmt.Errorf("dns over tcp to %s: queue full", dst)
	}
}

// stream returns the live stream to the DNS server dst, starting one if there is none and the
// bounds allow it.
func (c *fallbackConn) stream(dst netip.AddrPort) (*dnsStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[dst]; s != nil {
		return s, nil
	}
	if len(c.streams) >= dnsMaxStreams {
		return nil, fmt.Errorf("dns over tcp to %s: this session already talks to %d DNS servers", dst, dnsMaxStreams)
	}
	if dnsStreams.Add(1) > dnsMaxStreamsTotal {
		dnsStreams.Add(-1)
		return nil, fmt.Errorf("dns over tcp to %s: %d connections open, the most allowed", dst, dnsMaxStreamsTotal)
	}
	s := &dnsStream{queue: make(chan []byte, dnsQueueLen)}
	c.streams[dst] = s
	go c.runStream(dst, s)
	return s, nil
}

// runStream dials the DNS server through the upstream, writes queued queries and reads replies
// until either side fails or the session ends; the next query then opens a new connection.
func (c *fallbackConn) runStream(dst netip.AddrPort, s *dnsStream) {
	defer func() {
		c.mu.Lock()
		if c.streams[dst] == s {
			delete(c.streams, dst)
		}
		c.mu.Unlock()
		dnsStreams.Add(-1)
	}()
	ctx := c.ctx
	if c.dialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.dialTimeout)
		defer cancel()
	}
	conn, err := c.up.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conn = conn
	s.mu.Unlock()
	stop := context.AfterFunc(c.ctx, func() { conn.Close() })
	defer stop()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer conn.Close()
		c.readReplies(conn, dst)
	}()
	for {
		select {
		case msg := <-s.queue:
			if _, err := conn.Write(msg); err != nil {
				conn.Close()
				<-readDone
				return
			}
			// An answer is due: a server silent this long ends the connection (the reader
			// fails on the deadline), and the next query opens a new one.
			conn.SetReadDeadline(time.Now().Add(c.replyWait))
		case <-readDone:
			return
		case <-c.done:
			conn.Close()
			<-readDone
			return
		}
	}
}

// readReplies reads length-prefixed DNS messages and hands them to the session's reader as
// datagrams from the server.
func (c *fallbackConn) readReplies(conn net.Conn, from netip.AddrPort) {
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(conn, msg); err != nil {
			return
		}
		select {
		case c.replies <- dnsReply{msg, from}:
		case <-c.done:
			return
		}
	}
}

func (c *fallbackConn) readOther() {
	buf := make([]byte, nat.DefaultUDPMaxReply)
	for {
		n, from, err := c.other.ReadFromAddrPort(buf)
		if err != nil {
			return
		}
		select {
		case c.replies <- dnsReply{append([]byte(nil), buf[:n]...), from}:
		case <-c.done:
			return
		}
	}
}

// ReadFromAddrPort returns the next reply, DNS or other.
func (c *fallbackConn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	select {
	case r := <-c.replies:
		if len(r.b) > len(b) {
			// Longer than the client can be sent (a large DNSSEC answer): a cut message would be
			// malformed, so it gets the header and question with TC set, and asks again over
			// TCP, which is captured like any TCP.
			return copy(b, dnsTruncated(r.b)), r.from, nil
		}
		return copy(b, r.b), r.from, nil
	case <-c.done:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

// dnsTruncated is msg cut to its header and question section with the TC bit set and no
// records, as a server answers over UDP what does not fit; the header alone when the question
// cannot be parsed.
func dnsTruncated(msg []byte) []byte {
	if len(msg) < 12 {
		return msg
	}
	end, qd := 12, int(binary.BigEndian.Uint16(msg[4:6]))
	for range qd {
		for end < len(msg) && msg[end] != 0 {
			if msg[end]&0xC0 != 0 { // a compression pointer ends the name
				end++
				break
			}
			end += 1 + int(msg[end])
		}
		end += 1 + 4 // the name's last byte, QTYPE and QCLASS
		if end > len(msg) {
			end, qd = 12, 0
			break
		}
	}
	out := append([]byte(nil), msg[:end]...)
	out[2] |= 0x02 // TC
	binary.BigEndian.PutUint16(out[4:6], uint16(qd))
	clear(out[6:12]) // ANCOUNT, NSCOUNT, ARCOUNT
	return out
}

// Close ends every DNS connection and the direct socket.
func (c *fallbackConn) Close() error {
	c.once.Do(func() {
		c.cancel()
		close(c.done)
		if c.other != nil {
			c.other.Close()
		}
		c.mu.Lock()
		for _, s := range c.streams {
			s.mu.Lock()
			if s.conn != nil {
				s.conn.Close()
			}
			s.mu.Unlock()
		}
		c.mu.Unlock()
	})
	return nil
}
