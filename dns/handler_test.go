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

// recordingPolicy resolves everything through x, recording the names it was asked.
type recordingPolicy struct {
	x      Exchanger
	action Action
	mu     sync.Mutex
	asked  []string
}

func (p *recordingPolicy) Decide(ctx context.Context, q Query) Decision {
	p.mu.Lock()
	p.asked = append(p.asked, q.Name)
	p.mu.Unlock()
	return Decision{Action: p.action, Exchanger: p.x, Rule: "test"}
}

func (p *recordingPolicy) names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.asked...)
}

// testServer serves h on 127.0.0.1:<free port> (UDP and TCP) and returns its address.
func testServer(t testing.TB, s *Server) string {
	t.Helper()
	if err := s.Serve("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s.Addrs()[0].String()
}

func ask(t testing.TB, network, addr string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query: %v", network, err)
	}
	return r
}

func newTestHandler(t testing.TB, o *origin) (*Handler, *recordingPolicy) {
	up := mustExchanger(t, o.addr.String(), Transport{})
	p := &recordingPolicy{x: up}
	h := NewHandler(Config{Policy: p})
	h.Cache = NewCache(0, 0)
	h.Stats = &Stats{}
	h.Names = NewNames(0, -1)
	return h, p
}

func TestHandlerResolvesThroughPolicy(t *testing.T) {
	o := startOrigin(t, nil)
	h, p := newTestHandler(t, o)
	addr := testServer(t, &Server{Handler: h, Stats: h.Stats})
	for _, network := range []string{"udp", "tcp"} {
		q := query("WWW.Example.COM", mdns.TypeA)
		r := ask(t, network, addr, q)
		if r.Rcode != 0 || len(r.Answer) != 1 || !r.RecursionAvailable || r.Question[0].Name != "WWW.Example.COM." {
			t.Fatalf("%s: %v", network, r)
		}
	}
	if got := p.names(); len(got) != 2 || got[0] != "www.example.com" {
		t.Errorf("policy asked %v, want the canonical name", got)
	}
	if n := o.queries.Load(); n != 1 {
		t.Errorf("origin asked %d times, want 1 (the second from the cache)", n)
	}
	s := h.Stats.Snapshot()
	if s.CacheHits != 1 || s.CacheMisses != 1 || s.Queries[QueryCountKey{"test", "resolve"}] != 2 || len(s.Latency) != 1 {
		t.Errorf("stats: %+v", s)
	}
	if name, ok := h.Names.Lookup(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.1")); !ok || name != "www.example.com" {
		t.Errorf("real-IP map: %q %v", name, ok)
	}
}

func TestHandlerValidates(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	addr := testServer(t, &Server{Handler: h, Stats: h.Stats})

	two := query("a.example", mdns.TypeA)
	two.Question = append(two.Question, mdns.Question{Name: "b.example.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	if r := ask(t, "udp", addr, two); r.Rcode != mdns.RcodeFormatError {
		t.Errorf("two questions: %s", mdns.RcodeToString[r.Rcode])
	}
	none := query("a.example", mdns.TypeA)
	none.Question = nil
	if r := ask(t, "udp", addr, none); r.Rcode != mdns.RcodeFormatError {
		t.Errorf("no question: %s", mdns.RcodeToString[r.Rcode])
	}
	notify := query("a.example", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeNotify
	if r := ask(t, "udp", addr, notify); r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %s", mdns.RcodeToString[r.Rcode])
	}
	chaos := query("version.bind", mdns.TypeTXT)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	if r := ask(t, "udp", addr, chaos); r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("CH TXT version.bind: %s", mdns.RcodeToString[r.Rcode])
	}
	axfr := query("example", mdns.TypeAXFR)
	if r := ask(t, "tcp", addr, axfr); r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("AXFR: %s", mdns.RcodeToString[r.Rcode])
	}
	v1 := query("a.example", mdns.TypeA)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	if r := ask(t, "udp", addr, v1); r.Rcode != mdns.RcodeBadVers {
		t.Errorf("EDNS version 1: %s", mdns.RcodeToString[r.Rcode])
	}
	classAny := query("a.example", mdns.TypeA)
	classAny.Question[0].Qclass = mdns.ClassANY
	if r := ask(t, "udp", addr, classAny); r.Rcode != 0 || len(r.Answer) != 1 {
		t.Errorf("class ANY: %v", r)
	}
	if o.queries.Load() != 1 {
		t.Errorf("origin asked %d times; only the class-ANY query should reach it", o.queries.Load())
	}
	if m := h.Stats.Snapshot().Malformed; m != 6 {
		t.Errorf("malformed = %d, want 6", m)
	}
}

func TestHandlerAnswersANYMinimally(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	addr := testServer(t, &Server{Handler: h})
	r := ask(t, "udp", addr, query("example.com", mdns.TypeANY))
	if r.Rcode != 0 || len(r.Answer) != 1 {
		t.Fatalf("ANY: %v", r)
	}
	if hi, ok := r.Answer[0].(*mdns.HINFO); !ok || hi.Cpu != "RFC8482" {
		t.Errorf("ANY answered %v, want HINFO RFC8482", r.Answer[0])
	}
	if o.queries.Load() != 0 {
		t.Error("ANY reached the origin")
	}
}

func TestHandlerStripsECSAndPassesDOCD(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	addr := testServer(t, &Server{Handler: h})
	q := query("a.example", mdns.TypeA)
	q.CheckingDisabled = true
	q.SetEdns0(4096, true)
	q.IsEdns0().Option = append(q.IsEdns0().Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0)},
		&mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
	r := ask(t, "udp", addr, q)
	if r.Rcode != 0 || r.IsEdns0() == nil || !r.IsEdns0().Do() || !r.CheckingDisabled {
		t.Fatalf("reply: %v", r)
	}
	for _, o := range r.IsEdns0().Option {
		t.Errorf("reply carries EDNS option %v", o)
	}
	got, _ := o.lastQuery()
	opt := got.IsEdns0()
	if opt == nil || !opt.Do() || !got.CheckingDisabled {
		t.Fatalf("origin got %v: want DO and CD passed", got)
	}
	if len(opt.Option) != 0 {
		t.Errorf("origin got EDNS options %v, want none (no client subnet, nothing of the client's)", opt.Option)
	}
	// Without EDNS from the client: none back.
	if r := ask(t, "udp", addr, query("b.example", mdns.TypeA)); r.IsEdns0() != nil {
		t.Error("EDNS in a reply to a query without it")
	}
}

func TestHandlerTruncatesOverUDP(t *testing.T) {
	o := startOrigin(t, bigTXT)
	h, _ := newTestHandler(t, o)
	addr := testServer(t, &Server{Handler: h})
	r := ask(t, "udp", addr, query("big.example", mdns.TypeTXT))
	if !r.Truncated || len(r.Answer) >= 12 {
		t.Errorf("UDP without EDNS: truncated %v, %d answers; want TC", r.Truncated, len(r.Answer))
	}
	q := query("big.example", mdns.TypeTXT)
	q.SetEdns0(1400, false)
	r = ask(t, "udp", addr, q)
	r.Compress = true // as it came on the wire
	if b, _ := r.Pack(); !r.Truncated || len(b) > 1400 {
		t.Errorf("UDP with EDNS 1400: truncated %v, %d bytes", r.Truncated, len(b))
	}
	r = ask(t, "tcp", addr, query("big.example", mdns.TypeTXT))
	if r.Truncated || len(r.Answer) != 12 {
		t.Errorf("TCP: truncated %v, %d answers; want the whole answer", r.Truncated, len(r.Answer))
	}
}

func TestHandlerBlock(t *testing.T) {
	o := startOrigin(t, nil)
	h, p := newTestHandler(t, o)
	p.action = Block
	addr := testServer(t, &Server{Handler: h})
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeMX} {
		if r := ask(t, "udp", addr, query("ads.example", qt)); r.Rcode != mdns.RcodeNameError {
			t.Errorf("blocked %s: %s", mdns.TypeToString[qt], mdns.RcodeToString[r.Rcode])
		}
	}
	h.SetConfig(Config{Policy: p, BlockAnswer: BlockUnspecified})
	r := ask(t, "udp", addr, query("ads.example", mdns.TypeA))
	if len(r.Answer) != 1 || !r.Answer[0].(*mdns.A).A.IsUnspecified() {
		t.Errorf("blocked A: %v", r.Answer)
	}
	r = ask(t, "udp", addr, query("ads.example", mdns.TypeAAAA))
	if len(r.Answer) != 1 || !r.Answer[0].(*mdns.AAAA).AAAA.IsUnspecified() {
		t.Errorf("blocked AAAA: %v", r.Answer)
	}
	if r = ask(t, "udp", addr, query("ads.example", mdns.TypeTXT)); r.Rcode != 0 || len(r.Answer) != 0 {
		t.Errorf("blocked TXT: %v", r)
	}
	if o.queries.Load() != 0 {
		t.Error("a blocked name reached the origin")
	}
}

func TestHandlerLocalNamesNeverGoUpstream(t *testing.T) {
	o := startOrigin(t, nil)
	local := startOrigin(t, nil)
	h, p := newTestHandler(t, o)
	h.SetConfig(Config{Policy: p, Local: mustExchanger(t, local.addr.String(), Transport{}), LocalZones: []string{"corp.example"}})
	addr := testServer(t, &Server{Handler: h})
	for _, n := range []struct {
		name string
		t    uint16
	}{
		{"nas.lan", mdns.TypeA}, {"printer.local", mdns.TypeA}, {"x.home.arpa", mdns.TypeAAAA},
		{"router", mdns.TypeA}, {"wiki.corp.example", mdns.TypeA},
		{"1.0.168.192.in-addr.arpa", mdns.TypePTR}, {"5.4.3.10.in-addr.arpa", mdns.TypePTR},
		{"1.1.20.172.in-addr.arpa", mdns.TypePTR}, {"1.0.0.127.in-addr.arpa", mdns.TypePTR},
		{"1.2.254.169.in-addr.arpa", mdns.TypePTR}, {"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", mdns.TypePTR},
		{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa", mdns.TypePTR},
	} {
		if r := ask(t, "udp", addr, query(n.name, n.t)); r.Rcode != 0 {
			t.Errorf("%s: %s", n.name, mdns.RcodeToString[r.Rcode])
		}
	}
	if got := p.names(); len(got) != 0 {
		t.Errorf("the policy was asked about local names %v", got)
	}
	if o.queries.Load() != 0 || local.queries.Load() != 12 {
		t.Errorf("upstream asked %d, local %d; want 0 and 12", o.queries.Load(), local.queries.Load())
	}
	// Not local: public reverse zones, 172.32/12's neighbour, TLD DS.
	for _, n := range []string{"1.1.32.172.in-addr.arpa", "8.8.8.8.in-addr.arpa", "example.com"} {
		ask(t, "udp", addr, query(n, mdns.TypePTR))
	}
	ask(t, "udp", addr, query("com", mdns.TypeDS))
	if got := p.names(); len(got) != 4 {
		t.Errorf("the policy was asked %v, want the 4 non-local names", got)
	}
	// No local resolver: local names are NXDOMAIN, still not upstream.
	h.SetConfig(Config{Policy: p})
	if r := ask(t, "udp", addr, query("nas2.lan", mdns.TypeA)); r.Rcode != mdns.RcodeNameError {
		t.Errorf("no local resolver: %s", mdns.RcodeToString[r.Rcode])
	}
}

func TestHandlerUpstreamFailureIsServfail(t *testing.T) {
	addr0 := garbageOrigin(t, func(*mdns.Msg) []byte { return []byte("garbage, not DNS") })
	x := mustExchanger(t, "udp://"+addr0.String(), Transport{})
	h := NewHandler(Config{Policy: &recordingPolicy{x: x}})
	h.Stats = &Stats{}
	var events []Event
	var mu sync.Mutex
	h.Observe = func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() }
	addr := testServer(t, &Server{Handler: h})
	if r := ask(t, "udp", addr, query("a.example", mdns.TypeA)); r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("garbage upstream: %s", mdns.RcodeToString[r.Rcode])
	}
	s := h.Stats.Snapshot()
	if s.Garbage != 1 || s.UpstreamErrors[x.String()] != 1 {
		t.Errorf("stats: %+v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Err == nil || events[0].Rcode != mdns.RcodeServerFailure || events[0].Upstream != x.String() {
		t.Errorf("events: %+v", events)
	}
}

func TestHandlerNoPolicyRefuses(t *testing.T) {
	h := NewHandler(Config{})
	addr := testServer(t, &Server{Handler: h})
	if r := ask(t, "udp", addr, query("a.example", mdns.TypeA)); r.Rcode != mdns.RcodeRefused {
		t.Errorf("no policy: %s", mdns.RcodeToString[r.Rcode])
	}
}

func TestHandlerRealIPRecordsTheAskedName(t *testing.T) {
	o := startOrigin(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Answer = []mdns.RR{rr(r.Question[0].Name + " 300 IN CNAME edge.cdn.example."), rr("edge.cdn.example. 20 IN A 192.0.2.9"), rr("edge.cdn.example. 20 IN A 192.0.2.10")}
		w.WriteMsg(m)
	})
	h, _ := newTestHandler(t, o)
	clock := newFakeClock()
	h.Names.now = clock.Now
	h.Names.base = clock.Now()
	addr := testServer(t, &Server{Handler: h})
	ask(t, "udp", addr, query("video.example", mdns.TypeA))
	lo := netip.MustParseAddr("127.0.0.1")
	for _, ip := range []string{"192.0.2.9", "192.0.2.10"} {
		if name, ok := h.Names.Lookup(lo, netip.MustParseAddr(ip)); !ok || name != "video.example" {
			t.Errorf("%s → %q %v, want video.example (asked, not the CNAME's target)", ip, name, ok)
		}
	}
	if _, ok := h.Names.Lookup(netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("192.0.2.9")); ok {
		t.Error("another client sees the mapping")
	}
	clock.Advance(20*time.Second + DefaultNamesGrace)
	if _, ok := h.Names.Lookup(lo, netip.MustParseAddr("192.0.2.9")); ok {
		t.Error("mapping kept past TTL + grace")
	}
}

func TestHandlerFakeIP(t *testing.T) {
	o := startOrigin(t, nil)
	h, p := newTestHandler(t, o)
	pool, err := NewFakeIP(FakeIPConfig{Range6: DefaultFakeRange6})
	if err != nil {
		t.Fatal(err)
	}
	h.SetConfig(Config{Policy: p, FakeIP: pool})
	addr := testServer(t, &Server{Handler: h})
	r := ask(t, "udp", addr, query("www.example.com", mdns.TypeA))
	a := r.Answer[0].(*mdns.A)
	ip, _ := netip.AddrFromSlice(a.A.To4())
	if a.Hdr.Ttl != 1 || !DefaultFakeRange4.Contains(ip) {
		t.Fatalf("fake A: %v", a)
	}
	if name, ok := pool.Lookup(ip); !ok || name != "www.example.com" {
		t.Errorf("pool.Lookup(%s) = %q %v", ip, name, ok)
	}
	r = ask(t, "udp", addr, query("www.example.com", mdns.TypeAAAA))
	ip6, _ := netip.AddrFromSlice(r.Answer[0].(*mdns.AAAA).AAAA)
	if !DefaultFakeRange6.Contains(ip6) {
		t.Errorf("fake AAAA: %v", r.Answer)
	}
	if r = ask(t, "udp", addr, query("www.example.com", mdns.TypeHTTPS)); r.Rcode != 0 || len(r.Answer) != 0 {
		t.Errorf("HTTPS in fake-ip mode: %v", r)
	}
	if o.queries.Load() != 0 {
		t.Errorf("fake answers asked the origin %d times", o.queries.Load())
	}
	// Excluded names get real answers.
	r = ask(t, "udp", addr, query("time.windows.com", mdns.TypeA))
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "192.0.2.1" {
		t.Errorf("excluded name: %v", r.Answer)
	}
	if _, ok := h.Names.Lookup(netip.MustParseAddr("127.0.0.1"), ip); ok {
		t.Error("a fake answer went into the real-IP map")
	}
}

func TestServerDropsSourcesNotAllowed(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	st := &Stats{}
	addr := testServer(t, &Server{Handler: h, Stats: st, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	c := &mdns.Client{Timeout: 200 * time.Millisecond}
	if _, _, err := c.Exchange(query("a.example", mdns.TypeA), addr); err == nil {
		t.Error("UDP answered a source not allowed")
	}
	c.Net = "tcp"
	if _, _, err := c.Exchange(query("a.example", mdns.TypeA), addr); err == nil {
		t.Error("TCP answered a source not allowed")
	}
	// TCP from a source not allowed is closed at once, not left to idle.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	co := &mdns.Conn{Conn: conn}
	co.WriteMsg(query("a.example", mdns.TypeA))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := co.ReadMsg(); err == nil || isTimeout(err) {
		t.Errorf("TCP from a source not allowed: %v, want the connection closed", err)
	}
	if st.Snapshot().RefusedSource != 3 || o.queries.Load() != 0 {
		t.Errorf("refused %d, origin asked %d", st.Snapshot().RefusedSource, o.queries.Load())
	}
}

func TestServerRateLimit(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	st := &Stats{}
	clock := newFakeClock()
	s := &Server{Handler: h, Stats: st, Rate: 1, Burst: 3, now: clock.Now}
	s.init()
	lo := netip.MustParseAddrPort("127.0.0.1:5000")
	dst := netip.MustParseAddrPort("192.0.2.53:53")
	pkt, _ := query("a.example", mdns.TypeA).Pack()
	answered := 0
	for i := 0; i < 5; i++ {
		if s.HandlePacket(lo, dst, pkt) != nil {
			answered++
		}
	}
	if answered != 3 || st.Snapshot().RateLimited != 2 {
		t.Errorf("answered %d of 5 with a burst of 3; %d counted as limited", answered, st.Snapshot().RateLimited)
	}
	// Another source has its own bucket.
	if s.HandlePacket(netip.MustParseAddrPort("127.0.0.2:5000"), dst, pkt) == nil {
		t.Error("another source limited")
	}
	clock.Advance(time.Second)
	if s.HandlePacket(lo, dst, pkt) == nil {
		t.Error("no token after a second")
	}
	if s.HandlePacket(lo, dst, pkt) != nil {
		t.Error("two tokens after a second at rate 1")
	}
}

func TestServerHandlePacket(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	s := &Server{Handler: h}
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	dst := netip.MustParseAddrPort("8.8.8.8:53") // the address the client meant
	pkt, _ := query("a.example", mdns.TypeA).Pack()
	out := s.HandlePacket(client, dst, pkt)
	r := new(mdns.Msg)
	if err := r.Unpack(out); err != nil || len(r.Answer) != 1 {
		t.Fatalf("reply %v %v", r, err)
	}
	// A response, too short, or not allowed: nothing.
	r.Response = true
	resp, _ := r.Pack()
	for name, p := range map[string][]byte{"response": resp, "short": pkt[:5]} {
		if s.HandlePacket(client, dst, p) != nil {
			t.Errorf("%s answered", name)
		}
	}
	if s.HandlePacket(netip.MustParseAddrPort("192.0.2.1:1"), dst, pkt) != nil {
		t.Error("a source not allowed was answered")
	}
	// A query carrying answers: FORMERR; another opcode: NOTIMP.
	withAnswer := query("a.example", mdns.TypeA)
	withAnswer.Answer = []mdns.RR{rr("a.example. 60 IN A 192.0.2.1")}
	wa, _ := withAnswer.Pack()
	if err := r.Unpack(s.HandlePacket(client, dst, wa)); err != nil || r.Rcode != mdns.RcodeFormatError {
		t.Errorf("query with an answer section: %v %v", r, err)
	}
	update := query("a.example", mdns.TypeSOA)
	update.Opcode = mdns.OpcodeUpdate
	up, _ := update.Pack()
	if err := r.Unpack(s.HandlePacket(client, dst, up)); err != nil || r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("UPDATE: %v %v", r, err)
	}
	// Unparsable body, readable header: FORMERR with the client's ID.
	bad := append(append([]byte{}, pkt[:12]...), 0xc0, 0xff)
	out = s.HandlePacket(client, dst, bad)
	if err := r.Unpack(out); err != nil || r.Rcode != mdns.RcodeFormatError || r.Id != binaryID(pkt) {
		t.Errorf("unparsable: %v %v", r, err)
	}
}

func binaryID(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func TestServerServeConn(t *testing.T) {
	o := startOrigin(t, nil)
	h, _ := newTestHandler(t, o)
	s := &Server{Handler: h}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.ServeConn(c) // as the gateway hands over a hijacked connection
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &mdns.Conn{Conn: c}
	for i := 0; i < 3; i++ { // several queries on one connection
		q := query("a.example", mdns.TypeA)
		if err := co.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		r, err := co.ReadMsg()
		if err != nil || r.Id != q.Id || len(r.Answer) != 1 {
			t.Fatalf("query %d: %v %v", i, r, err)
		}
	}
}

func TestServerShutdown(t *testing.T) {
	h := NewHandler(Config{Policy: &recordingPolicy{x: staticExchanger("s", nil)}})
	s := &Server{Handler: h}
	if err := s.Serve("127.0.0.1:0", "[::1]:0"); err != nil {
		t.Fatal(err)
	}
	addrs := s.Addrs()
	if len(addrs) != 4 {
		t.Fatalf("addrs %v", addrs)
	}
	ask(t, "udp", addrs[0].String(), query("a.example", mdns.TypeA))
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The ports are free again.
	for _, a := range addrs {
		var err error
		if a.Network() == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", a.String()); err == nil {
				pc.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp", a.String()); err == nil {
				l.Close()
			}
		}
		if err != nil {
			t.Errorf("%s still held after Shutdown: %v", a, err)
		}
	}
}

func TestServerServeFailsOnBusyPort(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := &Server{Handler: NewHandler(Config{})}
	if err := s.Serve("127.0.0.1:0", pc.LocalAddr().String()); err == nil {
		t.Fatal("Serve on a busy port succeeded")
	}
	if len(s.Addrs()) != 0 {
		t.Error("a failed Serve left addresses")
	}
}

var _ = atomic.Int64{}

// A query from loopback with a full-length client-subnet option (dnsmasq's add-subnet=32,128)
// is the LAN client's; from anywhere else, or with a shorter prefix, the option names nobody.
func TestForwardedClient(t *testing.T) {
	q := func(addr string, bits uint8) *mdns.Msg {
		m := new(mdns.Msg)
		m.SetQuestion("a.test.", mdns.TypeA)
		m.SetEdns0(1232, false)
		a := netip.MustParseAddr(addr)
		fam := uint16(1)
		if a.Is6() {
			fam = 2
		}
		m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: fam, SourceNetmask: bits, Address: a.AsSlice()})
		return m
	}
	lo, lan := netip.MustParseAddrPort("127.0.0.1:4000"), netip.MustParseAddrPort("10.0.1.2:4000")
	for _, tc := range []struct {
		from netip.AddrPort
		req  *mdns.Msg
		want string
	}{
		{lo, q("10.0.1.9", 32), "10.0.1.9:0"},
		{netip.MustParseAddrPort("[::1]:4000"), q("fd00::9", 128), "[fd00::9]:0"},
		{lo, q("10.0.1.0", 24), "127.0.0.1:4000"},
		{lan, q("10.0.1.9", 32), "10.0.1.2:4000"},
	} {
		if got := forwardedClient(tc.from, tc.req); got.String() != tc.want {
			t.Errorf("query from %v with %v: client %v, want %s", tc.from, tc.req.IsEdns0().Option, got, tc.want)
		}
	}
}
