package socksserver

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/socksgate/socksgate/socks"
)

// FuzzServeConn feeds arbitrary client bytes to the server's handshake: it must answer or close,
// never panic or hang past the handshake timeout.
func FuzzServeConn(f *testing.F) {
	for _, s := range [][]byte{
		{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80},
		{5, 1, 0, 5, 1, 0, 3, 7, 'a', '.', 'b', '.', 'c', 'd', 'e', 1, 187, 'x'},
		{5, 1, 0, 5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53},
		{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w', 5, 1, 0, 1, 1, 2, 3, 4, 0, 80},
		{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0},
		{5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80},
		{4, 1, 0, 80, 1, 2, 3, 4, 'u', 0},
		{4, 1, 0, 80, 0, 0, 0, 1, 0, 'w', 'e', 'b', 0},
		{4, 2, 0, 80, 1, 2, 3, 4, 0},
		{5, 0}, {5, 255}, {4}, {'G', 'E', 'T'}, {5, 1, 0, 5, 1, 0, 9},
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	for _, s := range hostileSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		s := &Server{Tunneler: &fakeTunneler{}, HandshakeTimeout: 100 * time.Millisecond}
		if auth {
			s.Authenticate = func(u, p string) bool { return u == "alice" && p == "pw" }
		}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() { s.ServeConn(context.Background(), server); close(done) }()
		go func() { client.Write(in) }()
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		go io.Copy(io.Discard, client)
		select {
		case <-done:
		case <-time.After(300 * time.Millisecond):
			// Past the handshake timeout only a granted CONNECT (an echo) or a UDP
			// association may still be open; closing the client must end them.
		}
		client.Close()
		<-done
	})
}

// readConn is a net.Conn whose reads come from a byte slice and whose writes vanish.
type readConn struct {
	net.Conn // nil; only the methods below are used
	r        *bytes.Reader
}

func (c *readConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *readConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *readConn) Close() error                { return nil }
func (c *readConn) SetDeadline(time.Time) error { return nil }
func (c *readConn) LocalAddr() net.Addr         { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080} }
func (c *readConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *readConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandshake is the fast path of FuzzServeConn: the server's request parsing over an
// in-memory connection, many thousands of inputs a second.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, false)
	f.Add([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w', 5, 1, 0, 3, 1, 'x', 0, 80}, true)
	f.Add([]byte{4, 1, 0, 80, 0, 0, 0, 1, 'u', 0, 'w', 'e', 'b', 0}, false)
	f.Add([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, false)
	for _, s := range hostileSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		ft := &fakeTunneler{err: ErrNotAllowed}
		s := &Server{Tunneler: ft}
		if auth {
			s.Authenticate = func(u, p string) bool { return u == "alice" && p == "pw" }
		}
		c := &readConn{r: bytes.NewReader(in)}
		handoff, err := s.handshake(context.Background(), c, bufio.NewReaderSize(c, 512), netip.MustParseAddrPort("127.0.0.1:40000"))
		if err == nil && handoff == nil {
			t.Fatal("no error and nothing to do")
		}
		if handoff != nil {
			handoff()
		}
		// Whatever the client sent, the Tunneler is only handed a remote destination.
		for _, tg := range ft.targets {
			if err := tg.check(); err != nil {
				t.Fatalf("the Tunneler was handed %v: %v", tg, err)
			}
		}
	})
}

// hostileSeeds are requests at the limits of each field and destinations naming no remote
// host, for both handshake fuzzers.
func hostileSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	x := func(n int) []byte { return bytes.Repeat([]byte{'x'}, n) }
	zoned := []byte("::ffff:192.0.2.1%eth0")
	methods := make([]byte, 255)
	for i := range methods {
		methods[i] = byte(i + 1) // 0x01..0xff, no "no authentication"
	}
	return [][]byte{
		cat([]byte{5, 255}, methods),                                 // every method but 0
		cat([]byte{5, 255}, methods[:254], []byte{0}),                // 0 last of 255
		cat([]byte{5, 1, 2, 1, 255}, x(255), []byte{255}, x(255)),    // longest username/password
		cat([]byte{5, 1, 2, 1, 0, 0}),                                // empty username/password
		cat([]byte{5, 1, 2, 1, 5}, []byte("alice"), []byte{2, 'p'}),  // truncated password
		cat([]byte{5, 1, 0, 5, 1, 0, 3, 255}, x(255), []byte{0, 80}), // longest name
		cat([]byte{5, 1, 0, 5, 1, 0, 3, byte(len(zoned))}, zoned, []byte{0, 80}),
		{5, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 80},                                // 0.0.0.0
		{5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 1, 0, 0},                               // port 0
		{5, 1, 0, 5, 1, 0, 1, 192, 0, 2},                                        // truncated address
		cat([]byte{4, 1, 0, 80, 192, 0, 2, 1}, x(255), []byte{0}),               // longest SOCKS4 user id
		cat([]byte{4, 1, 0, 80, 192, 0, 2, 1}, x(256), []byte{0}),               // one too long
		cat([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, x(255), []byte{0}),              // longest SOCKS4a name
		cat([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0}, zoned, []byte{0}),               // SOCKS4a zoned name
		{4, 1, 0, 80, 0, 0, 0, 1, 0, 0},                                         // SOCKS4a empty name
		{4, 1, 0, 80, 0, 0, 0, 0, 0},                                            // SOCKS4 0.0.0.0
		{4, 1, 0, 0, 192, 0, 2, 1, 0},                                           // SOCKS4 port 0
		{4, 3, 0, 80, 192, 0, 2, 1, 0},                                          // SOCKS4 command 3
		cat([]byte{5, 1, 0, 5, 3, 0, 3, byte(len(zoned))}, zoned, []byte{0, 0}), // associate, declared zoned name
	}
}

// datagramConn is a net.PacketConn whose reads are a list of datagrams, then a closed socket.
type datagramConn struct {
	net.PacketConn // nil; only the methods below are used
	in             [][]byte
	from           []netip.AddrPort
}

func (c *datagramConn) ReadFrom(p []byte) (int, net.Addr, error) {
	if len(c.in) == 0 {
		return 0, nil, net.ErrClosed
	}
	n := copy(p, c.in[0])
	from := net.UDPAddrFromAddrPort(c.from[0])
	c.in, c.from = c.in[1:], c.from[1:]
	return n, from, nil
}

func (c *datagramConn) WriteTo(p []byte, to net.Addr) (int, error) { return len(p), nil }

// recordSession is a UDPSession that keeps the destinations it is asked to send to.
type recordSession struct{ dsts []Target }

func (s *recordSession) Send(_ context.Context, _ []byte, t Target) error {
	s.dsts = append(s.dsts, t)
	return nil
}

func (s *recordSession) Close() error { return nil }

// FuzzUDPRelay feeds arbitrary datagrams, from the client's socket or from another port of its
// host, to an association's relay loop: it never panics, every datagram is relayed or counted
// as dropped, only remote destinations are relayed, and only from one client socket.
func FuzzUDPRelay(f *testing.F) {
	ok, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}})
	name, _ := socks.AppendUDPHeader(nil, socks.UDPHeader{Addr: socks.Addr{Name: "dns.test", Port: 53}})
	f.Add(append(ok, 'q'), append(name, 'q'), false)
	f.Add(append(ok, 'q'), append(name, 'q'), true)
	f.Add([]byte{0, 0, 1, 1, 192, 0, 2, 1, 0, 53}, []byte{0, 0}, false)
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 53}, []byte{0, 0, 0, 3, 21, ':', ':', 'f', 'f', 'f', 'f', ':', '1', '9', '2', '.', '0', '.', '2', '.', '1', '%', 'e', 't', 'h', '0', 0, 53}, true)
	f.Add([]byte{0, 0, 0, 4}, append(ok[:len(ok):len(ok)], 0, 0), false)
	f.Fuzz(func(t *testing.T, first, second []byte, otherPort bool) {
		client := netip.MustParseAddrPort("127.0.0.1:40000")
		src2 := client
		if otherPort {
			src2 = netip.MustParseAddrPort("127.0.0.1:40001")
		}
		pc := &datagramConn{in: [][]byte{first, second}, from: []netip.AddrPort{client, src2}}
		sess := &recordSession{}
		r := &udpRelay{stats: &UDPCounters{}, pc: pc, sess: sess, clientIP: client.Addr()}
		r.loop(context.Background())
		st := r.stats.Load()
		if got := uint64(len(sess.dsts)) + st.Foreign + st.Fragmented + st.Malformed; got != 2 {
			t.Fatalf("%d datagrams relayed, stats %+v: want each of 2 relayed or counted once", len(sess.dsts), st)
		}
		for _, d := range sess.dsts {
			if err := d.check(); err != nil {
				t.Fatalf("relayed to %v: %v", d, err)
			}
			if d.Src != sess.dsts[0].Src {
				t.Fatalf("relayed datagrams from %v and %v: an association has one client socket", sess.dsts[0].Src, d.Src)
			}
		}
		r.deliver([]byte("reply"), socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53})
	})
}
