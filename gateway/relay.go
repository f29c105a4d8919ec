package gateway

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
)

// Relay modes, as in configs.Config.Relay.
const (
	// RelayAuto is the measured default (see tests/bench/results): buffered while a flow is
	// idle or trickles, splice through a pooled pipe while it moves bulk data (Linux).
	RelayAuto = "auto"
	// RelaySplice moves bytes with splice(2) through a pipe per direction (io.Copy between
	// two *net.TCPConn): no copy through user space, but each flow holds two pipes (four fds
	// and their kernel buffers) for its whole life, idle or not.
	RelaySplice = "splice"
	// RelayBuffered waits for a socket to become readable holding nothing, then borrows a
	// pooled buffer, reads and writes until the socket has no more, and gives the buffer back.
	// An idle flow holds no buffer, no pipe and only its two sockets.
	RelayBuffered = "buffered"
	// RelayKernel is the sockmap relay; not built yet, it falls back to the default.
	RelayKernel = "kernel"
)

// relayBufSize is the size of a pooled relay buffer. It is only held while bytes are moving.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// closeWriter is a connection that can shut down its sending half (TCP, and the upstream
// connections of socksclient and httpproxy, which wrap a TCP connection).
type closeWriter interface{ CloseWrite() error }

// Relay copies bytes both ways between a and b with the default relay; see RelayWith.
func Relay(a, b net.Conn) (up, down int64, err error) {
	return RelayWith(RelayAuto, a, b)
}

// RelayWith copies bytes both ways between a and b until both directions have ended, then
// closes both. When one side finishes sending (EOF), the other side's write half is shut down
// and the opposite direction keeps flowing (half-close), as TCP allows. When a direction fails
// (reset, deadline), both connections are closed at once so the other direction cannot linger.
//
// mode is one of RelayAuto (also ""), RelaySplice, RelayBuffered or RelayKernel (which falls
// back to the default for now). It returns the bytes sent a→b ("up") and b→a ("down") and the
// first error that was not a clean end of stream.
func RelayWith(mode string, a, b net.Conn) (up, down int64, err error) {
	copyFn := copyHybrid
	switch mode {
	case RelaySplice:
		copyFn = copySplice
	case RelayBuffered:
		copyFn = copyBuffered
	}
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	closeBoth := func() {
		a.Close()
		b.Close()
	}
	pipe := func(dst, src net.Conn, n *int64) {
		var e error
		*n, e = copyFn(dst, src)
		if e == nil {
			if cw, ok := dst.(closeWriter); ok {
				if cw.CloseWrite() == nil {
					return
				}
			}
			// The peer cannot take a half-close: ending the flow is all that is left.
		} else if !errors.Is(e, net.ErrClosed) {
			once.Do(func() { firstErr = e })
		}
		closeBoth()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(b, a, &up)
	}()
	pipe(a, b, &down)
	wg.Wait()
	closeBoth()
	return up, down, firstErr
}

// copySplice is io.Copy: between two *net.TCPConn it splices through a pipe the runtime keeps
// for the whole copy.
func copySplice(dst, src net.Conn) (int64, error) {
	return io.Copy(dst, src)
}

// copyHybrid is copyBuffered that hands bulk bursts to splice(2) when both ends are plain TCP
// sockets: a read that fills the whole buffer means more is queued, and the rest of the burst
// goes through a pooled pipe without passing through user space.
func copyHybrid(dst, src net.Conn) (int64, error) {
	rd, rs, ok := rawConns(dst, src)
	if !ok {
		return copyBuffered(dst, src)
	}
	var total int64
	for {
		if err := waitReadable(rs); err != nil {
			return total, err
		}
		bp := relayBufs.Get().(*[]byte)
		n, w, eof, err := readWrite(dst, src, *bp)
		relayBufs.Put(bp)
		total += w
		if err != nil || eof {
			return total, err
		}
		if n < relayBufSize {
			continue // a small read: the source is drained, wait again holding nothing
		}
		m, eof, err := spliceBurst(rd, rs)
		total += m
		if err != nil {
			return total, err
		}
		if eof {
			return total, nil
		}
	}
}

// copyBuffered copies src to dst until EOF. While src has nothing to read it holds no buffer:
// it waits for readability (waitReadable), then borrows a pooled buffer and keeps it only as
// long as reads fill it.
func copyBuffered(dst, src net.Conn) (int64, error) {
	var rc syscall.RawConn
	if sc, ok := src.(syscall.Conn); ok {
		rc, _ = sc.SyscallConn()
	}
	var total int64
	for {
		if rc != nil {
			if err := waitReadable(rc); err != nil {
				return total, err
			}
		}
		bp := relayBufs.Get().(*[]byte)
		buf := *bp
		for {
			n, w, eof, err := readWrite(dst, src, buf)
			total += w
			if err != nil || eof {
				relayBufs.Put(bp)
				return total, err
			}
			if n < len(buf) && rc != nil {
				break // drained: give the buffer back while waiting
			}
		}
		relayBufs.Put(bp)
	}
}

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
