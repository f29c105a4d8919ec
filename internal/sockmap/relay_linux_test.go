//go:build linux

package sockmap

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"
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
