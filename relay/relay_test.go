package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

// The client half-closes after its request; the server still answers through the relay, and
// the counts are the bytes each way.
func TestRelayHalfCloseKeepsOtherDirection(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode.String(), func(t *testing.T) { testRelayHalfClose(t, mode) })
	}
}

// copyResult is what Copy returned.
type copyResult struct {
	up, down int64
	err      error
}

// copyAsync runs Copy on a goroutine of its own and hands its result over the channel.
func copyAsync(mode Mode, a, b net.Conn) <-chan copyResult {
	done := make(chan copyResult, 1)
	go func() {
		up, down, err := Copy(mode, a, b)
		done <- copyResult{up, down, err}
	}()
	return done
}

// relayModes are the relays every behaviour test runs against.
var relayModes = []Mode{Auto, Splice, Buffered}

func testRelayHalfClose(t *testing.T, mode Mode) {
	client, relayA := testutil.TCPPair(t)
	relayB, server := testutil.TCPPair(t)
	done := copyAsync(mode, relayA, relayB)

	req := []byte("request")
	client.Write(req)
	client.CloseWrite()
	got, err := io.ReadAll(server) // ends when the relay propagates the half-close
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server read %q, %v", got, err)
	}
	resp := bytes.Repeat([]byte("r"), 1<<20)
	server.Write(resp)
	server.CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(back, resp) {
		t.Fatalf("client read %d bytes, %v", len(back), err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.up != int64(len(req)) || r.down != int64(len(resp)) {
			t.Fatalf("Relay = %d, %d, %v", r.up, r.down, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after both halves closed")
	}
}

// A reset on one side ends the relay at once and closes the other side.
func TestRelayResetClosesBothSides(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode.String(), func(t *testing.T) { testRelayReset(t, mode) })
	}
}

func testRelayReset(t *testing.T, mode Mode) {
	client, relayA := testutil.TCPPair(t)
	relayB, server := testutil.TCPPair(t)
	done := make(chan error, 1)
	go func() { _, _, err := Copy(mode, relayA, relayB); done <- err }()
	server.SetLinger(0)
	server.Close() // RST toward the relay
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("client connection still open after the server reset")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Relay reported no error after a reset")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after a reset")
	}
}

// Large transfers both ways at once arrive intact in every mode, also when one side is not a
// TCP socket (net.Pipe: no splice, no readability probe).
func TestRelayCarriesBulkBothWaysIntact(t *testing.T) {
	for _, mode := range relayModes {
		for _, pipeClient := range []bool{false, true} {
			name := mode.String()
			if pipeClient {
				name += "/pipe-client"
			}
			t.Run(name, func(t *testing.T) { testRelayBulk(t, mode, pipeClient) })
		}
	}
}

// With a park deadline far shorter than the transfer, reads and splices keep running into the
// wait's deadline and directions park and wake in the middle of it: nothing may be lost.
func TestRelayBulkSurvivesParkDeadlines(t *testing.T) {
	old := parkAfter
	parkAfter = 2 * time.Millisecond
	t.Cleanup(func() { parkAfter = old })
	for _, mode := range []Mode{Auto, Buffered} {
		t.Run(mode.String(), func(t *testing.T) { testRelayBulk(t, mode, false) })
	}
}

func testRelayBulk(t *testing.T, mode Mode, pipeClient bool) {
	var client, relayA net.Conn
	if pipeClient {
		client, relayA = net.Pipe()
	} else {
		client, relayA = testutil.TCPPair(t)
	}
	relayB, server := testutil.TCPPair(t)
	go Copy(mode, relayA, relayB)
	const n = 8 << 20
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7 + i>>11)
	}
	echo := make(chan error, 1)
	go func() { // the server sends the payload back while it is still receiving
		_, err := io.Copy(server, server)
		server.CloseWrite()
		echo <- err
	}()
	go func() {
		for off := 0; off < n; off += 1 << 20 {
			client.Write(payload[off : off+1<<20])
			time.Sleep(time.Millisecond) // pauses, so that directions also park mid-flow
		}
		if cw, ok := client.(closeWriter); ok {
			cw.CloseWrite()
		}
	}()
	got := make([]byte, n)
	client.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload changed on the way")
	}
	if pipeClient {
		return // net.Pipe cannot half-close, so the echo never sees its end
	}
	if err := <-echo; err != nil {
		t.Fatalf("echo: %v", err)
	}
}

// BenchmarkRelayLoopback is one-way bulk through each relay on loopback.
func BenchmarkRelayLoopback(b *testing.B) {
	for _, mode := range relayModes {
		b.Run(mode.String(), func(b *testing.B) {
			client, relayA := testutil.TCPPair(b)
			relayB, server := testutil.TCPPair(b)
			go Copy(mode, relayA, relayB)
			go io.Copy(io.Discard, server)
			buf := make([]byte, 256<<10)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := client.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Idle flows are parked: after parkAfter without data neither direction keeps a goroutine,
// and a parked flow still carries data both ways, half-closes, and ends when closed from
// outside (the idle sweeper, shutdown).
func TestRelayParksIdleFlows(t *testing.T) {
	if !CanPark {
		t.Skip("no parker on this system")
	}
	old := parkAfter
	parkAfter = 50 * time.Millisecond
	t.Cleanup(func() { parkAfter = old })
	for _, mode := range []Mode{Auto, Buffered} {
		t.Run(mode.String(), func(t *testing.T) { testRelayParks(t, mode) })
	}
}

func testRelayParks(t *testing.T, mode Mode) {
	const flows = 50
	base := runtime.NumGoroutine()
	type flow struct {
		client, server *net.TCPConn
		r              *Relay
		done           chan error
	}
	fs := make([]flow, flows)
	for i := range fs {
		client, relayA := testutil.TCPPair(t)
		relayB, server := testutil.TCPPair(t)
		done := make(chan error, 1)
		r := New(mode, relayA, relayB, func(up, down int64, err error) { done <- err })
		r.Start()
		fs[i] = flow{client, server, r, done}
	}
	// Every flow idles: all directions park, leaving no goroutine per flow behind.
	allParked := func() bool {
		for i := range fs {
			for j := range fs[i].r.dirs {
				if fs[i].r.dirs[j].state.Load() != dirParked {
					return false
				}
			}
		}
		return true
	}
	testutil.WaitUntil(t, "directions parked", allParked)
	// A direction is parked a moment before its goroutine returns: under -race on a busy
	// machine a dozen of the hundred were seen still returning, so wait for them to go.
	testutil.WaitUntil(t, "no goroutine per parked flow", func() bool { return runtime.NumGoroutine()-base <= flows/5 })
	// A parked flow wakes for data each way, and parks again.
	for round := range 2 {
		for i := range fs {
			msg := []byte(fmt.Sprintf("ping %d %d", round, i))
			echoOnce(t, fs[i].client, fs[i].server, msg)
			echoOnce(t, fs[i].server, fs[i].client, msg)
		}
		testutil.WaitUntil(t, "directions parked again", allParked)
	}
	// Half-close from a parked state: the server sees EOF, still answers, the client reads it.
	f := fs[0]
	f.client.CloseWrite()
	f.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(f.server); err != nil || len(b) != 0 {
		t.Fatalf("server after half-close: %q, %v", b, err)
	}
	echoOnce(t, f.server, f.client, []byte("still here"))
	f.server.CloseWrite()
	select {
	case err := <-f.done:
		if err != nil {
			t.Fatalf("half-closed flow ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("half-closed flow did not end")
	}
	// Closing parked flows from outside ends them; their sockets are closed.
	for _, f := range fs[1:] {
		f.r.Close()
	}
	for _, f := range fs[1:] {
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Fatal("parked flow closed from outside did not end")
		}
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := f.client.Read(make([]byte, 1)); err == nil {
			t.Fatal("client still connected after the flow was closed")
		}
	}
	testutil.WaitUntil(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base+1 })
}

// echoOnce writes msg on from and reads it on to.
func echoOnce(t *testing.T, from, to *net.TCPConn, msg []byte) {
	t.Helper()
	if _, err := from.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(to, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}
