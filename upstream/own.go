package upstream

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// OwnConns is the set of socksgate's own live TCP connections, by their local address: Direct
// adds every connection it dials (to a destination, to a proxy, for a health probe) and removes
// it when the connection is closed. A connection socksgate accepts whose peer is in the set is
// one of its own dials come back: an upstream, or a name, or a NAT that `check` could not see
// leads to socksgate itself. Refusing it at once is what stops a loop from nesting flows until
// a limit is hit.
//
// A local address and port can be shared by two connections to different remotes (Linux
// shares an ephemeral port across destinations), so entries count. In the rare case that
// another process on the router connects to socksgate from a port one of socksgate's own live
// dials also holds, that one connection is refused as a loop.
//
// The set is sharded by port: adding, removing and looking up take one short lock of one of
// ownShards maps (BenchmarkOwnConns). The zero value is ready to use.
type OwnConns struct {
	shards [ownShards]ownShard

	// A dial's connection is established in the kernel before DialContext returns and adds
	// it: the listener may accept it first. Await waits for the dials in flight then.
	dialing, waiters atomic.Int32
	mu               sync.Mutex
	ended            chan struct{} // closed (and dropped) when a dial ends while someone waits

	hmu        sync.RWMutex
	handshakes map[handshakeKey]int // proxy handshakes in flight (Handshake)
	proxies    map[netip.Addr]int   // the proxies of those handshakes
	inFlight   atomic.Int32         // handshakes recorded: none, no lock on a new flow
}

const ownShards = 32

type ownShard struct {
	mu sync.Mutex
	m  map[netip.AddrPort]int32
	_  [48]byte // 64 bytes a shard: shards on separate cache lines
}

func ownKey(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), ap.IsValid()
}

func (o *OwnConns) shard(ap netip.AddrPort) *ownShard { return &o.shards[ap.Port()%ownShards] }

func (o *OwnConns) add(ap netip.AddrPort) {
	s := o.shard(ap)
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[netip.AddrPort]int32)
	}
	s.m[ap]++
	s.mu.Unlock()
}

func (o *OwnConns) remove(ap netip.AddrPort) {
	s := o.shard(ap)
	s.mu.Lock()
	if s.m[ap]--; s.m[ap] <= 0 {
		delete(s.m, ap)
	}
	s.mu.Unlock()
}

// Has reports whether peer, the remote address of an accepted connection, is the local
// address of one of socksgate's own live connections. A nil set has nothing.
func (o *OwnConns) Has(peer netip.AddrPort) bool {
	if o == nil || !peer.IsValid() {
		return false
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap().WithZone(""), peer.Port())
	s := o.shard(peer)
	s.mu.Lock()
	n := s.m[peer]
	s.mu.Unlock()
	return n > 0
}

// Await is Has for a connection just accepted from one of this host's own addresses: when
// peer is not known yet and dials are in flight, it waits, at most max, for them to end (one
// of them may be this very connection, established but not added yet) and looks again.
// Connections from other hosts are never socksgate's own and need no wait.
func (o *OwnConns) Await(peer netip.AddrPort, max time.Duration) bool {
	if o == nil {
		return false
	}
	if o.Has(peer) || o.dialing.Load() == 0 {
		return o.Has(peer)
	}
	o.waiters.Add(1)
	defer o.waiters.Add(-1)
	timer := time.NewTimer(max)
	defer timer.Stop()
	for {
		o.mu.Lock()
		if o.ended == nil {
			o.ended = make(chan struct{})
		}
		ended := o.ended
		o.mu.Unlock()
		// Looked at after taking ended: a dial that adds peer from here on closes it.
		if o.Has(peer) {
			return true
		}
		if o.dialing.Load() == 0 {
			return false
		}
		select {
		case <-ended:
		case <-timer.C:
			return o.Has(peer)
		}
	}
}

// dialStart and dialEnd bracket a dial; dialEnd comes after the connection is added.
func (o *OwnConns) dialStart() { o.dialing.Add(1) }

func (o *OwnConns) dialEnd() {
	o.dialing.Add(-1)
	if o.waiters.Load() == 0 {
		return
	}
	o.mu.Lock()
	if o.ended != nil {
		close(o.ended)
		o.ended = nil
	}
	o.mu.Unlock()
}

// Len is the number of live connections in the set.
func (o *OwnConns) Len() int {
	n := 0
	for i := range o.shards {
		s := &o.shards[i]
		s.mu.Lock()
		for _, c := range s.m {
			n += int(c)
		}
		s.mu.Unlock()
	}
	return n
}

// track adds c to the set and returns it wrapped so that its Close removes it. Anything but a
// TCP connection is returned as it is.
func (o *OwnConns) track(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	key, ok := ownKey(tc.LocalAddr())
	if !ok {
		return c
	}
	o.add(key)
	return &ownConn{TCPConn: tc, own: o, key: key}
}

// ownConn is a connection in an OwnConns. It is the *net.TCPConn itself with a Close that
// leaves the set: the relay still reaches the socket (SyscallConn, CloseWrite, ReadFrom and
// WriteTo for splice are the TCPConn's own).
type ownConn struct {
	*net.TCPConn
	own    *OwnConns
	key    netip.AddrPort
	closed atomic.Bool
}

// Close leaves the set, then closes the socket: once closed, its port may be another's.
func (c *ownConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.own.remove(c.key)
	}
	return c.TCPConn.Close()
}

// NetConn is the socket underneath (tls.Conn's convention), for what reads TCP_INFO.
func (c *ownConn) NetConn() net.Conn { return c.TCPConn }

// TCPSocket says an ownConn's bytes are its socket's own (rawio.Socket): the SOCKS and HTTP
// handshakes read and write it with raw calls.
func (c *ownConn) TCPSocket() *net.TCPConn { return c.TCPConn }

// A handshake in flight: socksgate is asking proxy (by its address) to connect to dest. A
// connection that a proxy makes back to socksgate, asking for that same destination while
// socksgate still waits for that proxy's answer, is the request itself come back: a chain
// through a proxy (a SOCKS one carries no Via) that leads to socksgate again.
type handshakeKey struct {
	proxy netip.Addr
	dest  string
}

// Handshake records that socksgate is asking proxy for dest, until HandshakeDone. A proxy
// configured by name is not recorded (what comes back comes from an address), nor is anything
// in a nil set.
func (o *OwnConns) Handshake(proxy netip.Addr, dest string) {
	if o == nil || !proxy.IsValid() {
		return
	}
	o.hmu.Lock()
	if o.handshakes == nil {
		o.handshakes = map[handshakeKey]int{}
		o.proxies = map[netip.Addr]int{}
	}
	o.handshakes[handshakeKey{proxy, dest}]++
	o.proxies[proxy]++
	o.inFlight.Add(1)
	o.hmu.Unlock()
}

// HandshakeDone ends what Handshake recorded.
func (o *OwnConns) HandshakeDone(proxy netip.Addr, dest string) {
	if o == nil || !proxy.IsValid() {
		return
	}
	k := handshakeKey{proxy, dest}
	o.hmu.Lock()
	if o.handshakes[k]--; o.handshakes[k] <= 0 {
		delete(o.handshakes, k)
	}
	if o.proxies[proxy]--; o.proxies[proxy] <= 0 {
		delete(o.proxies, proxy)
	}
	o.inFlight.Add(-1)
	o.hmu.Unlock()
}

// Handshaking reports whether socksgate is in a handshake with a proxy at src: the cheap test
// a new flow takes first (no lock while no handshake is in flight), before ComesBack.
func (o *OwnConns) Handshaking(src netip.Addr) bool {
	if o == nil || o.inFlight.Load() == 0 {
		return false
	}
	o.hmu.RLock()
	defer o.hmu.RUnlock()
	return o.proxies[src.Unmap().WithZone("")] > 0
}

// ComesBack reports whether a flow from src asking for dest is one of socksgate's own requests
// to a proxy come back: src is a proxy socksgate is asking for dest at this moment.
func (o *OwnConns) ComesBack(src netip.Addr, dest string) bool {
	if o == nil || o.inFlight.Load() == 0 {
		return false
	}
	o.hmu.RLock()
	defer o.hmu.RUnlock()
	return o.handshakes[handshakeKey{src.Unmap().WithZone(""), dest}] > 0
}
