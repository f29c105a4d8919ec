package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Server serves DNS over UDP and TCP on the addresses given to Serve, and answers queries the
// gateway hijacked (ServeConn for TCP, HandlePacket for UDP). Queries from sources outside
// Allow, and from sources over their rate, are dropped without an answer and counted in Stats.
// Set the fields before Serve; they are not changed afterwards.
type Server struct {
	// Handler answers the queries, usually a *Handler.
	Handler mdns.Handler
	// Allow are the source prefixes answered (the LAN's, loopback). Nil: loopback only.
	Allow []netip.Prefix
	// Rate limits each source address to Rate queries per second with bursts of Burst
	// (DefaultRate, DefaultBurst when zero; a negative Rate: no limit).
	Rate  float64
	Burst int
	// Control runs on every listening socket before bind (redirect.MarkControl); an error
	// fails Serve.
	Control func(network, address string, c syscall.RawConn) error
	// Stats counts drops; may be the Handler's.
	Stats *Stats
	// OnError, when set, is told of a listener that stopped with an error after Serve.
	OnError func(addr string, err error)

	now        func() time.Time
	maxPending int // maxPending when zero

	once    sync.Once
	limiter *rateLimiter
	allow   []netip.Prefix

	mu       sync.Mutex
	servers  []*mdns.Server // TCP
	udp      []*net.UDPConn
	addrs    []net.Addr
	hijacked *mdns.Server
	conns    *connListener
	closed   bool

	readers sync.WaitGroup // the UDP readers
	later   sync.WaitGroup // the UDP queries answered off the readers
	pending chan struct{}  // a slot per UDP query answered off the readers
}

// Loopback are the loopback prefixes, always worth allowing.
var Loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// serverUDPSize is the read buffer of a UDP query: queries are small; a larger one is cut and
// answered FORMERR.
const serverUDPSize = 4096

// maxPending bounds the UDP queries waiting for upstream at once; past it, new ones that would
// wait are dropped (counted as overloaded), while cache hits are still answered.
const maxPending = 4096

// udpReaders is the number of goroutines reading each UDP socket: one processes a query while
// another waits in the kernel for the next.
var udpReaders = runtime.GOMAXPROCS(0)

func (s *Server) init() {
	s.once.Do(func() {
		if s.now == nil {
			s.now = time.Now
		}
		rate, burst := s.Rate, s.Burst
		if rate == 0 {
			rate = DefaultRate
			if burst == 0 {
				burst = DefaultBurst
			}
		}
		s.limiter = newRateLimiter(rate, burst, s.now)
		s.allow = s.Allow
		if s.allow == nil {
			s.allow = Loopback
		}
		if s.maxPending <= 0 {
			s.maxPending = maxPending
		}
		s.pending = make(chan struct{}, s.maxPending)
	})
}

// allowed reports whether src may be answered at all, counting the refusals.
func (s *Server) allowed(src netip.Addr) bool {
	src = src.Unmap().WithZone("")
	for _, p := range s.allow {
		if p.Contains(src) {
			return true
		}
	}
	s.Stats.add(cntRefusedSource)
	return false
}

// admit reports whether a query from src is answered now: allowed and within its rate,
// counting the drops.
func (s *Server) admit(src netip.Addr) bool {
	if !s.allowed(src) {
		return false
	}
	if !s.limiter.allow(src.Unmap().WithZone("")) {
		s.Stats.add(cntRateLimited)
		return false
	}
	return true
}

// acceptQuery is the server's first look at a query's header: responses are ignored, other
// opcodes NOTIMP, more or fewer than one question FORMERR, and so are queries carrying answer
// or authority records or more than two additional ones (OPT and TSIG).
func acceptQuery(dh mdns.Header) mdns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return mdns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != mdns.OpcodeQuery {
		return mdns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 || dh.Ancount > 0 || dh.Nscount > 0 || dh.Arcount > 2 {
		return mdns.MsgReject
	}
	return mdns.MsgAccept
}

// listenPair listens on addr with UDP and TCP, on one port. Port 0 picks it: the port UDP got,
// which TCP may find taken (TCP's ephemeral ports share the range), so it picks again a few
// times. On an error after UDP is listening, the UDP socket is returned too, for the caller
// to close.
func listenPair(lc net.ListenConfig, addr string) (*net.UDPConn, net.Listener, error) {
	host, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
		}
		conn := pc.(*net.UDPConn)
		taddr := addr
		if port == "0" {
			_, p, _ := net.SplitHostPort(conn.LocalAddr().String())
			taddr = net.JoinHostPort(host, p)
		}
		ln, err := lc.Listen(context.Background(), "tcp", taddr)
		if err == nil {
			return conn, ln, nil
		}
		if port == "0" && errors.Is(err, syscall.EADDRINUSE) && try < 16 {
			conn.Close()
			continue
		}
		return conn, nil, fmt.Errorf("dns listen tcp %s: %w", taddr, err)
	}
}

// Serve listens on every address ("IP:port"; port 0 picks one port for UDP and TCP), UDP and
// TCP, and serves in the background until Shutdown. It returns once all are listening, or the
// first error with none of them left open. It may be called again to add addresses.
func (s *Server) Serve(addrs ...string) error {
	s.init()
	if s.Handler == nil {
		return errors.New("dns server: no handler")
	}
	lc := net.ListenConfig{Control: s.Control}
	var started []*mdns.Server
	var conns []*net.UDPConn
	var bound []net.Addr
	fail := func(err error) error {
		for _, srv := range started {
			srv.Shutdown()
		}
		for _, c := range conns {
			c.Close()
		}
		return err
	}
	for _, addr := range addrs {
		conn, ln, err := listenPair(lc, addr)
		if conn != nil {
			conns = append(conns, conn)
		}
		if err != nil {
			return fail(err)
		}
		if err := setPacketInfo(conn); err != nil {
			ln.Close()
			return fail(fmt.Errorf("dns listen udp %s: %w", addr, err))
		}
		srv := s.newServer(&mdns.Server{Listener: ln, Net: "tcp"})
		if err := s.start(srv, addr); err != nil {
			ln.Close()
			return fail(err)
		}
		started = append(started, srv)
		bound = append(bound, conn.LocalAddr(), ln.Addr())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fail(errors.New("dns server: shut down"))
	}
	s.servers = append(s.servers, started...)
	s.udp = append(s.udp, conns...)
	s.addrs = append(s.addrs, bound...)
	for i, c := range conns {
		var once sync.Once
		for range udpReaders {
			s.readers.Go(func() { s.readUDP(c, addrs[i], &once) })
		}
	}
	return nil
}

// start runs srv in the background and returns once it serves.
func (s *Server) start(srv *mdns.Server, addr string) error {
	up := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(up) }
	errc := make(chan error, 1)
	go func() {
		err := srv.ActivateAndServe()
		select {
		case <-up:
			if err != nil && s.OnError != nil {
				s.OnError(addr, err)
			}
		default:
			errc <- err
		}
	}()
	select {
	case <-up:
		return nil
	case err := <-errc:
		return fmt.Errorf("dns serve %s: %w", addr, err)
	}
}

func (s *Server) newServer(srv *mdns.Server) *mdns.Server {
	srv.Handler = s.Handler
	srv.UDPSize = serverUDPSize
	srv.MsgAcceptFunc = func(dh mdns.Header) mdns.MsgAcceptAction {
		a := acceptQuery(dh)
		if a == mdns.MsgReject || a == mdns.MsgRejectNotImplemented {
			s.Stats.add(cntMalformed)
		}
		return a
	}
	srv.MsgInvalidFunc = func([]byte, error) { s.Stats.add(cntMalformed) }
	srv.DecorateReader = func(r mdns.Reader) mdns.Reader { return admitReader{r, s} }
	return srv
}

// Addrs are the bound addresses, UDP and TCP for each address given to Serve.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// admitReader drops TCP queries from sources not admitted before they are parsed.
type admitReader struct {
	mdns.Reader
	s *Server
}

// ReadTCP closes a connection from a source not allowed before reading from it, and drops
// the queries over the source's rate.
func (r admitReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	src := addrPortOf(conn.RemoteAddr()).Addr()
	if !r.s.allowed(src) {
		return nil, errSourceNotAllowed
	}
	for {
		m, err := r.Reader.ReadTCP(conn, timeout)
		if err != nil {
			return m, err
		}
		if r.s.limiter.allow(src.Unmap().WithZone("")) {
			return m, nil
		}
		r.s.Stats.add(cntRateLimited)
	}
}

var errSourceNotAllowed = errors.New("dns: source not allowed")

// ServeConn serves DNS over c, a TCP connection the gateway hijacked (a LAN client's connection
// to port 53 anywhere), until the client closes it or goes idle; it returns at once. c's
// RemoteAddr is the client.
func (s *Server) ServeConn(c net.Conn) {
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	if s.hijacked == nil {
		s.conns = newConnListener()
		srv := s.newServer(&mdns.Server{Listener: s.conns, Net: "tcp"})
		if err := s.start(srv, "hijacked tcp"); err != nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.hijacked = srv
	}
	l := s.conns
	s.mu.Unlock()
	l.push(c)
}

// HandlePacket answers one UDP query the gateway hijacked: pkt from client, sent to dst (the
// address the client meant; the reply must come from it). It returns the reply to send, or
// nil for none (a source not admitted, a response, an unreadable header).
func (s *Server) HandlePacket(client, dst netip.AddrPort, pkt []byte) []byte {
	s.init()
	out, later := s.packet(client, dst, pkt, nil)
	if later != nil {
		return later()
	}
	return out
}

// packet is the first look at a UDP query pkt from client to dst: admitted, read, and answered
// at once when the handler can (a cache hit: see Handler.AnswerPacket), the reply appended to
// out; or later is the rest of the work, which may wait for upstream and must run off the
// reading goroutine. Neither: no reply.
func (s *Server) packet(client, dst netip.AddrPort, pkt, out []byte) ([]byte, func() []byte) {
	if !s.admit(client.Addr()) {
		return nil, nil
	}
	if len(pkt) < 12 {
		s.Stats.add(cntMalformed)
		return nil, nil
	}
	req := new(mdns.Msg)
	err := req.Unpack(pkt)
	switch {
	case req.Response:
		return nil, nil
	case err != nil, len(req.Question) != 1, len(req.Answer) > 0, len(req.Ns) > 0, len(req.Extra) > 2:
		if err == nil && req.Opcode != mdns.OpcodeQuery {
			break // NOTIMP: the handler's to say
		}
		// The header was read: FORMERR to it, as the server does.
		s.Stats.add(cntMalformed)
		m := new(mdns.Msg)
		m.SetRcodeFormatError(req)
		m.Question, m.Answer, m.Ns, m.Extra = nil, nil, nil, nil
		m.Zero = false
		return pack(m, out), nil
	}
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	if h, ok := s.Handler.(*Handler); ok {
		return h.AnswerPacket(client, req, pkt, out)
	}
	return nil, func() []byte {
		w := &packetWriter{local: net.UDPAddrFromAddrPort(dst), remote: net.UDPAddrFromAddrPort(client)}
		s.Handler.ServeDNS(w, req)
		return w.out
	}
}

// readUDP serves conn (bound to addr) until it is closed: it reads each query, answers it at
// once when it can, and hands the rest to a goroutine of its own (at most maxPending at once).
func (s *Server) readUDP(conn *net.UDPConn, addr string, failed *sync.Once) {
	local := addrPortOf(conn.LocalAddr())
	wildcard := local.Addr().IsUnspecified()
	buf := make([]byte, serverUDPSize)
	out := make([]byte, 0, serverUDPSize)
	var oob []byte
	if wildcard {
		oob = make([]byte, oobSize)
	}
	for {
		n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !errors.Is(err, net.ErrClosed) && s.OnError != nil {
				failed.Do(func() { s.OnError(addr, err) })
			}
			return
		}
		dst := local
		if wildcard {
			dst = packetDst(oob[:oobn], local)
		}
		reply, later := s.packet(from, dst, buf[:n], out[:0])
		if reply != nil {
			writeUDP(conn, reply, from, dst, wildcard)
		}
		if later == nil {
			continue
		}
		select {
		case s.pending <- struct{}{}:
		default:
			s.Stats.add(cntOverloaded)
			continue
		}
		buf = make([]byte, serverUDPSize) // the query read may still point into it
		s.later.Go(func() {
			defer func() { <-s.pending }()
			if reply := later(); reply != nil {
				writeUDP(conn, reply, from, dst, wildcard)
			}
		})
	}
}

// oobSize holds an IPv4 or IPv6 packet-info control message.
var oobSize = max(len(ipv4.NewControlMessage(ipv4.FlagDst|ipv4.FlagInterface)), len(ipv6.NewControlMessage(ipv6.FlagDst|ipv6.FlagInterface)))

// setPacketInfo asks the kernel, on a socket bound to the unspecified address, for the address
// each datagram was sent to (IP_PKTINFO, IPV6_RECVPKTINFO), so that the reply comes from it.
func setPacketInfo(conn *net.UDPConn) error {
	if !addrPortOf(conn.LocalAddr()).Addr().IsUnspecified() {
		return nil
	}
	err4 := ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	err6 := ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	if err4 != nil && err6 != nil {
		return fmt.Errorf("packet info: %w", errors.Join(err4, err6))
	}
	return nil
}

// packetDst is the address a datagram was sent to, from its control messages; local when they
// do not say.
func packetDst(oob []byte, local netip.AddrPort) netip.AddrPort {
	var cm6 ipv6.ControlMessage
	if cm6.Parse(oob) == nil && cm6.Dst != nil {
		if a, ok := netip.AddrFromSlice(cm6.Dst); ok {
			return netip.AddrPortFrom(a.Unmap(), local.Port())
		}
	}
	var cm4 ipv4.ControlMessage
	if cm4.Parse(oob) == nil && cm4.Dst != nil {
		if a, ok := netip.AddrFromSlice(cm4.Dst); ok {
			return netip.AddrPortFrom(a.Unmap(), local.Port())
		}
	}
	return local
}

// writeUDP sends reply to the client, from the address it asked (on a wildcard socket).
func writeUDP(conn *net.UDPConn, reply []byte, to, from netip.AddrPort, wildcard bool) {
	var oob []byte
	if wildcard && !from.Addr().IsUnspecified() {
		if a := from.Addr(); a.Is4() {
			oob = (&ipv4.ControlMessage{Src: a.AsSlice()}).Marshal()
		} else {
			oob = (&ipv6.ControlMessage{Src: a.AsSlice()}).Marshal()
		}
	}
	conn.WriteMsgUDPAddrPort(reply, oob, to)
}

// packetWriter captures the reply of a hijacked UDP query.
type packetWriter struct {
	local, remote net.Addr
	out           []byte
}

func (w *packetWriter) LocalAddr() net.Addr  { return w.local }
func (w *packetWriter) RemoteAddr() net.Addr { return w.remote }
func (w *packetWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err == nil {
		w.out = b
	}
	return err
}
func (w *packetWriter) Write(b []byte) (int, error) {
	w.out = append([]byte(nil), b...)
	return len(b), nil
}
func (w *packetWriter) Close() error        { return nil }
func (w *packetWriter) TsigStatus() error   { return nil }
func (w *packetWriter) TsigTimersOnly(bool) {}
func (w *packetWriter) Hijack()             {}

// Shutdown stops every listener and waits, until ctx ends, for the queries in progress.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers, udp := s.servers, s.udp
	if s.hijacked != nil {
		servers = append(servers, s.hijacked)
	}
	s.servers, s.hijacked, s.udp = nil, nil, nil
	s.mu.Unlock()
	var errs []error
	for _, c := range udp {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, srv := range servers {
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	done := make(chan struct{})
	go func() {
		s.readers.Wait()
		s.later.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("dns udp queries in progress: %w", ctx.Err()))
	}
	return errors.Join(errs...)
}

// connListener is a net.Listener fed with hijacked connections.
type connListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }
