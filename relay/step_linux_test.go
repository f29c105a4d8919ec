package relay

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

// relayed starts a relay between two fresh loopback pairs: client ↔ (a, relay, b) ↔ server;
// a buffer size above 0 is b's send and the server's receive buffer.
func relayed(t *testing.T, buffer int) (client, server *net.TCPConn, done <-chan [2]int64) {
	t.Helper()
	client, a := testutil.TCPPair(t)
	b, server := testutil.TCPPair(t)
	if buffer > 0 {
		b.SetWriteBuffer(buffer)
		server.SetReadBuffer(buffer)
	}
	ch := make(chan [2]int64, 1)
	r := New(Auto, a, b, func(up, down int64, err error) {
		if err != nil {
			t.Errorf("relay ended with %v", err)
		}
		ch <- [2]int64{up, down}
	})
	r.Start()
	return client, server, ch
}

func waitDone(t *testing.T, done <-chan [2]int64) [2]int64 {
	t.Helper()
	select {
	case n := <-done:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
		return [2]int64{}
	}
}

// A short flow (a request, its answer, the server's close, then the client's) runs from the
// relay's start to its end on the parker's goroutine: no goroutine of its own, where a relay
// used to start two per flow.
func TestShortFlowNeedsNoGoroutine(t *testing.T) {
	before := spawned.Load()
	for range 20 {
		client, server, done := relayed(t, 0)
		req, resp := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
		if _, err := client.Write(req); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(req))
		if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, req) {
			t.Fatalf("server read %q, %v", got, err)
		}
		server.Write(resp)
		server.Close()
		all, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(all, resp) {
			t.Fatalf("client read %q, %v", all, err)
		}
		client.Close()
		if n := waitDone(t, done); n != [2]int64{int64(len(req)), int64(len(resp))} {
			t.Fatalf("relay counted %v bytes, want %d up, %d down", n, len(req), len(resp))
		}
	}
	if n := spawned.Load() - before; n != 0 {
		t.Errorf("20 short flows started %d relay goroutines, want 0", n)
	}
}

// A destination that stops taking bytes (its peer does not read, its buffers fill) makes the
// parker hand the direction to a goroutine with what it read and could not write: every byte
// arrives, in order, once the destination reads again.
func TestFullDestinationHandsOverUnwrittenBytes(t *testing.T) {
	before := spawned.Load()
	client, server, done := relayed(t, 32<<10)
	var want bytes.Buffer
	go func() {
		chunk := make([]byte, 1000) // under a buffer's size: the parker, not bulk, takes each
		for i := range 2000 {
			for j := range chunk {
				chunk[j] = byte(i + j)
			}
			if _, err := client.Write(chunk); err != nil {
				t.Errorf("client write: %v", err)
				return
			}
		}
		client.CloseWrite()
	}()
	for i := range 2000 {
		for j := range 1000 {
			want.WriteByte(byte(i + j))
		}
	}
	time.Sleep(200 * time.Millisecond) // the server reads nothing meanwhile: its side fills
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("server read %d bytes (%v), want %d, intact", len(got), err, want.Len())
	}
	server.Close()
	if n := waitDone(t, done); n[0] != int64(want.Len()) {
		t.Fatalf("relay counted %d bytes up, want %d", n[0], want.Len())
	}
	if spawned.Load() == before {
		t.Error("a full destination did not give the direction a goroutine")
	}
}
