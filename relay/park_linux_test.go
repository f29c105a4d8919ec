package relay

import (
	"errors"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
)

// A flow ended from outside (closeBoth: idle sweeper, shutdown, the other direction failing)
// while one of its directions was on its way into the parker: that late park call must not
// enter the direction, whose flow has ended and been forgotten (an entry left behind would
// hold the flow's relay and connections for the life of the process).
func TestParkRacingCloseLeavesNoEntry(t *testing.T) {
	_, relayA := testutil.TCPPair(t)
	relayB, _ := testutil.TCPPair(t)
	done := make(chan error, 1)
	r := New(Auto, relayA, relayB, func(up, down int64, err error) { done <- err })
	r.Start()
	r.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the flow did not end")
	}
	testutil.WaitUntil(t, "both directions ended", func() bool {
		return r.dirs[0].state.Load() == dirEnded && r.dirs[1].state.Load() == dirEnded
	})
	// The call that was on its way in goes on now, as it would after losing the race.
	if err := park(&r.dirs[0]); !errors.Is(err, errNotParked) {
		t.Fatalf("late park of an ended direction: %v, want errNotParked", err)
	}
	theParker.mu.Lock()
	defer theParker.mu.Unlock()
	for k, pd := range theParker.dirs {
		if pd.r == r {
			t.Errorf("parker holds key %d for a direction of the ended flow", k)
		}
	}
}
