package admin

import "testing"

// A hub runs first as its first listener joins and last as its last leaves, again for a
// second round; a leave called twice counts once; a full listener misses a value, the others
// get it.
func TestHubFirstAndLast(t *testing.T) {
	var firsts, lasts int
	h := hub[int]{first: func() { firsts++ }, last: func() { lasts++ }}
	if h.listening() {
		t.Fatal("listening with nobody")
	}
	a, leaveA := h.join(1)
	b, leaveB := h.join(2)
	if firsts != 1 || lasts != 0 || !h.listening() {
		t.Fatalf("after two joins: first %d last %d", firsts, lasts)
	}
	h.publish(1)
	h.publish(2) // a is full: it misses 2
	if v := <-a; v != 1 || len(a) != 0 {
		t.Fatalf("a got %d, %d more", v, len(a))
	}
	if v1, v2 := <-b, <-b; v1 != 1 || v2 != 2 {
		t.Fatalf("b got %d %d", v1, v2)
	}
	leaveA()
	leaveA()
	if lasts != 0 {
		t.Fatal("last ran with a listener left")
	}
	leaveB()
	if lasts != 1 || h.listening() {
		t.Fatalf("after every leave: last %d, listening %v", lasts, h.listening())
	}
	_, leave := h.join(1)
	leave()
	if firsts != 2 || lasts != 2 {
		t.Fatalf("second round: first %d last %d", firsts, lasts)
	}
}

// The sampler reads the totals only while someone listens: its first read comes with the first
// listener, and a sample is the difference between two reads.
func TestSamplerReadsOnlyWhileListened(t *testing.T) {
	reads := make(chan struct{}, 16)
	var n uint64
	s := newSampler(func() (uint64, uint64) {
		n += 10
		select {
		case reads <- struct{}{}:
		default:
		}
		return n, 2 * n
	})
	s.tick = 1
	select {
	case <-reads:
		t.Fatal("read with nobody listening")
	default:
	}
	ch, leave := s.join()
	if tr := <-ch; tr.Up != 10 || tr.Down != 20 {
		t.Fatalf("sample %+v, want 10/20", tr)
	}
	leave()
}
