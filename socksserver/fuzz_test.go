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
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		s := &Server{Tunneler: &fakeTunneler{err: ErrNotAllowed}}
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
	})
}
