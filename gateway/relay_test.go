package gateway

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// The client half-closes after its request; the server still answers through the relay, and
// the counts are the bytes each way.
func TestRelayHalfCloseKeepsOtherDirection(t *testing.T) {
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) { testRelayHalfClose(t, mode) })
	}
}

// relayModes are the relays every behaviour test runs against.
var relayModes = []string{RelayAuto, RelaySplice, RelayBuffered}

func testRelayHalfClose(t *testing.T, mode string) {
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	type result struct {
		up, down int64
		err      error
	}
	done := make(chan result, 1)
	go func() {
		up, down, err := RelayWith(mode, relayA, relayB)
		done <- result{up, down, err}
	}()

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
		t.Run(mode, func(t *testing.T) { testRelayReset(t, mode) })
	}
}

func testRelayReset(t *testing.T, mode string) {
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	done := make(chan error, 1)
	go func() { _, _, err := RelayWith(mode, relayA, relayB); done <- err }()
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
			name := mode
			if pipeClient {
				name += "/pipe-client"
			}
			t.Run(name, func(t *testing.T) {
				var client, relayA net.Conn
				if pipeClient {
					client, relayA = net.Pipe()
				} else {
					client, relayA = tcpPair(t)
				}
				relayB, server := tcpPair(t)
				go RelayWith(mode, relayA, relayB)
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
					client.Write(payload)
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
			})
		}
	}
}

// BenchmarkRelayLoopback is one-way bulk through each relay on loopback.
func BenchmarkRelayLoopback(b *testing.B) {
	for _, mode := range relayModes {
		b.Run(mode, func(b *testing.B) {
			client, relayA := tcpPair(b)
			relayB, server := tcpPair(b)
			go RelayWith(mode, relayA, relayB)
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
