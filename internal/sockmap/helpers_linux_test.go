//go:build linux

package sockmap

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	sharedOnce  sync.Once
	sharedRelay *Relay
	sharedErr   error
)

// relayForTest opens the process's relay once. Without root or BPF the test is skipped, unless
// CI=true: there the kernel relay must work.
func relayForTest(t testing.TB) *Relay {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "kernel relay tests need root")
	}
	sharedOnce.Do(func() { sharedRelay, sharedErr = Open() })
	if sharedErr != nil {
		skipOrFail(t, "kernel relay unavailable: "+sharedErr.Error())
	}
	return sharedRelay
}

func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// topology is client ⇄ a (accepted) | kernel relay | b (dialed) ⇄ server.
type topology struct {
	client, a, b, server *net.TCPConn
}

func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.AcceptTCP(); ch <- res{c, err} }()
	d, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return d, r.c
}

func newTopology(t testing.TB) *topology {
	var tp topology
	tp.client, tp.a = tcpPair(t)
	tp.b, tp.server = tcpPair(t)
	t.Cleanup(func() {
		for _, c := range []*net.TCPConn{tp.client, tp.a, tp.b, tp.server} {
			c.Close()
		}
	})
	return &tp
}

// runner drives flows the way the gateway does: one epoll set, edge-triggered readability on both
// sockets, OnReadable per event.
type runner struct {
	ep   int
	mu   sync.Mutex
	byFD map[int32]sideRef
	stop chan struct{}
	wg   sync.WaitGroup
}

type sideRef struct {
	f    *Flow
	side int
}

func newRunner(t testing.TB) *runner {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{ep: ep, byFD: map[int32]sideRef{}, stop: make(chan struct{})}
	r.wg.Add(1)
	go r.loop()
	t.Cleanup(func() { close(r.stop); r.wg.Wait(); unix.Close(ep) })
	return r
}

func (r *runner) add(t testing.TB, f *Flow) {
	a, b := f.Fds()
	r.mu.Lock()
	r.byFD[int32(a)] = sideRef{f, 0}
	r.byFD[int32(b)] = sideRef{f, 1}
	r.mu.Unlock()
	for _, fd := range []int{a, b} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
		if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *runner) forget(f *Flow) {
	a, b := f.Fds()
	r.mu.Lock()
	delete(r.byFD, int32(a))
	delete(r.byFD, int32(b))
	r.mu.Unlock()
	unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, a, nil)
	unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, b, nil)
}

func (r *runner) loop() {
	defer r.wg.Done()
	evs := make([]unix.EpollEvent, 64)
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		n, err := unix.EpollWait(r.ep, evs, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		for _, ev := range evs[:max(n, 0)] {
			r.mu.Lock()
			ref, ok := r.byFD[ev.Fd]
			r.mu.Unlock()
			if ok {
				ref.f.OnReadable(ref.side)
			}
		}
	}
}

// addFlow puts the topology's a and b into the relay, driven by run; the returned channel receives
// the flow's end.
func addFlow(t testing.TB, rl *Relay, run *runner, tp *topology) (*Flow, <-chan error) {
	t.Helper()
	done := make(chan error, 1)
	f, err := rl.Add(tp.a, tp.b, func(f *Flow, err error) { done <- err })
	if err != nil {
		t.Fatal(err)
	}
	run.add(t, f)
	t.Cleanup(func() { run.forget(f); f.Remove() })
	return f, done
}

func waitDone(t testing.TB, done <-chan error, d time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatal("flow did not end")
		return nil
	}
}
