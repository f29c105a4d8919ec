package relay

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The hybrid relay (Auto on Linux) is the buffered relay until a read fills a whole
// buffer, which says bulk data is queued. It then moves bytes with splice(2) through a pipe
// borrowed from a small pool, waiting for the source in the poller with the pipe in hand, and
// gives the pipe back when the direction parks. So an idle flow holds only its two sockets
// (as the buffered relay), and a busy one copies nothing through user space and needs no
// readability probe between bursts (as the splice relay).

// relayPipe is one pipe, both ends non-blocking, and the budget its descriptors are charged to.
type relayPipe struct {
	r, w int
	b    DescriptorBudget
}

// spliceChunk is the most one splice call moves; the pipe is sized to hold it.
const spliceChunk = 1 << 20

// relayPipes keeps drained pipes for the next burst. Beyond its size, pipes are closed: the
// pool never holds more idle kernel buffers than this.
var relayPipes = make(chan *relayPipe, 64)

// pipe2 makes a pipe; a variable so that tests can make it fail as a process out of
// descriptors does (EMFILE).
var pipe2 = unix.Pipe2

// getPipe returns a drained pipe from the pool or a new one. It fails when the descriptor budget
// has no room for two more (errNoPipeBudget) or pipe2 fails (EMFILE, ENFILE): the caller then
// copies through a buffer instead.
func getPipe() (*relayPipe, error) {
	select {
	case p := <-relayPipes:
		return p, nil
	default:
	}
	b := loadBudget()
	if b != nil && !b.Acquire(pipeCost) {
		return nil, errNoPipeBudget
	}
	var fds [2]int
	if err := pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		if b != nil {
			b.Release(pipeCost)
		}
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A bigger pipe moves more per call; if the system refuses, the default 64 KiB works too.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, spliceChunk)
	return &relayPipe{r: fds[0], w: fds[1], b: b}, nil
}

// putPipe returns a drained pipe to the pool, or closes it.
func putPipe(p *relayPipe) {
	select {
	case relayPipes <- p:
	default:
		p.close()
	}
}

func (p *relayPipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
	if p.b != nil {
		p.b.Release(pipeCost)
	}
}

// FreeIdlePipes closes the drained pipes kept for the next burst and returns how many
// descriptors that gave back. A gateway short of descriptors calls it before it refuses a flow.
func FreeIdlePipes() int {
	n := 0
	for {
		select {
		case p := <-relayPipes:
			p.close()
			n += pipeCost
		default:
			return n
		}
	}
}

// rawTarget returns the raw socket of dst, which the relay writes and splices to directly.
func rawTarget(dst net.Conn) (syscall.RawConn, bool) {
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rd, err := sc.SyscallConn()
	return rd, err == nil
}

// splicer is a direction's splice state, made at its first bulk burst: its callbacks are bound
// once, so a burst allocates nothing (a closure per call would).
type splicer struct {
	d             *direction
	p             *relayPipe
	moved, inPipe int64
	err           error
	in, out       func(fd uintptr) bool
}

// spliceBurst moves what src sends to dst through pipe p (empty on entry and on a nil or
// timeout return): it waits in the poller for src to have data, splices it into the pipe and
// from the pipe to dst, and returns after each filling of the pipe (n bytes moved), when src
// ended (eof), or with the read deadline's timeout when src stayed idle until then. Writes
// wait for dst in the poller, so a slow receiver holds back the sender as TCP intends.
func spliceBurst(d *direction, p *relayPipe) (n int64, eof bool, err error) {
	s := d.sp
	if s == nil {
		s = &splicer{d: d}
		s.in, s.out = s.spliceIn, s.spliceOut
		d.sp = s
	}
	s.p, s.err = p, nil
	if err := d.rs.Read(s.in); err != nil {
		return 0, false, err
	}
	switch {
	case s.err != nil:
		return 0, false, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("splice", s.err)}
	case s.moved == 0:
		return 0, true, nil
	}
	for s.inPipe = s.moved; s.inPipe > 0; {
		if err := d.wd.Write(s.out); err != nil {
			return n, false, err
		}
		if s.err != nil {
			return n, false, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("splice", s.err)}
		}
		n += s.moved
		s.inPipe -= s.moved
	}
	return n, false, nil
}

// spliceIn moves what the source socket has into the pipe; EAGAIN waits in the poller.
func (s *splicer) spliceIn(fd uintptr) bool {
	for {
		m, e := rawSplice(int(fd), s.p.w, spliceChunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		s.moved, s.err = int64(m), e // the count is an int on 32-bit platforms
		if e != unix.EINTR {
			if e == unix.EAGAIN {
				return false
			}
			return true
		}
	}
}

// spliceOut moves what the pipe holds to the destination socket; EAGAIN waits until it can
// take more.
func (s *splicer) spliceOut(fd uintptr) bool {
	m, e := rawSplice(s.p.r, int(fd), int(s.inPipe), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	s.moved, s.err = int64(m), e
	if e == unix.EAGAIN || e == unix.EINTR {
		s.moved, s.err = 0, nil
		return false
	}
	if e != nil {
		s.moved = 0
	}
	return true
}
