// Package relay carries the bytes of a TCP flow both ways between two connections, with
// half-close, until both directions end. An idle direction holds no goroutine and no buffer (it
// waits in one shared epoll set, the parker); a bulk one splices through a pooled pipe. It knows
// nothing of flows, rules or upstreams, and imports only x/sys beyond the standard library.
package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode is how a relay moves bytes. The zero value is Auto.
type Mode uint8

const (
	// Auto is the measured default (docs/performance.md): buffered while a flow trickles,
	// splice through a pooled pipe while it moves bulk data (Linux), and parked with no
	// goroutine at all while it is idle.
	Auto Mode = iota
	// Splice moves bytes with splice(2) through a pipe per direction (io.Copy between two
	// *net.TCPConn): no copy through user space, but each flow holds two pipes (four fds and
	// their kernel buffers) and two goroutines for its whole life, idle or not.
	Splice
	// Buffered waits for a socket to become readable holding nothing, then borrows a pooled
	// buffer, reads and writes until the socket has no more, and gives the buffer back. An
	// idle flow is parked like Auto's.
	Buffered
)

// String is the mode's name in the config (relay: auto | splice | buffered).
func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Splice:
		return "splice"
	case Buffered:
		return "buffered"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// ParseMode reads a mode's config name (case-insensitively); "" is Auto.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "splice":
		return Splice, nil
	case "buffered":
		return Buffered, nil
	}
	return Auto, fmt.Errorf("must be one of auto, splice, buffered (got %.64q)", s)
}

// MarshalText writes the mode's config name; a mode outside the three is an error.
func (m Mode) MarshalText() ([]byte, error) {
	if m > Buffered {
		return nil, fmt.Errorf("must be one of auto, splice, buffered (got %s)", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText reads a mode's config name, as ParseMode does.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// relayBufSize is the size of a pooled relay buffer. It is only held while bytes are moving.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// DescriptorBudget is asked before the relay opens a pipe for splicing (two descriptors) and
// told when it closes one. A process near its RLIMIT_NOFILE refuses, and the burst is copied
// through a buffer instead: a flow never fails because no pipe could be had.
type DescriptorBudget interface {
	Acquire(n int) bool
	Release(n int)
}

// pipeCost is what one pipe holds: its two ends.
const pipeCost = 2

var budget atomic.Pointer[DescriptorBudget]

// SetDescriptorBudget makes every pipe opened from now on ask b first; nil asks nobody (pipe2
// alone says whether there is one). Pipes are charged to the budget they were opened under.
func SetDescriptorBudget(b DescriptorBudget) {
	if b == nil {
		budget.Store(nil)
		return
	}
	budget.Store(&b)
}

func loadBudget() DescriptorBudget {
	if p := budget.Load(); p != nil {
		return *p
	}
	return nil
}

// errNoPipeBudget is getPipe's answer when the descriptor budget has no room for a pipe.
var errNoPipeBudget = errors.New("relay: no descriptors to spare for a pipe")

// parkAfter is how long a direction waits for data in the runtime poller, on its own
// goroutine, before it parks: its goroutine ends and a single poller for all parked flows
// (parker) starts a new one when the socket becomes readable. A goroutine costs a flow
// several KiB of stack; a parked direction costs a map entry. A flow that sends every few
// hundred milliseconds (a shell session) stays on its goroutine; one that idles is parked.
var parkAfter = time.Second

// closeWriter is a connection that can shut down its sending half (TCP, and the upstream
// connections of socksclient and httpproxy, which wrap a TCP connection).
type closeWriter interface{ CloseWrite() error }

// Copy copies bytes both ways between a and b until both directions have ended, then
// closes both. When one side finishes sending (EOF), the other side's write half is shut down
// and the opposite direction keeps flowing (half-close), as TCP allows. When a direction fails
// (reset, deadline), both connections are closed at once so the other direction cannot linger.
//
// It returns the bytes sent a→b ("up") and b→a ("down") and the first error that was not a
// clean end of stream. The gateway itself uses New and Start, which return at once and report
// the flow's end through a callback.
func Copy(mode Mode, a, b net.Conn) (up, down int64, err error) {
	done := make(chan struct{})
	New(mode, a, b, func(u, d int64, e error) {
		up, down, err = u, d, e
		close(done)
	}).Start()
	<-done
	return up, down, err
}

// Relay is one flow's two directions: dirs[0] copies a→b, dirs[1] b→a. Each runs on a
// goroutine of its own while it has data or has just had some, and is parked (no goroutine)
// while its source stays idle. When both have ended, done runs once, on the goroutine of the
// direction that ended last.
type Relay struct {
	a, b net.Conn
	dirs [2]direction
	left atomic.Int32 // directions not ended yet
	mu   sync.Mutex
	err  error // the first error that was not a clean end
	done func(up, down int64, err error)
}

// direction states.
const (
	dirRunning int32 = iota // on a goroutine
	dirParked               // no goroutine: waiting in the parker for its source
	dirEnded
)

type direction struct {
	r        *Relay
	dst, src net.Conn
	splice   bool            // Splice: io.Copy for the flow's whole life
	rs       syscall.RawConn // src's socket: wait for readability, park; nil: block in Read
	wd       syscall.RawConn // dst's socket, written with raw calls (Linux); nil: dst.Write
	canBulk  bool            // bulk bursts may splice src to wd (Auto with a socket dst)
	bulk     bool            // moving bulk data: splice, waiting in the poller without a probe
	sp       *splicer        // splice state, from the first bulk burst on
	noPipe   bool            // no pipe was to be had: buffered until the direction next parks
	n        int64           // bytes written to dst
	state    atomic.Int32
	deadline time.Time             // src's read deadline, which bounds a wait before parking
	readFn   func(fd uintptr) bool // d.tryRead, bound once (a method value per read would allocate)
	writeFn  func(fd uintptr) bool // d.tryWrite, bound once
	bp       *[]byte               // tryRead's results, for read
	wb       []byte                // what write still has to write, and how it went
	wn       int
	werr     error
	rn       int
	rerr     error
	token    atomic.Uint32 // the parker's key for this direction, once parked
	lastErr  error         // why copy stopped
}

// New prepares a relay between a and b; Start runs it. done is called once, when both
// directions have ended and both connections are closed, with the bytes each way and the first
// error that was not a clean end.
func New(mode Mode, a, b net.Conn, done func(up, down int64, err error)) *Relay {
	r := &Relay{a: a, b: b, done: done}
	if mode != Splice {
		startParker()
	}
	r.left.Store(2)
	r.dirs[0].init(r, mode, b, a)
	r.dirs[1].init(r, mode, a, b)
	return r
}

func (d *direction) init(r *Relay, mode Mode, dst, src net.Conn) {
	d.r, d.dst, d.src = r, dst, src
	if mode == Splice {
		d.splice = true
		return
	}
	if sc, ok := src.(syscall.Conn); ok && CanPark {
		d.rs, _ = sc.SyscallConn()
		d.readFn = d.tryRead
	}
	if d.rs != nil {
		if d.wd, _ = rawTarget(dst); d.wd != nil {
			d.writeFn = d.tryWrite
		}
		d.canBulk = d.wd != nil && mode != Buffered
	}
}

// Start runs both directions on goroutines of their own and returns at once.
func (r *Relay) Start() {
	go r.dirs[0].run()
	go r.dirs[1].run()
}

// Close closes both connections and wakes any parked direction, which then ends on the
// closed socket. It is how a failed direction, the idle sweeper and shutdown end a flow.
func (r *Relay) Close() {
	r.a.Close()
	r.b.Close()
	for i := range r.dirs {
		r.dirs[i].unpark()
	}
}

func (r *Relay) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

// run copies until the source ends, fails or parks; a parked direction is run again by the
// parker, continuing where it stopped.
func (d *direction) run() {
	var err error
	defer func() {
		// A panic while copying ends the flow with it as the error; one in the flow's own
		// ending (d.end already ran) must not end it twice.
		if p := recover(); p != nil && d.state.Load() != dirEnded {
			d.end(fmt.Errorf("panic in relay: %v\n%s", p, debug.Stack()))
		}
	}()
	if d.splice {
		d.n, err = io.Copy(d.dst, d.src)
	} else if d.copy() {
		return // parked
	} else {
		err = d.lastErr
	}
	d.end(err)
}

// end finishes this direction: on a clean end of the source, the destination's write half is
// shut down and the other direction goes on; on an error, both sockets close. The last
// direction to end closes both sockets and reports the flow.
func (d *direction) end(err error) {
	d.state.Store(dirEnded)
	r := d.r
	halfClosed := false
	if err == nil {
		halfClosed = d.closeWrite()
		// Otherwise the peer cannot take a half-close: ending the flow is all that is left.
	} else if !errors.Is(err, net.ErrClosed) {
		r.fail(err)
	}
	if !halfClosed {
		r.Close()
	}
	if r.left.Add(-1) > 0 {
		return
	}
	r.a.Close()
	r.b.Close()
	for i := range r.dirs {
		forget(&r.dirs[i])
	}
	r.mu.Lock()
	err = r.err
	r.mu.Unlock()
	r.done(r.dirs[0].n, r.dirs[1].n, err)
}

// closeWrite shuts down dst's sending half and reports whether it could: with a raw call on a
// socket the relay writes raw (net's CloseWrite tells the scheduler of a call that never
// blocks, which wakes an idle sysmon), else through CloseWrite.
func (d *direction) closeWrite() bool {
	if d.wd != nil {
		return shutdownWrite(d.wd) == nil
	}
	cw, ok := d.dst.(closeWriter)
	return ok && cw.CloseWrite() == nil
}

// copy moves bytes from src to dst until src ends (false, lastErr nil), fails (false, lastErr
// set) or has been idle for parkAfter (true: parked, the goroutine must return).
//
// While src has nothing to read it holds no buffer: read waits in the poller and borrows a
// pooled buffer only once there is something to read. With Auto, a read that fills the
// whole buffer says bulk data is queued: the direction turns to splice (bulk) and stays with it
// until it parks, so a busy flow copies nothing through user space.
func (d *direction) copy() (parked bool) {
	if d.rs == nil {
		d.lastErr = d.copyHolding()
		return false
	}
	for {
		if d.bulk {
			parked, err, done := d.spliceUntilIdle()
			if done {
				d.lastErr = err
				return false
			}
			if parked {
				return true
			}
			continue
		}
		if err := d.refreshDeadline(); err != nil {
			d.lastErr = err
			return false
		}
		bp, n, err := d.read()
		if isTimeout(err) {
			d.noPipe = false
			if d.park() {
				return true
			}
			continue
		}
		if err != nil || n == 0 { // n == 0: end of stream
			d.lastErr = err
			return false
		}
		w, err := d.write((*bp)[:n])
		relayBufs.Put(bp)
		d.n += int64(w)
		if err != nil {
			d.lastErr = err
			return false
		}
		if n == relayBufSize && d.canBulk && !d.noPipe {
			d.bulk = true
		}
	}
}

// copyHolding relays from a source that is not a socket of its own (a wrapped connection, such
// as one replaying a client's early bytes): it holds a buffer and its goroutine while it waits.
func (d *direction) copyHolding() error {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	for {
		_, w, eof, err := readWrite(d.dst, d.src, *bp)
		d.n += w
		if err != nil || eof {
			return err
		}
	}
}

// spliceUntilIdle moves bytes with splice through a pooled pipe, waiting for src in the
// runtime poller between bursts, until src ends or fails (done), or has been idle for
// parkAfter: then the pipe goes back to the pool, the direction leaves bulk mode and parks.
func (d *direction) spliceUntilIdle() (parked bool, err error, done bool) {
	p, err := getPipe()
	if err != nil {
		// No pipe to be had (out of descriptors, or the budget keeps them for new flows):
		// this burst goes through a buffer; the next one, after the direction parked, tries
		// again.
		d.bulk, d.noPipe = false, true
		return false, nil, false
	}
	for {
		d.refreshDeadline()
		m, eof, err := spliceBurst(d, p)
		d.n += m
		switch {
		case err != nil && isTimeout(err):
			putPipe(p) // the burst ended with the pipe drained
			d.bulk = false
			return d.park(), nil, false
		case err != nil:
			p.close() // bytes may be stranded in it: never hand them to another flow
			return false, err, true
		case eof:
			putPipe(p)
			return false, nil, true
		}
	}
}

// refreshDeadline keeps src's read deadline, which bounds a wait before parking, about
// parkAfter away. It is moved only when less than half of parkAfter is left, so a busy flow
// touches its timer about once per half parkAfter, not once per read.
func (d *direction) refreshDeadline() error {
	now := time.Now()
	if d.deadline.Sub(now) < parkAfter/2 {
		d.deadline = now.Add(parkAfter)
		return d.src.SetReadDeadline(d.deadline)
	}
	return nil
}

// park hands the direction to the parker and reports true if its goroutine must now return.
// If the parker cannot take it (the socket was closed meanwhile), the direction goes on here.
func (d *direction) park() bool {
	d.state.Store(dirParked)
	if err := park(d); err != nil {
		// It was never armed. If closeBoth woke it meanwhile, the goroutine it started owns
		// the direction now; otherwise go on waiting here (a closed socket shows up as the
		// wait's error).
		return !d.state.CompareAndSwap(dirParked, dirRunning)
	}
	return true
}

// unpark runs a parked direction again on a new goroutine; it does nothing to a running or
// ended one. The parker calls it when the source becomes readable, closeBoth when the flow
// is being ended.
func (d *direction) unpark() {
	if d.state.CompareAndSwap(dirParked, dirRunning) {
		go d.run()
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// readWrite reads once from src into buf and writes what it read to dst. It returns how many
// bytes were read and written; eof reports a clean end of src.
func readWrite(dst, src net.Conn, buf []byte) (read int, written int64, eof bool, err error) {
	n, rerr := src.Read(buf)
	if n > 0 {
		w, werr := dst.Write(buf[:n])
		written = int64(w)
		if werr == nil && w < n {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			return n, written, false, werr
		}
	}
	if rerr == io.EOF {
		return n, written, true, nil
	}
	return n, written, false, rerr
}

// Parks reports whether both directions read a raw socket of their own, so that an idle one can
// be parked (no goroutine, no buffer) instead of waiting on a goroutine.
func (r *Relay) Parks() bool { return r.dirs[0].rs != nil && r.dirs[1].rs != nil }
