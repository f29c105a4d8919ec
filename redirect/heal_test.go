package redirect

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

var testTiming = healTiming{
	Quiet: 50 * time.Millisecond, MaxDelay: 300 * time.Millisecond,
	Burst: 3, Window: 10 * time.Second,
	BackoffMin: time.Second, BackoffMax: 4 * time.Second,
	RetryMin: 100 * time.Millisecond, RetryMax: 400 * time.Millisecond,
}

func del(what string) change { return change{kind: changeTable, what: what, by: "nft[1]"} }

// A burst of events (a flush: one per object) is one restore, Quiet after the last event.
func TestHealDebouncesABurst(t *testing.T) {
	s := &healState{t: testTiming}
	if _, ok := s.next(); ok {
		t.Fatal("something to do before any change")
	}
	for i := range 40 {
		s.add(at(i), del("rule of table inet socksgate deleted"))
	}
	s.add(at(40), del("table inet socksgate deleted"))
	when, ok := s.next()
	if !ok || !when.Equal(at(90)) {
		t.Fatalf("next = %v %v, want 50ms after the last event", when, ok)
	}
	p := s.take()
	if p.kinds != changeTable || !slices.Equal(p.what, []string{"rule of table inet socksgate deleted", "table inet socksgate deleted"}) || !slices.Equal(p.by, []string{"nft[1]"}) {
		t.Fatalf("pending = %+v", p)
	}
	if _, ok := s.next(); ok {
		t.Fatal("still pending after take")
	}
	ev, ok := s.result(at(91), p, true, nil)
	if !ok || ev.Kind != Restored || len(ev.What) != 2 {
		t.Fatalf("event = %+v %v", ev, ok)
	}
	if _, ok := s.backingOff(at(91)); ok {
		t.Fatal("backing off after one restore")
	}
}

// Events that never stop (a long reload) still get a restore MaxDelay after the first one.
func TestHealMaxDelay(t *testing.T) {
	s := &healState{t: testTiming}
	for ms := 0; ms <= 1000; ms += 10 {
		s.add(at(ms), del("x"))
		if when, _ := s.next(); when.After(at(300)) {
			t.Fatalf("at %dms next = %v, later than MaxDelay after the first event", ms, when.Sub(t0))
		}
	}
}

// Many distinct things seen are kept to a few for the log.
func TestHealWhatIsCapped(t *testing.T) {
	s := &healState{t: testTiming}
	for i := range 100 {
		s.add(at(0), change{kind: checkPolicy, what: string(rune('a' + i%26)), by: string(rune('A' + i%26))})
	}
	p := s.take()
	if len(p.what) != maxWhat || len(p.by) != maxWhat || p.kinds != checkPolicy {
		t.Fatalf("pending = %+v", p)
	}
}

// A check that finds everything in place is reported as Checked and counts as no restore.
func TestHealCheckedIsNoRestore(t *testing.T) {
	s := &healState{t: testTiming}
	for i := range 10 {
		s.add(at(i*1000), change{kind: checkPolicy, what: "policy rule added"})
		p := s.take()
		if ev, ok := s.result(at(i*1000+60), p, false, nil); !ok || ev.Kind != Checked {
			t.Fatalf("event = %+v %v", ev, ok)
		}
		if _, ok := s.backingOff(at(i*1000 + 60)); ok {
			t.Fatal("backing off without restores")
		}
	}
	if len(s.restores) != 0 {
		t.Fatalf("restores = %v", s.restores)
	}
}

// Someone who keeps deleting: after Burst restores within Window the next one waits, longer
// each time up to BackoffMax; once nothing was needed for long enough, restores are prompt again.
func TestHealBacksOffATightLoop(t *testing.T) {
	s := &healState{t: testTiming}
	now := at(0)
	restore := func() (time.Time, WatchEvent, bool) {
		s.add(now, del("table inet socksgate deleted"))
		when, _ := s.next()
		p := s.take()
		s.result(when, p, true, nil)
		ev, ok := s.backingOff(when)
		return when, ev, ok
	}
	var waits []time.Duration
	for i := range 8 {
		when, ev, ok := restore()
		if i < testTiming.Burst-1 {
			if ok {
				t.Fatalf("restore %d: backing off already: %+v", i+1, ev)
			}
			if d := when.Sub(now); d != testTiming.Quiet {
				t.Fatalf("restore %d after %v, want Quiet", i+1, d)
			}
		} else {
			if !ok || ev.Kind != BackingOff || ev.Recent < testTiming.Burst {
				t.Fatalf("restore %d: no back-off: %+v %v", i+1, ev, ok)
			}
			waits = append(waits, ev.Wait)
		}
		// The next deletion comes right away: the restore waits for the hold.
		now = when.Add(time.Millisecond)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
	if !slices.Equal(waits, want) {
		t.Fatalf("back-off waits = %v, want %v", waits, want)
	}
	// Quiet for longer than Window (and twice the last back-off): prompt again.
	now = now.Add(testTiming.Window + 9*time.Second)
	when, ev, ok := restore()
	if ok || when.Sub(now) != testTiming.Quiet {
		t.Fatalf("after a quiet spell: restored after %v, back-off %+v %v", when.Sub(now), ev, ok)
	}
}

// A restore that fails is retried, later each time, with what was pending kept.
func TestHealRetriesAFailure(t *testing.T) {
	s := &healState{t: testTiming}
	s.add(at(0), del("table inet socksgate deleted"))
	boom := errors.New("EPERM")
	var waits []time.Duration
	for range 4 {
		when, ok := s.next()
		if !ok {
			t.Fatal("nothing pending after a failure")
		}
		p := s.take()
		ev, ok := s.result(when, p, true, boom)
		if !ok || ev.Kind != RestoreFailed || !errors.Is(ev.Err, boom) || !slices.Equal(ev.What, []string{"table inet socksgate deleted"}) {
			t.Fatalf("event = %+v", ev)
		}
		if _, ok := s.backingOff(when); ok {
			t.Fatal("a failure reported as a back-off")
		}
		waits = append(waits, ev.Wait)
		if next, _ := s.next(); !next.Equal(when.Add(ev.Wait)) {
			t.Fatalf("retry at %v, want %v after", next.Sub(when), ev.Wait)
		}
	}
	if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(waits, want) {
		t.Fatalf("retry waits = %v, want %v", waits, want)
	}
	when, _ := s.next()
	p := s.take()
	if p.kinds != changeTable {
		t.Fatalf("pending kinds after failures = %v", p.kinds)
	}
	if ev, _ := s.result(when, p, true, nil); ev.Kind != Restored {
		t.Fatalf("event = %+v", ev)
	}
	if s.retry != 0 {
		t.Fatal("retry delay kept after a success")
	}
}

// The loop with a fake event source: changes lead to a restore and its report; the loop ends
// with the context or when the source closes.
func TestHealLoop(t *testing.T) {
	changes := make(chan change, 100)
	var (
		mu      sync.Mutex
		events  []WatchEvent
		calls   int
		lastArg pending
	)
	restore := func(p *pending) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		lastArg = *p
		return p.kinds&changeTable != 0, nil
	}
	report := func(ev WatchEvent) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { heal(ctx, changes, testTiming, restore, report); close(done) }()

	for range 30 {
		changes <- del("rule of table inet socksgate deleted")
	}
	testutil.WaitUntil(t, "a restore", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) > 0
	})
	mu.Lock()
	if events[0].Kind != Restored || lastArg.kinds != changeTable {
		t.Errorf("first event %+v, restore got %+v", events[0], lastArg)
	}
	mu.Unlock()

	changes <- change{kind: checkPolicy, what: "policy rule added"}
	testutil.WaitUntil(t, "a check", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) > 0 && events[len(events)-1].Kind == Checked
	})
	cancel()
	<-done

	// A closed source ends the loop too.
	closed := make(chan change)
	close(closed)
	heal(context.Background(), closed, testTiming, restore, report)
}

// The periodic check runs every Check while nothing else is pending: one that finds nothing is
// not reported; one that finds a drift is a restore, reported with what it found.
func TestHealPeriodicCheck(t *testing.T) {
	timing := testTiming
	timing.Check = 10 * time.Millisecond
	var (
		mu     sync.Mutex
		checks int
		found  bool
		events []WatchEvent
	)
	restore := func(p *pending) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		if p.kinds != checkDrift || !slices.Equal(p.what, []string{"periodic check"}) {
			t.Errorf("periodic check pending = %+v", *p)
		}
		checks++
		if found {
			p.what = append(p.what, "rule 1 of chain output_raw changed")
			found = false
			return true, nil
		}
		return false, nil
	}
	report := func(ev WatchEvent) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { heal(ctx, make(chan change), timing, restore, report); close(done) }()
	testutil.WaitUntil(t, "three periodic checks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return checks >= 3
	})
	mu.Lock()
	if len(events) != 0 {
		t.Errorf("checks that found nothing reported: %+v", events)
	}
	found = true
	mu.Unlock()
	testutil.WaitUntil(t, "a restore", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) > 0
	})
	cancel()
	<-done
	ev := events[0]
	if ev.Kind != Restored || !slices.Equal(ev.What, []string{"periodic check", "rule 1 of chain output_raw changed"}) {
		t.Errorf("event = %+v", ev)
	}
}

// A periodic check that finds nothing is silent; with a change pending too, it is a check of
// that change, reported as before.
func TestHealQuietPeriodicCheck(t *testing.T) {
	s := &healState{t: testTiming}
	s.add(at(0), periodicCheck)
	p := s.take()
	if _, ok := s.result(at(60), p, false, nil); ok {
		t.Error("a periodic check that found nothing was reported")
	}
	s.add(at(100), periodicCheck)
	s.add(at(100), change{kind: checkPolicy, what: "policy rule added"})
	p = s.take()
	if ev, ok := s.result(at(160), p, false, nil); !ok || ev.Kind != Checked {
		t.Errorf("a check of an event with a periodic one: %+v %v", ev, ok)
	}
}
