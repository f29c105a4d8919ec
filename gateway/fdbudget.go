package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/socksgate/socksgate/internal/udpbatch"
	"github.com/socksgate/socksgate/internal/udploop"
	"github.com/socksgate/socksgate/nat"
	"github.com/socksgate/socksgate/relay"
)

// ErrDescriptorLimit refuses a new flow, association or UDP path when the process is close to
// its RLIMIT_NOFILE: what is left is kept for the flows already live (a pipe to splice, a new
// upstream path), the listeners, the admin endpoint, DNS and the log.
var ErrDescriptorLimit = &Refusal{"descriptors", "refused: file descriptors nearly exhausted"}

// What each kind of flow holds, in descriptors. A pipe (two, while a direction splices) is
// charged by the relay itself (relay.SetDescriptorBudget), and a burst with none to be had is
// copied through a buffer, so a TCP flow is admitted for its two sockets.
const (
	fdsPerFlow    = 2 // a TCP flow: client and remote; an explicit UDP association: control connection and client UDP socket
	fdsPerUDPPath = 2 // one way out of a UDP session: an upstream association (control + UDP), or a direct socket (1)
	fdsPerReply   = 1 // a transparent UDP session's reply socket, bound to one remote's address
)

// fdBudget counts the descriptors flows hold against the soft RLIMIT_NOFILE, less a reserve
// (squid keeps one too) for what is not a flow: listeners, the admin endpoint, DNS lookups,
// health checks, the log, handshakes still being read, and accept(2) itself. A flow asks
// Acquire before it opens anything and gives back with Release what it was granted.
//
// The charges are what each kind of flow is known to hold; the process may hold more
// (Splice-mode pipes of the Go runtime, resolver sockets, connections in their handshake). So
// the descriptors really open are counted too (/proc/self/fd): once every recountEvery grants,
// and on every grant once the estimate is near the bound. Between counts the estimate is the
// last count plus what was charged since. The zero value and a nil *fdBudget grant everything.
type fdBudget struct {
	room int64 // descriptors the process may have open with flows: the limit less the reserve
	hard int64 // what sockets in their handshake may take of the reserve: all but a quarter of it
	near int64 // beyond this estimate, every grant counts the real descriptors first

	held      atomic.Int64 // charged to flows and pipes now
	pipesHeld atomic.Int64 // of which pipes

	mu          sync.Mutex
	count       func() (int, error) // descriptors open now; nil: the charges alone decide
	lastOpen    int64               // the last count
	heldAtCount int64               // held at that count
	sinceCount  int                 // grants since that count
	relieve     func() int          // frees idle descriptors (pooled pipes) before a refusal; optional
}

// recountEvery is how many grants may go by on the estimate alone while it is far from the
// bound; near it every grant counts.
const recountEvery = 64

// fdReserve is what the budget keeps for everything that is not a flow: an eighth of the
// limit, at least 64 and at most 512 (squid: 100), and never more than half.
func fdReserve(limit int64) int64 { return min(max(limit/8, 64), 512, limit/2) }

// newFDBudget makes the budget for a soft RLIMIT_NOFILE of limit (0, unknown: nil, no bound).
func newFDBudget(limit uint64) *fdBudget {
	if limit == 0 || limit > 1<<40 {
		return nil
	}
	l := int64(limit)
	b := &fdBudget{room: max(l-fdReserve(l), 0), relieve: relay.FreeIdlePipes}
	b.hard = max(l-max(fdReserve(l)/4, 16), b.room)
	b.near = b.room * 3 / 4
	if openFDs != nil {
		if _, err := openFDs(); err == nil {
			b.count = openFDs
		}
	}
	return b
}

// Acquire grants n descriptors, or refuses (false) when they would leave less than the reserve.
func (b *fdBudget) Acquire(n int) bool {
	if b == nil || b.room == 0 && b.count == nil {
		return true
	}
	if b.grant(int64(n), b.room) {
		return true
	}
	if b.relieve != nil && b.relieve() > 0 {
		return b.grant(int64(n), b.room)
	}
	return false
}

// pipes is the budget as the relay sees it (relay.SetDescriptorBudget): splicing is only
// faster, and a burst without a pipe is copied through a buffer, so pipes may hold at most a
// quarter of the room between them. A pipe is held as long as its direction is stalled (bytes
// in it that the receiver does not take), so without that share the stalled flows of a busy
// minute would keep every new flow out.
func (b *fdBudget) pipes() relay.DescriptorBudget {
	if b == nil {
		return nil
	}
	return pipeBudget{b}
}

type pipeBudget struct{ b *fdBudget }

func (p pipeBudget) Acquire(n int) bool {
	b := p.b
	if b.room == 0 && b.count == nil {
		return true
	}
	if b.pipesHeld.Add(int64(n)) > b.room/4 || !b.grant(int64(n), b.room) {
		b.pipesHeld.Add(-int64(n))
		return false
	}
	return true
}

func (p pipeBudget) Release(n int) {
	if p.b.room == 0 && p.b.count == nil {
		return
	}
	p.b.pipesHeld.Add(-int64(n))
	p.b.Release(n)
}

// acceptFits reports whether one more accepted socket, whose handshake is yet to run, leaves
// the process within the reserve but its last quarter. It charges nothing (the flow the
// handshake begins is charged then, and a socket of a handshake that ends without one is not
// a flow); near the bound the real descriptors are counted, accepted sockets among them, so a
// burst accepted faster than its handshakes end is refused at accept instead of taking the
// descriptors admitted flows are about to dial with.
func (b *fdBudget) acceptFits() bool {
	if b == nil || b.room == 0 && b.count == nil {
		return true
	}
	return b.check(1, b.hard, false)
}

// fits reports whether n more descriptors would be granted now, without charging them.
func (b *fdBudget) fits(n int) bool {
	if b == nil || b.room == 0 && b.count == nil {
		return true
	}
	return b.check(int64(n), b.room, false)
}

// grant charges n if that leaves the charges, and the estimate of what is open, within bound.
func (b *fdBudget) grant(n, bound int64) bool { return b.check(n, bound, true) }

func (b *fdBudget) check(n, bound int64, charge bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	held := b.held.Load()
	if held+n > bound {
		return false
	}
	if b.count != nil {
		est := b.lastOpen + held - b.heldAtCount
		if b.sinceCount >= recountEvery || est+n > b.near || b.lastOpen == 0 {
			if open, err := b.count(); err == nil {
				b.lastOpen, b.heldAtCount, b.sinceCount = int64(open), held, 0
				est = int64(open)
			}
		}
		if est+n > bound {
			return false
		}
		if charge {
			b.sinceCount++
		}
	}
	if charge {
		b.held.Add(n)
	}
	return true
}

// admitAssociation is admit for an explicit UDP association, which is refused too when its
// first path (fdsPerUDPPath) would not fit: a client told its association is open then gets
// its datagrams through, not ErrDescriptorLimit on each. g.mu is held.
func (g *Gateway) admitAssociation(src netip.Addr) error {
	if err := g.admit(src); err != nil {
		return err
	}
	if !g.fds.fits(fdsPerUDPPath) {
		g.release(src)
		return ErrDescriptorLimit
	}
	return nil
}

// Release gives back n descriptors granted by Acquire.
func (b *fdBudget) Release(n int) {
	if b == nil || b.room == 0 && b.count == nil {
		return
	}
	b.held.Add(-int64(n))
}

// openUDP wraps a transparent UDP session's Open: a way out is charged fdsPerUDPPath while it
// is open, and refused with ErrDescriptorLimit when the budget has no room.
func (b *fdBudget) openUDP(open func(context.Context, netip.AddrPort) (nat.UDPConn, error)) func(context.Context, netip.AddrPort) (nat.UDPConn, error) {
	if b == nil {
		return open
	}
	return func(ctx context.Context, first netip.AddrPort) (nat.UDPConn, error) {
		if !b.Acquire(fdsPerUDPPath) {
			return nil, ErrDescriptorLimit
		}
		c, err := open(ctx, first)
		if err != nil {
			b.Release(fdsPerUDPPath)
			return nil, err
		}
		n := fdsPerUDPPath
		if _, direct := c.(*udpSocketCarrier); direct {
			// One socket: what was reserved for an association's second is given back, or
			// a budget of 20,000 would hold 10,000 direct sessions' 10,000 descriptors.
			b.Release(n - 1)
			n = 1
		}
		return &chargedUDPConn{UDPConn: c, charge: charge{b: b, n: n}}, nil
	}
}

// openReply wraps the table's OpenReply: a reply socket is charged fdsPerReply while it is open;
// without room the reply is dropped as one over the reply socket limit.
func (b *fdBudget) openReply(open func(netip.AddrPort) (nat.ReplyConn, error)) func(netip.AddrPort) (nat.ReplyConn, error) {
	if b == nil {
		return open
	}
	return func(remote netip.AddrPort) (nat.ReplyConn, error) {
		if !b.Acquire(fdsPerReply) {
			return nil, fmt.Errorf("%w: %w", nat.ErrReplyLimit, ErrDescriptorLimit)
		}
		c, err := open(remote)
		if err != nil {
			b.Release(fdsPerReply)
			return nil, err
		}
		return &chargedReplyConn{ReplyConn: c, charge: charge{b: b, n: fdsPerReply}}, nil
	}
}

// charge is n descriptors of b's, released once however often release is called; held
// inline (a closure and its sync.Once were a hundred bytes of every UDP session).
type charge struct {
	b        *fdBudget
	n        int
	released atomic.Bool
}

func (c *charge) release() {
	if c.released.CompareAndSwap(false, true) {
		c.b.Release(c.n)
	}
}

type chargedUDPConn struct {
	nat.UDPConn
	charge
}

// ServeReplies batches when the carrier it charges for does.
func (c *chargedUDPConn) ServeReplies(pool *udpbatch.Pool, fn func([]byte, netip.AddrPort) bool) error {
	if br, ok := c.UDPConn.(nat.BatchReader); ok {
		return br.ServeReplies(pool, fn)
	}
	return udpbatch.ErrUnsupported
}

// WatchReplies hands the carrier to the table's loop when the carrier it charges for can be.
func (c *chargedUDPConn) WatchReplies(l *udploop.Loop, b *udpbatch.Batch, fn func([]byte, netip.AddrPort), ended func(error)) error {
	if lr, ok := c.UDPConn.(nat.LoopReader); ok {
		return lr.WatchReplies(l, b, fn, ended)
	}
	return udploop.ErrUnsupported
}

func (c *chargedUDPConn) Close() error {
	err := c.UDPConn.Close()
	c.release()
	return err
}

type chargedReplyConn struct {
	nat.ReplyConn
	charge
}

func (c *chargedReplyConn) Close() error {
	err := c.ReplyConn.Close()
	c.release()
	return err
}
