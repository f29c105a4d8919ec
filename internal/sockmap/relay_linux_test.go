//go:build linux

package sockmap

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pattern is a deterministic byte stream, different per seed.
type pattern struct{ r *rand.ChaCha8 }

func newPattern(seed byte) *pattern {
	var s [32]byte
	s[0] = seed
	return &pattern{rand.NewChaCha8(s)}
}

func (p *pattern) Read(b []byte) (int, error) { return p.r.Read(b) }

func echoSize() int64 {
	if os.Getenv("SOCKMAP_QUICK") != "" {
		return 16 << 20
	}
	return 256 << 20
}

func TestEchoThroughKernelIsByteIdenticalAndCounted(t *testing.T) {
	rl := relayForTest(t)
	run := newRunner(t)
	tp := newTopology(t)
	f, done := addFlow(t, rl, run, tp)

	size := echoSize()
	// server: echo everything back, then close its write side when the client's side ends.
	srvErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(tp.server, tp.server)
		if err == nil {
			err = tp.server.CloseWrite()
		}
		srvErr <- err
	}()
	sendSum := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(tp.client, h), io.LimitReader(newPattern(1), size)); err != nil {
			t.Error(err)
		}
		tp.client.CloseWrite()
		sendSum <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	start := time.Now()
	n, err := io.Copy(h, tp.client)
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	if n != size {
		t.Fatalf("echoed %d bytes, want %d", n, size)
	}
	if got, want := [32]byte(h.Sum(nil)), <-sendSum; got != want {
		t.Fatal("echo differs from what was sent")
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, done, 10*time.Second); err != nil {
		t.Fatalf("flow ended with %v", err)
	}
	logSlots(t, f)
	ab, ba := f.Bytes()
	if ab != size || ba != size {
		t.Fatalf("counters a→b %d b→a %d, want %d each", ab, ba, size)
	}
	t.Logf("%d MiB each way in %v: %.2f Gbit/s per direction", size>>20, el, float64(size)*8/el.Seconds()/1e9)
}

func logSlots(t testing.TB, f *Flow) {
	for s := range 2 {
		t.Logf("side %d: sent %d passed %d relayed %d paused %d", s,
			*f.r.field(f.slot[s], offSent), *f.r.field(f.slot[s], offPassed),
			*f.r.field(f.slot[s], offRelayed), *f.r.field(f.slot[s], offPaused))
	}
}

func readN(t testing.TB, c *net.TCPConn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func TestBytesQueuedBeforeAddAreForwarded(t *testing.T) {
	rl := relayForTest(t)
	run := newRunner(t)

	t.Run("both directions", func(t *testing.T) {
		tp := newTopology(t)
		up := make([]byte, 1<<20)
		newPattern(2).Read(up)
		down := make([]byte, 100<<10)
		newPattern(3).Read(down)
		go tp.client.Write(up) // more than fits a receive buffer before Add: the rest follows after
		if _, err := tp.server.Write(down); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // let it reach a's and b's receive queues
		addFlow(t, rl, run, tp)
		if got := readN(t, tp.server, len(up)); !bytes.Equal(got, up) {
			t.Fatal("server got different bytes")
		}
		if got := readN(t, tp.client, len(down)); !bytes.Equal(got, down) {
			t.Fatal("client got different bytes")
		}
	})
	t.Run("with FIN", func(t *testing.T) {
		// The kernel takes only established sockets into a sockmap: a flow whose client half-closed
		// before Add is refused with ErrNotEstablished, for the caller to relay in userspace.
		tp := newTopology(t)
		tp.client.Write([]byte("request"))
		tp.client.CloseWrite()
		time.Sleep(50 * time.Millisecond)
		_, err := rl.Add(tp.a, tp.b, nil)
		if !errors.Is(err, ErrNotEstablished) {
			t.Fatalf("Add = %v, want ErrNotEstablished", err)
		}
		// The sockets are untouched: the request is still there to relay.
		if got := readN(t, tp.a, 7); string(got) != "request" {
			t.Fatalf("a holds %q", got)
		}
	})
}

func TestHalfCloseKeepsTheOtherDirection(t *testing.T) {
	rl := relayForTest(t)
	run := newRunner(t)
	tp := newTopology(t)
	f, done := addFlow(t, rl, run, tp)

	req := make([]byte, 3<<20)
	newPattern(4).Read(req)
	ans := make([]byte, 5<<20)
	newPattern(5).Read(ans)
	go func() {
		tp.client.Write(req)
		tp.client.CloseWrite()
	}()
	tp.server.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(tp.server) // all data, then EOF
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server read %d bytes (equal %v), %v", len(got), bytes.Equal(got, req), err)
	}
	go func() {
		tp.server.Write(ans) // the server still answers after the client's FIN
		tp.server.CloseWrite()
	}()
	tp.client.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err = io.ReadAll(tp.client)
	if err != nil || !bytes.Equal(got, ans) {
		t.Fatalf("client read %d bytes (equal %v), %v\n%s", len(got), bytes.Equal(got, ans), err, f.debugString())
	}
	if err := waitDone(t, done, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if ab, ba := f.Bytes(); ab != int64(len(req)) || ba != int64(len(ans)) {
		t.Fatalf("counters %d/%d, want %d/%d", ab, ba, len(req), len(ans))
	}
}

func TestResetEndsTheFlow(t *testing.T) {
	rl := relayForTest(t)
	run := newRunner(t)
	tp := newTopology(t)
	_, done := addFlow(t, rl, run, tp)
	tp.client.Write([]byte("hello"))
	readN(t, tp.server, 5)
	tp.server.SetLinger(0)
	tp.server.Close() // RST toward b
	err := waitDone(t, done, 10*time.Second)
	if !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("flow ended with %v, want ECONNRESET", err)
	}
}

func TestOpenErrorSaysWhatIsMissing(t *testing.T) {
	defer func(old func() (tcpSockOffsets, error)) { tcpOffsets = old }(tcpOffsets)
	tcpOffsets = func() (tcpSockOffsets, error) { return tcpSockOffsets{}, os.ErrNotExist }
	_, err := Open()
	var oe *OpenError
	if !errors.Is(err, ErrUnsupported) || !errors.As(err, &oe) || !strings.Contains(err.Error(), "BTF") {
		t.Fatalf("Open = %v, want an OpenError naming BTF", err)
	}
	tcpOffsets = kernelTCPSockOffsets
	if os.Geteuid() != 0 {
		t.Skip("the program-load step is reached only as root")
	}
	defer func(old func(*ebpf.ProgramSpec) (*ebpf.Program, error)) { loadProgram = old }(loadProgram)
	loadProgram = func(*ebpf.ProgramSpec) (*ebpf.Program, error) {
		return nil, fmt.Errorf("load program: %w", unix.EPERM)
	}
	_, err = Open()
	for _, want := range []string{"kernel relay unavailable", "load sk_skb verdict program", "CAP_BPF"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open = %v, want it to say %q", err, want)
		}
	}
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Open = %v, want ErrUnsupported and EPERM in the chain", err)
	}
	t.Log(err)
}

func (f *Flow) debugString() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := fmt.Sprintf("eof %v shut %v held %v done %v err %v read %v", f.eof, f.shut, f.held, f.done, f.err, f.read)
	for i := range 2 {
		st, _ := unix.GetsockoptTCPInfo(f.fd[i], unix.IPPROTO_TCP, unix.TCP_INFO)
		b, _ := f.backlog(i)
		s += fmt.Sprintf("\n side %d: state %d sent %d passed %d relayed %d backlog %d", i, st.State,
			*f.r.field(f.slot[i], offSent), *f.r.field(f.slot[i], offPassed), *f.r.field(f.slot[i], offRelayed), b)
	}
	return s
}
