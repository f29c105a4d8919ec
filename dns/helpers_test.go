package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// origin is a miekg/dns server on loopback (UDP and TCP, one port) standing in for a resolver.
type origin struct {
	addr    netip.AddrPort
	queries atomic.Int64
	mu      sync.Mutex
	last    *mdns.Msg // the last query it received
	lastNet string
}

// startOrigin serves handle on 127.0.0.1:<free port> until the test ends. handle may be nil: it
// then answers A with 192.0.2.1 (TTL 300), AAAA with 2001:db8::1, others with NODATA.
func startOrigin(t testing.TB, handle func(w mdns.ResponseWriter, r *mdns.Msg)) *origin {
	t.Helper()
	o := &origin{}
	if handle == nil {
		handle = answerStatic
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		o.queries.Add(1)
		o.mu.Lock()
		o.last = r.Copy()
		o.lastNet = w.LocalAddr().Network()
		o.mu.Unlock()
		handle(w, r)
	})
	pc, ln, err := listenPair(net.ListenConfig{}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		up := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(up) }
		go srv.ActivateAndServe()
		<-up
		t.Cleanup(func() { srv.Shutdown() })
	}
	o.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	return o
}

func (o *origin) lastQuery() (*mdns.Msg, string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last, o.lastNet
}

func answerStatic(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	switch q.Qtype {
	case mdns.TypeA:
		m.Answer = append(m.Answer, rr(q.Name+" 300 IN A 192.0.2.1"))
	case mdns.TypeAAAA:
		m.Answer = append(m.Answer, rr(q.Name+" 300 IN AAAA 2001:db8::1"))
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	w.WriteMsg(m)
}

func rr(s string) mdns.RR {
	r, err := mdns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return r
}

// directDial dials with a plain net.Dialer (loopback only in these tests).
func directDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func mustExchanger(t testing.TB, spec string, tr Transport) Exchanger {
	t.Helper()
	e, err := ParseEndpoint(spec)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Dial == nil {
		tr.Dial = directDial
	}
	x, err := e.Exchanger(tr)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	return m
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// exchangerFunc is a function as an Exchanger, for in-process tests.
type exchangerFunc struct {
	name string
	f    func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error)
}

func (x *exchangerFunc) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	return x.f(ctx, q)
}
func (x *exchangerFunc) String() string { return x.name }

// staticExchanger answers like answerStatic, in process, counting.
func staticExchanger(name string, n *atomic.Int64) *exchangerFunc {
	return &exchangerFunc{name: name, f: func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		if n != nil {
			n.Add(1)
		}
		m := new(mdns.Msg)
		m.SetReply(q)
		m.RecursionAvailable = true
		switch q.Question[0].Qtype {
		case mdns.TypeA:
			m.Answer = append(m.Answer, rr(q.Question[0].Name+" 300 IN A 192.0.2.1"))
		case mdns.TypeAAAA:
			m.Answer = append(m.Answer, rr(q.Question[0].Name+" 300 IN AAAA 2001:db8::1"))
		}
		return m, nil
	}}
}
