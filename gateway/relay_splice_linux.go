package gateway

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The hybrid relay (RelayAuto on Linux) is the buffered relay until a read fills a whole
// buffer, which says bulk data is queued. It then moves bytes with splice(2) through a pipe
// borrowed from a small pool, waiting for the source in the poller with the pipe in hand, and
// gives the pipe back when the direction parks. So an idle flow holds only its two sockets
// (as the buffered relay), and a busy one copies nothing through user space and needs no
// readability probe between bursts (as the splice relay).

// relayPipe is one pipe, both ends non-blocking.
type relayPipe struct{ r, w int }

// spliceChunk is the most one splice call moves; the pipe is sized to hold it.
const spliceChunk = 1 << 20

// relayPipes keeps drained pipes for the next burst. Beyond its size, pipes are closed: the
// pool never holds more idle kernel buffers than this.
var relayPipes = make(chan *relayPipe, 64)

func getPipe() (*relayPipe, error) {
	select {
	case p := <-relayPipes:
		return p, nil
	default:
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A bigger pipe moves more per call; if the system refuses, the default 64 KiB works too.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, spliceChunk)
	return &relayPipe{r: fds[0], w: fds[1]}, nil
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
}

// spliceTarget returns the raw socket of dst when it is one splice can write to.
func spliceTarget(dst net.Conn) (syscall.RawConn, bool) {
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rd, err := sc.SyscallConn()
	return rd, err == nil
}

// spliceBurst moves what src sends to dst through pipe p (empty on entry and on a nil or
// timeout return): it waits in the poller for src to have data, splices it into the pipe and
// from the pipe to dst, and returns after each filling of the pipe (n bytes moved), when src
// ended (eof), or with the read deadline's timeout when src stayed idle until then. Writes
// wait for dst in the poller, so a slow receiver holds back the sender as TCP intends.
func spliceBurst(dst, src syscall.RawConn, p *relayPipe) (n int64, eof bool, err error) {
	var moved int64
	var serr error
	rerr := src.Read(func(fd uintptr) bool {
		for {
			m, e := unix.Splice(int(fd), nil, p.w, nil, spliceChunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			moved, serr = int64(m), e // the count is an int on 32-bit platforms
			if serr != unix.EINTR {
				return serr != unix.EAGAIN // EAGAIN: wait in the poller for src
			}
		}
	})
	if rerr != nil {
		return 0, false, rerr
	}
	switch {
	case serr != nil:
		return 0, false, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("splice", serr)}
	case moved == 0:
		return 0, true, nil
	}
	for inPipe := moved; inPipe > 0; {
		var out int64
		var werr error
		if err := dst.Write(func(fd uintptr) bool {
			m, e := unix.Splice(p.r, nil, int(fd), nil, int(inPipe), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			out, werr = int64(m), e
			return werr != unix.EAGAIN && werr != unix.EINTR // EAGAIN: wait until dst can take more
		}); err != nil {
			return n, false, err
		}
		if werr != nil {
			return n, false, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("splice", werr)}
		}
		inPipe -= out
		n += out
	}
	return n, false, nil
}
