package device

import "net/netip"

// meter is what the sampler has already credited of each live flow, so that a flow's bytes are
// counted once: the part before each look by the sampler (Sample), the rest when it ends
// (End). Only flows the sampler has seen have an entry; a flow shorter than the sample interval
// costs nothing but its End.
//
// A pass may read a flow's counters just before the flow ends and credit them just after its
// End: an End during a pass therefore leaves a tombstone, which the pass skips and EndPass
// clears once no pass can hold an older reading.
type meter struct {
	seen   map[any]*metered
	pass   uint64
	inPass bool
}

type metered struct {
	up, down uint64 // already credited
	ended    bool   // a tombstone: the flow ended during pass
	pass     uint64
}

// BeginPass starts a sampler pass: Sample for every live flow, then EndPass.
func (t *Table) BeginPass() {
	t.mu.Lock()
	m := &t.meter
	if m.seen == nil {
		m.seen = map[any]*metered{}
	}
	m.pass++
	m.inPass = true
	t.mu.Unlock()
}

// Sample credits a live flow (key identifies it for its life: a pointer, a session key) with
// what it moved since the sampler last looked; up and down are its counters so far.
func (t *Table) Sample(key any, src netip.Addr, up, down uint64) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	m := &t.meter
	e := m.seen[key]
	if e == nil {
		e = &metered{}
		m.seen[key] = e
	}
	if e.ended {
		return
	}
	e.pass = m.pass
	du, dd := sub(up, e.up), sub(down, e.down)
	e.up, e.down = max(e.up, up), max(e.down, down)
	t.creditLocked(src, du, dd, now)
}

// EndPass ends a sampler pass and clears the tombstones of flows that ended before it.
func (t *Table) EndPass() {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := &t.meter
	m.inPass = false
	for k, e := range m.seen {
		if e.ended && e.pass < m.pass {
			delete(m.seen, k)
		}
	}
}

// End credits a flow that has ended with what the sampler has not counted of its totals.
func (t *Table) End(key any, src netip.Addr, up, down uint64) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	m := &t.meter
	e := m.seen[key]
	switch {
	case e == nil:
		t.creditLocked(src, up, down, now)
		if m.inPass { // the pass in progress may have read it already
			m.seen[key] = &metered{up: up, down: down, ended: true, pass: m.pass}
		}
		return
	case e.ended:
		return
	}
	t.creditLocked(src, sub(up, e.up), sub(down, e.down), now)
	if m.inPass {
		e.up, e.down, e.ended, e.pass = max(e.up, up), max(e.down, down), true, m.pass
	} else {
		delete(m.seen, key)
	}
}

// Metered is the number of live flows the sampler keeps a reading of (tombstones included).
func (t *Table) Metered() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.meter.seen)
}

func sub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}
