package gateway

import (
	"errors"
	"io"
	"net"
	"sync"
)

// closeWriter is a connection that can shut down its sending half (TCP, and the upstream
// connections of socksclient and httpproxy, which wrap a TCP connection).
type closeWriter interface{ CloseWrite() error }

// Relay copies bytes both ways between a and b until both directions have ended, then closes
// both. When one side finishes sending (EOF), the other side's write half is shut down and the
// opposite direction keeps flowing (half-close), as TCP allows. When a direction fails (reset,
// deadline), both connections are closed at once so the other direction cannot linger.
//
// Between two *net.TCPConn, io.Copy moves the data with splice(2) and never touches it in user
// space. It returns the bytes sent a→b ("up") and b→a ("down") and the first error that was not
// a clean end of stream.
func Relay(a, b net.Conn) (up, down int64, err error) {
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	closeBoth := func() {
		a.Close()
		b.Close()
	}
	pipe := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		var e error
		*n, e = io.Copy(dst, src)
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
	wg.Add(2)
	go pipe(b, a, &up)
	pipe(a, b, &down)
	wg.Wait()
	closeBoth()
	return up, down, firstErr
}
