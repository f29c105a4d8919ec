package relay

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/testutil"
)

// bulkThrough sends n bytes each way through an Auto relay at once and returns Copy's result.
func bulkThrough(t *testing.T, n int) (up, down int64, err error) {
	t.Helper()
	client, relayA := testutil.TCPPair(t)
	relayB, server := testutil.TCPPair(t)
	done := copyAsync(Auto, relayA, relayB)
	payload := bytes.Repeat([]byte("0123456789abcdef"), n/16)
	var wg sync.WaitGroup
	for _, c := range []interface {
		io.ReadWriter
		CloseWrite() error
		SetReadDeadline(time.Time) error
	}{client, server} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			c.Write(payload)
			c.CloseWrite()
		}()
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, rerr := io.ReadAll(c)
			if rerr != nil || !bytes.Equal(got, payload) {
				t.Errorf("read %d of %d bytes: %v", len(got), len(payload), rerr)
			}
		}()
	}
	wg.Wait()
	select {
	case r := <-done:
		return r.up, r.down, r.err
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end after both sides closed")
	}
	return 0, 0, nil
}

// With no descriptors left for a pipe (pipe2 fails with EMFILE, as under a low RLIMIT_NOFILE),
// a bulk burst goes through a buffer instead of ending the flow with "pipe2: too many open files".
func TestRelayWithoutPipesFallsBackToBuffer(t *testing.T) {
	FreeIdlePipes() // a pooled pipe from another test would hide the failure
	var calls atomic.Int32
	pipe2 = func(p []int, flags int) error { calls.Add(1); return unix.EMFILE }
	t.Cleanup(func() { pipe2 = unix.Pipe2 })

	const n = 8 << 20
	up, down, err := bulkThrough(t, n)
	if err != nil || up != n || down != n {
		t.Fatalf("relay = %d, %d, %v; want %d each way and no error", up, down, err, n)
	}
	if calls.Load() == 0 {
		t.Fatal("the relay never tried to splice: the test checks nothing")
	}
}

// countingBudget is a descriptor budget with room for max descriptors.
type countingBudget struct {
	max              int64
	held             atomic.Int64
	granted, refused atomic.Int64
}

func (b *countingBudget) Acquire(n int) bool {
	if b.held.Add(int64(n)) > b.max {
		b.held.Add(-int64(n))
		b.refused.Add(1)
		return false
	}
	b.granted.Add(1)
	return true
}

func (b *countingBudget) Release(n int) { b.held.Add(-int64(n)) }

// A budget with no room refuses every pipe and the flow still carries everything; one with room
// gets back every descriptor it granted once the pool is freed.
func TestRelayPipesAreChargedToTheBudget(t *testing.T) {
	const n = 8 << 20
	for _, room := range []int64{0, 1 << 20} {
		FreeIdlePipes()
		b := &countingBudget{max: room}
		SetDescriptorBudget(b)
		up, down, err := bulkThrough(t, n)
		SetDescriptorBudget(nil)
		if err != nil || up != n || down != n {
			t.Fatalf("room %d: relay = %d, %d, %v; want %d each way and no error", room, up, down, err, n)
		}
		switch {
		case room == 0 && (b.refused.Load() == 0 || b.granted.Load() != 0):
			t.Fatalf("room 0: %d pipes refused, %d granted; want only refusals", b.refused.Load(), b.granted.Load())
		case room > 0 && b.granted.Load() == 0:
			t.Fatalf("room %d: no pipe was charged to the budget", room)
		}
		FreeIdlePipes()
		if h := b.held.Load(); h != 0 {
			t.Fatalf("room %d: %d descriptors still charged after the flow ended and the pool was freed", room, h)
		}
	}
}
