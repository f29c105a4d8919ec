package redirect

import (
	"context"
	"slices"
	"time"
)

// Healing: socksgate's table and policy routing are put back when someone else removes or
// changes them (a firewall reload that flushes the whole ruleset, `ip rule del`). The watchers
// (watch_linux.go) turn netlink events into changes; heal debounces them (a flush is a burst of
// events), asks restore to check and put the state back, and backs off when restores come in a
// tight loop (someone keeps deleting), so socksgate never fights another program over the
// kernel. Events are not all: every Check, with nothing else pending, heal asks for a full
// comparison of the kernel's state with what was installed (checkDrift), which catches what no
// event reported (lost events, a change through socksgate's own socket). This file is the
// policy, with no kernel in it.

// changeKind is what a change calls for.
type changeKind uint8

const (
	// changeTable: someone else changed or removed socksgate's table (one of its chains,
	// rules, sets or elements, or the table itself): put it back.
	changeTable changeKind = 1 << iota
	// checkTable: nftables events were lost (the socket's buffer overflowed): check the table.
	checkTable
	// checkPolicy: a policy rule or a route in socksgate's routing table may have changed:
	// check the policy routing.
	checkPolicy
	// checkDrift: the periodic check: compare the table, object by object, and the policy
	// routing with what was installed.
	checkDrift
)

// periodicCheck is the change the periodic check adds.
var periodicCheck = change{kind: checkDrift, what: "periodic check"}

// change is one thing a watcher saw.
type change struct {
	kind changeKind
	what string // for the log: "table inet socksgate deleted"
	by   string // who did it when known: "nft[1234]"
}

// pending is what has been seen since the last restore.
type pending struct {
	kinds changeKind
	what  []string // distinct, at most maxWhat
	by    []string // distinct, at most maxWhat
}

const maxWhat = 8

func (p *pending) add(c change) {
	p.kinds |= c.kind
	addDistinct(&p.what, c.what)
	addDistinct(&p.by, c.by)
}

func (p *pending) merge(q pending) {
	p.kinds |= q.kinds
	for _, w := range q.what {
		addDistinct(&p.what, w)
	}
	for _, b := range q.by {
		addDistinct(&p.by, b)
	}
}

func addDistinct(list *[]string, s string) {
	if s != "" && len(*list) < maxWhat && !slices.Contains(*list, s) {
		*list = append(*list, s)
	}
}

// healTiming are the knobs of heal.
type healTiming struct {
	// Quiet: act this long after the last change, so that a burst (a flush deletes every
	// object one event each, and a firewall reload may take several transactions) is one restore.
	Quiet time.Duration
	// MaxDelay: but never later than this after the first change of a burst.
	MaxDelay time.Duration
	// Burst restores within Window is a tight loop: the next restore waits Backoff (BackoffMin,
	// doubling up to BackoffMax while it goes on; back to none once no restore was needed for
	// Window and twice the last backoff).
	Burst                  int
	Window                 time.Duration
	BackoffMin, BackoffMax time.Duration
	// RetryMin, RetryMax: a restore that failed is retried after RetryMin, doubling up to RetryMax.
	RetryMin, RetryMax time.Duration
	// Check: the periodic check runs this long after the last time anything was checked (0:
	// never).
	Check time.Duration
}

var defaultHealTiming = healTiming{
	Quiet:      50 * time.Millisecond,
	MaxDelay:   300 * time.Millisecond,
	Burst:      5,
	Window:     time.Minute,
	BackoffMin: 5 * time.Second,
	BackoffMax: 5 * time.Minute,
	RetryMin:   time.Second,
	RetryMax:   time.Minute,
	// Listing socksgate's table (a few dozen rules, three sets) and comparing it took 2.4 ms on
	// x86-64; 15s bounds how long a change no event reported can last.
	Check: 15 * time.Second,
}

// WatchEventKind says what a WatchEvent reports.
type WatchEventKind int

const (
	// Restored: the state was put back.
	Restored WatchEventKind = iota
	// RestoreFailed: putting it back failed (Err); it is retried.
	RestoreFailed
	// BackingOff: restores come in a tight loop; the next one waits Wait.
	BackingOff
	// Checked: a change was seen and checked, and everything was in place: nothing done.
	// A periodic check that finds everything in place is not reported.
	Checked
)

// WatchEvent is what Watch reports, for the caller to log and count.
type WatchEvent struct {
	Kind WatchEventKind
	What []string // what was seen changing, e.g. "table inet socksgate deleted"
	By   []string // who changed it, when the kernel said: "nft[1234]"
	Err  error    // RestoreFailed
	// Recent is how many restores there were within the last Window (BackingOff).
	Recent int
	Wait   time.Duration // BackingOff, RestoreFailed: until the next attempt
}

// healState is heal's state machine, driven with explicit times so it can be tested without a
// clock.
type healState struct {
	t           healTiming
	p           pending
	first, last time.Time // of the pending burst; zero: nothing pending
	hold        time.Time // nothing is done before this
	restores    []time.Time
	backoff     time.Duration // the last hold for a tight loop; 0: none
	retry       time.Duration // the last hold after a failure; 0: none
}

func (s *healState) add(now time.Time, c change) {
	if s.first.IsZero() {
		s.first = now
	}
	s.last = now
	s.p.add(c)
}

// next returns when to act on what is pending; false: nothing is.
func (s *healState) next() (time.Time, bool) {
	if s.first.IsZero() {
		return time.Time{}, false
	}
	at := s.last.Add(s.t.Quiet)
	if limit := s.first.Add(s.t.MaxDelay); limit.Before(at) {
		at = limit
	}
	if at.Before(s.hold) {
		at = s.hold
	}
	return at, true
}

// take returns what is pending and clears it.
func (s *healState) take() pending {
	p := s.p
	s.p, s.first, s.last = pending{}, time.Time{}, time.Time{}
	return p
}

// result records the outcome of acting on p at now and returns the event to report, if any.
func (s *healState) result(now time.Time, p pending, restored bool, err error) (WatchEvent, bool) {
	if err != nil {
		s.retry = min(max(2*s.retry, s.t.RetryMin), s.t.RetryMax)
		s.hold = now.Add(s.retry)
		// Still to do: pending again, as if seen now.
		if s.first.IsZero() {
			s.first = now
		}
		s.last = now
		s.p.merge(p)
		return WatchEvent{Kind: RestoreFailed, What: p.what, By: p.by, Err: err, Wait: s.retry}, true
	}
	s.retry = 0
	if !restored {
		if p.kinds == checkDrift {
			return WatchEvent{}, false // the periodic check, and nothing found
		}
		return WatchEvent{Kind: Checked, What: p.what, By: p.by}, true
	}
	if n := len(s.restores); n > 0 && now.Sub(s.restores[n-1]) > max(s.t.Window, 2*s.backoff) {
		s.backoff = 0 // quiet for long enough: whatever fought is gone
	}
	s.restores = append(s.restores, now)
	for len(s.restores) > 0 && now.Sub(s.restores[0]) > s.t.Window {
		s.restores = s.restores[1:]
	}
	if len(s.restores) >= s.t.Burst {
		s.backoff = min(max(2*s.backoff, s.t.BackoffMin), s.t.BackoffMax)
		s.hold = now.Add(s.backoff)
	}
	return WatchEvent{Kind: Restored, What: p.what, By: p.by}, true
}

// backingOff returns the BackingOff event for the hold the last result set, if it set one.
func (s *healState) backingOff(now time.Time) (WatchEvent, bool) {
	if s.retry != 0 || !s.hold.After(now) {
		return WatchEvent{}, false
	}
	return WatchEvent{Kind: BackingOff, Recent: len(s.restores), Wait: s.hold.Sub(now)}, true
}

// heal runs the state machine on changes until ctx ends or changes is closed. restore checks
// what p calls for and puts it back, reporting whether anything had to be (and adding to
// p.what what it found, for the report); report gets the outcomes. Every t.Check after the
// last restore or check, when nothing is pending, a periodic check is added.
func heal(ctx context.Context, changes <-chan change, t healTiming, restore func(*pending) (bool, error), report func(WatchEvent)) {
	s := &healState{t: t}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var check <-chan time.Time
	var checkTimer *time.Timer
	if t.Check > 0 {
		checkTimer = time.NewTimer(t.Check)
		defer checkTimer.Stop()
		check = checkTimer.C
	}
	for {
		var wake <-chan time.Time
		if at, ok := s.next(); ok {
			timer.Reset(time.Until(at))
			wake = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case c, ok := <-changes:
			if !ok {
				return
			}
			s.add(time.Now(), c)
		case <-check:
			if _, ok := s.next(); !ok {
				s.add(time.Now(), periodicCheck)
			}
			checkTimer.Reset(t.Check)
		case <-wake:
			p := s.take()
			restored, err := restore(&p)
			now := time.Now()
			if ev, ok := s.result(now, p, restored, err); ok {
				report(ev)
			}
			if ev, ok := s.backingOff(now); ok {
				report(ev)
			}
			if checkTimer != nil {
				// Everything was just checked: the next periodic check is a full Check away.
				checkTimer.Reset(t.Check)
			}
		}
		timer.Stop()
	}
}
