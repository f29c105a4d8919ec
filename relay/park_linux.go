package relay

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// CanPark: Linux has the parker.
const CanPark = true

// The parker holds the directions of idle flows without a goroutine each: their source
// sockets sit in one epoll set of its own, armed one-shot for readability, and one goroutine
// waits on it for all of them. When a socket becomes readable (data, end of stream, error),
// that direction runs again on a fresh goroutine, whose stack starts small.
//
// The sockets stay registered in the runtime's own poller too; the two epoll sets do not
// interfere. A socket closed while parked leaves the set by itself (the kernel drops an epoll
// registration when the last descriptor of its file closes): whoever closes a flow also
// unparks its directions (relay.closeBoth), so nothing waits for an event that cannot come.
type parker struct {
	once sync.Once
	err  error
	epfd int

	mu   sync.Mutex
	dirs map[uint32]*direction
	next uint32
}

var theParker parker

// errNotParked is park's answer for a direction that was woken (its flow is ending) before the
// parker could take it.
var errNotParked = errors.New("relay parker: direction no longer parked")

// startParker starts the parker with the first relay, not the first park, so that its epoll
// descriptor and goroutine are part of the process's baseline from the first flow on.
func startParker() { theParker.once.Do(theParker.init) }

// park arms d's source socket in the parker. d.state must already be dirParked: an event may
// run d before park returns.
func park(d *direction) error {
	p := &theParker
	p.once.Do(p.init)
	if p.err != nil {
		return p.err
	}
	op := unix.EPOLL_CTL_MOD
	p.mu.Lock()
	token := d.token.Load()
	if token == 0 {
		for {
			p.next++
			if p.next != 0 && p.dirs[p.next] == nil {
				break
			}
		}
		token = p.next
		d.token.Store(token) // before the state check below: see forget
		p.dirs[token] = d
		op = unix.EPOLL_CTL_ADD
	}
	// closeBoth may have woken the direction meanwhile, and its flow may have ended already:
	// then it leaves the parker here, or nothing would ever take it out.
	if d.state.Load() != dirParked {
		delete(p.dirs, token)
		p.mu.Unlock()
		return errNotParked
	}
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(token)}
	var err error
	cerr := d.rs.Control(func(fd uintptr) {
		err = unix.EpollCtl(p.epfd, op, int(fd), &ev)
		if err == unix.ENOENT && op == unix.EPOLL_CTL_MOD {
			// An earlier ADD failed (ENOMEM, say) after the key was taken: add it now.
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if cerr != nil {
		return cerr
	}
	if err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// forget drops an ended direction's key. Its socket is about to close, which removes it from
// the epoll set. A direction that never parked has no key and costs no lock. One whose park is
// still running on another goroutine either stored its key before finding it no longer parked
// (which that ended flow's state change, sequenced after, makes visible here) or removes the
// key itself.
func forget(d *direction) {
	token := d.token.Load()
	if token == 0 {
		return
	}
	p := &theParker
	p.mu.Lock()
	delete(p.dirs, token)
	p.mu.Unlock()
}

func (p *parker) init() {
	p.dirs = make(map[uint32]*direction)
	p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if p.err != nil {
		p.err = fmt.Errorf("relay parker: %w", os.NewSyscallError("epoll_create1", p.err))
		return
	}
	go p.loop()
}

func (p *parker) loop() {
	events := make([]unix.EpollEvent, 256)
	ready := make([]*direction, 0, len(events))
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Cannot happen with a valid set and buffer; if it does, parked flows would
			// never wake, so this is fatal rather than silent.
			panic(fmt.Sprintf("relay parker: epoll_wait: %v", err))
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if d := p.dirs[uint32(ev.Fd)]; d != nil {
				ready = append(ready, d)
			}
		}
		p.mu.Unlock()
		for i, d := range ready {
			d.unpark()
			ready[i] = nil
		}
		ready = ready[:0]
	}
}
