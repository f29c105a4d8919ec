package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

func TestReadWriteEOFAndDeadline(t *testing.T) {
	if !supported {
		t.Skip("raw I/O is Linux only")
	}
	a, b := testutil.TCPPair(t)
	x := Get(b)
	if x == nil {
		t.Fatal("Get returned nil for a *net.TCPConn")
	}
	defer x.Put()

	// A write larger than the socket buffers waits in the poller for the reader.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(io.LimitReader(a, int64(len(big))))
		got <- buf
	}()
	if n, err := x.Write(big); err != nil || n != len(big) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if r := <-got; !bytes.Equal(r, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(r))
	}

	// A read waits for data.
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write([]byte("hello"))
	}()
	buf := make([]byte, 16)
	if n, err := x.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read: %q, %v", buf[:n], err)
	}

	// The read deadline applies, and is a net.Error timeout as net's own.
	b.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	_, err := x.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read error %v is not a read *net.OpError", err)
	}
	b.SetReadDeadline(time.Time{})

	// End of stream is io.EOF.
	a.CloseWrite()
	if n, err := x.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read at end of stream: %d, %v", n, err)
	}

	// A closed socket says so.
	b.Close()
	if _, err := x.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed socket: %v, want net.ErrClosed", err)
	}
}

// A peer that has gone is an error on write, not a SIGPIPE.
func TestWriteToGonePeer(t *testing.T) {
	if !supported {
		t.Skip("raw I/O is Linux only")
	}
	a, b := testutil.TCPPair(t)
	a.SetLinger(0)
	a.Close() // reset
	var err error
	for range 100 {
		if _, err = Write(b, []byte("x")); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset peer kept succeeding")
	}
}

// Anything but a *net.TCPConn is read and written as it is: a wrapper may hold bytes of its own.
func TestOtherConnsAreLeftAlone(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if Get(p) != nil {
		t.Fatal("Get took a net.Pipe")
	}
	r, done := Reader(p)
	defer done()
	if r != io.Reader(p) {
		t.Fatal("Reader did not return the conn itself")
	}
	go q.Write([]byte("ok"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// ReadNow takes what is there and never waits.
func TestReadNow(t *testing.T) {
	if !supported {
		t.Skip("raw I/O is Linux only")
	}
	a, b := testutil.TCPPair(t)
	x := Get(b)
	defer x.Put()
	buf := make([]byte, 16)
	if n, err := x.ReadNow(buf); n != 0 || !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("nothing there: %d, %v, want ErrWouldBlock", n, err)
	}
	a.Write([]byte("now"))
	var n int
	var err error
	testutil.WaitUntil(t, "the bytes arrive", func() bool {
		n, err = x.ReadNow(buf)
		return !errors.Is(err, ErrWouldBlock)
	})
	if err != nil || string(buf[:n]) != "now" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	a.CloseWrite()
	testutil.WaitUntil(t, "end of stream", func() bool {
		n, err = x.ReadNow(buf)
		return !errors.Is(err, ErrWouldBlock)
	})
	if n != 0 || err != io.EOF {
		t.Fatalf("at end of stream: %d, %v", n, err)
	}
}

type socketWrapper struct{ *net.TCPConn }

func (w socketWrapper) TCPSocket() *net.TCPConn { return w.TCPConn }

// A wrapper that says it is its socket (Socket) is read and written raw.
func TestSocketWrapper(t *testing.T) {
	if !supported {
		t.Skip("raw I/O is Linux only")
	}
	a, b := testutil.TCPPair(t)
	x := Get(socketWrapper{b})
	if x == nil {
		t.Fatal("Get refused a Socket")
	}
	defer x.Put()
	a.Write([]byte("hi"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(x, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
}
