//go:build linux

// Command gobound is the bench's bound for a relay written in Go: what redsocks does with a
// redirected TCP connection (accept, SO_ORIGINAL_DST, a SOCKS5 CONNECT to one proxy, relay,
// close), in one goroutine locked to its thread, with one level-triggered epoll loop and
// direct x/sys/unix calls (no runtime poller): no goroutine or timer per flow, one small
// allocation (the accepted address), no routing, limits, logs, timeouts or IPv6. Out of
// descriptors, its level-triggered listener spins until one frees: the bench raises the limit
// far above what it opens. It is not socksgate and is not meant to become it; it measures how
// close to redsocks Go's runtime lets a relay come on the machine the bench runs on, which is
// what issue 14's per-flow targets depend on (docs/performance.md, "Fourth round"). With
// -mode net it does the same job the idiomatic way (net.go), two goroutines per flow: the two
// side by side separate what the goroutine-per-flow model costs from what socksgate does per
// flow.
//
//	gobound [-mode loop|net] -listen 0.0.0.0:12346 -socks 10.0.1.2:1080
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"

	"github.com/socksgate/socksgate/nat"
	"golang.org/x/sys/unix"
)

// States of a socket's side of a flow.
const (
	stClient     = iota // accepted; waits for the proxy's reply before it is read
	stConnecting        // the upstream socket's connect is in flight
	stReply             // greeting and request sent; reading the proxy's replies
	stRelay             // both sides relay
)

type side struct {
	peer    int32
	state   uint8
	rdDone  bool   // read end reached (EOF), or never to be read again
	shut    bool   // shutdown(SHUT_WR) done
	events  uint32 // what epoll watches now
	pending []byte // bytes read from peer not yet written here
	dst     [6]byte
	reply   [12]byte // the proxy's replies, as read so far
	got     int
}

type loop struct {
	ep     int
	proxy  unix.SockaddrInet4
	sides  []side
	buf    [32 << 10]byte
	events [128]unix.EpollEvent
}

func main() {
	listen := flag.String("listen", "0.0.0.0:12346", "address to accept redirected connections on")
	socks := flag.String("socks", "", "the SOCKS5 proxy, ip:port (IPv4)")
	mode := flag.String("mode", "loop", "loop: one epoll loop; net: a goroutine per flow with net's listener and dialer")
	flag.Parse()
	lnAP, err1 := netip.ParseAddrPort(*listen)
	pAP, err2 := netip.ParseAddrPort(*socks)
	if err1 != nil || err2 != nil || !lnAP.Addr().Is4() || !pAP.Addr().Is4() {
		fmt.Fprintln(os.Stderr, "gobound: -listen and -socks take ip:port, IPv4")
		os.Exit(2)
	}
	run := runLoop
	switch *mode {
	case "loop":
		runtime.LockOSThread()
	case "net":
		run = runNet
	default:
		fmt.Fprintln(os.Stderr, "gobound: -mode is loop or net")
		os.Exit(2)
	}
	if err := run(lnAP, pAP); err != nil {
		fmt.Fprintln(os.Stderr, "gobound:", err)
		os.Exit(1)
	}
}

func runLoop(lnAP, pAP netip.AddrPort) error {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	unix.SetsockoptInt(ln, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Port: int(lnAP.Port()), Addr: lnAP.Addr().As4()}); err != nil {
		return err
	}
	if err := unix.Listen(ln, 4096); err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	l := &loop{ep: ep, proxy: unix.SockaddrInet4{Port: int(pAP.Port()), Addr: pAP.Addr().As4()}}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ln, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ln)}); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "gobound listening on", lnAP)
	for {
		n, err := unix.EpollWait(ep, l.events[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		acc := false
		for _, ev := range l.events[:n] {
			if int(ev.Fd) == ln {
				acc = true
				continue
			}
			l.ready(int(ev.Fd), ev.Events)
		}
		// Accepting last: a descriptor closed in this batch cannot come back as a new flow's
		// while an older event for it is still to be handled (a closed side's state is
		// stClient, which no event touches).
		if acc {
			l.accept(ln)
		}
	}
}

func (l *loop) side(fd int) *side {
	for fd >= len(l.sides) {
		l.sides = append(l.sides, make([]side, len(l.sides)+1024)...)
	}
	return &l.sides[fd]
}

func (l *loop) accept(ln int) {
	for {
		c, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or out of descriptors: the next readiness tries again
		}
		dst, err := nat.OriginalDst4(c)
		if err != nil {
			unix.Close(c)
			continue
		}
		u, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(c)
			continue
		}
		l.side(max(c, u)) // grows the table first: a pointer into it must not outlive a growth
		cs, us := &l.sides[c], &l.sides[u]
		*cs = side{peer: int32(u), state: stClient}
		*us = side{peer: int32(c), state: stConnecting}
		a4 := dst.Addr().As4()
		copy(us.dst[:4], a4[:])
		binary.BigEndian.PutUint16(us.dst[4:], dst.Port())
		if err := unix.Connect(u, &l.proxy); err != nil && err != unix.EINPROGRESS {
			l.closeFlow(c)
			continue
		}
		l.watch(u, unix.EPOLLOUT)
	}
}

// watch sets what epoll watches on fd, adding it on first use.
func (l *loop) watch(fd int, events uint32) {
	s := &l.sides[fd]
	if s.events == events {
		return
	}
	op := unix.EPOLL_CTL_MOD
	if s.events == 0 {
		op = unix.EPOLL_CTL_ADD
	}
	if events == 0 {
		op = unix.EPOLL_CTL_DEL
	}
	s.events = events
	unix.EpollCtl(l.ep, op, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)})
}

func (l *loop) ready(fd int, events uint32) {
	s := &l.sides[fd]
	switch s.state {
	case stConnecting:
		if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			l.closeFlow(fd)
			return
		}
		// Greeting (no authentication) and CONNECT, pipelined.
		var req [13]byte
		copy(req[:], []byte{5, 1, 0, 5, 1, 0, 1})
		copy(req[7:], s.dst[:])
		if n, err := unix.Write(fd, req[:]); err != nil || n != len(req) {
			l.closeFlow(fd)
			return
		}
		s.state = stReply
		l.watch(fd, unix.EPOLLIN)
	case stReply:
		// Method choice (2 bytes), then VER REP RSV ATYP, an IPv4 address and a port: read
		// exactly that, so bytes the destination sends first stay for the relay.
		const want = 2 + 4 + 6
		n, err := unix.Read(fd, s.reply[s.got:want])
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			l.closeFlow(fd)
			return
		}
		s.got += n
		if s.got < want {
			return
		}
		if s.reply[1] != 0 || s.reply[3] != 0 || s.reply[5] != 1 {
			l.closeFlow(fd)
			return
		}
		s.state = stRelay
		l.sides[s.peer].state = stRelay
		l.update(fd)
		l.update(int(s.peer))
	case stRelay:
		if events&unix.EPOLLERR != 0 || events&unix.EPOLLHUP != 0 && s.events&unix.EPOLLIN == 0 {
			l.closeFlow(fd) // an error, or a hang-up nothing here would read: never spin on it
			return
		}
		if events&unix.EPOLLOUT != 0 && len(s.pending) > 0 {
			n, err := unix.Write(fd, s.pending)
			if err != nil && err != unix.EAGAIN {
				l.closeFlow(fd)
				return
			}
			if s.pending = s.pending[max(n, 0):]; len(s.pending) == 0 {
				s.pending = nil
			}
		}
		if events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 && !s.rdDone && len(l.sides[s.peer].pending) == 0 {
			if !l.forward(fd) {
				return
			}
		}
		if !l.finish(fd) {
			l.update(fd)
			l.update(int(s.peer))
		}
	}
}

// forward reads what fd has and writes it to its peer; false when it closed the flow.
func (l *loop) forward(fd int) bool {
	s := &l.sides[fd]
	p := int(s.peer)
	n, err := unix.Read(fd, l.buf[:])
	if err == unix.EAGAIN {
		return true
	}
	if err != nil {
		l.closeFlow(fd)
		return false
	}
	if n == 0 {
		s.rdDone = true
		return true
	}
	w, err := unix.Write(p, l.buf[:n])
	if err == unix.EAGAIN {
		w, err = 0, nil
	}
	if err != nil {
		l.closeFlow(fd)
		return false
	}
	if w < n { // only under back-pressure, which the bench's short flows do not meet
		l.sides[p].pending = append([]byte(nil), l.buf[w:n]...)
	}
	return true
}

// finish half-closes a peer whose source has ended and all of whose bytes are written, and
// closes the flow when both directions are done; true when it closed it.
func (l *loop) finish(fd int) bool {
	for _, a := range [2]int{fd, int(l.sides[fd].peer)} {
		s := &l.sides[a]
		p := &l.sides[s.peer]
		if s.rdDone && !p.shut && len(p.pending) == 0 {
			unix.Shutdown(int(s.peer), unix.SHUT_WR)
			p.shut = true
		}
	}
	s, p := &l.sides[fd], &l.sides[l.sides[fd].peer]
	if s.shut && p.shut {
		l.closeFlow(fd)
		return true
	}
	return false
}

// update sets fd's interest from its state: readable while its peer has nothing pending,
// writable while it has.
func (l *loop) update(fd int) {
	s := &l.sides[fd]
	var ev uint32
	if !s.rdDone && len(l.sides[s.peer].pending) == 0 {
		ev |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if len(s.pending) > 0 {
		ev |= unix.EPOLLOUT
	}
	l.watch(fd, ev)
}

// closeFlow closes both sockets of fd's flow (closing a socket takes it out of epoll).
func (l *loop) closeFlow(fd int) {
	p := int(l.sides[fd].peer)
	for _, x := range [2]int{fd, p} {
		l.sides[x] = side{}
		unix.Close(x)
	}
}
