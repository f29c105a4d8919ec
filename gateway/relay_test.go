package gateway

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
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
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	type result struct {
		up, down int64
		err      error
	}
	done := make(chan result, 1)
	go func() {
		up, down, err := Relay(relayA, relayB)
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
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	done := make(chan struct{})
	go func() { Relay(relayA, relayB); close(done) }()
	server.SetLinger(0)
	server.Close() // RST toward the relay
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("client connection still open after the server reset")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after a reset")
	}
}
