package gateway

import (
	"testing"
	"time"
)

// A flow ended from outside (closeBoth: idle sweeper, shutdown, the other direction failing)
// while one of its directions is on its way into the parker for the first time: the flow ends
// once, and the parker keeps no entry for it (an entry left behind would hold the flow's relay
// and connections for the life of the process).
func TestParkRacingCloseLeavesNoEntry(t *testing.T) {
	old := parkAfter
	parkAfter = 20 * time.Millisecond
	t.Cleanup(func() { parkAfter = old; testHookPark = nil })

	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	_, _ = client, server
	var r *relay
	inPark, release := make(chan *direction, 2), make(chan struct{})
	testHookPark = func(d *direction) {
		if d.r == r {
			inPark <- d
			<-release
		}
	}
	done := make(chan error, 1)
	r = newRelay(RelayAuto, relayA, relayB, func(up, down int64, err error) { done <- err })
	r.start()

	d := <-inPark // one direction, idle for parkAfter, is about to enter the parker
	r.closeBoth() // wakes it: a goroutine of its own runs it to its end on the closed socket
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the flow did not end")
	}
	waitUntil(t, "both directions ended", func() bool {
		return r.dirs[0].state.Load() == dirEnded && r.dirs[1].state.Load() == dirEnded
	})
	time.Sleep(50 * time.Millisecond) // the paused park call returns
	theParker.mu.Lock()
	defer theParker.mu.Unlock()
	for k, pd := range theParker.dirs {
		if pd.r == r {
			t.Errorf("parker still holds key %d for a direction of the ended flow (the one paused: %v)", k, pd == d)
		}
	}
}
