package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/socksgate/socksgate/internal/testutil"
)

// fastUpstream answers by name: records in every section, AD, NXDOMAIN and NODATA with a SOA,
// a large TXT, a CNAME chain, and an OPT of its own (never passed on).
var fastUpstream = &exchangerFunc{name: "fast", f: func(_ context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	n := q.Question[0].Name
	soa := rr("example. 900 IN SOA ns.example. host.example. 1 3600 600 86400 300")
	switch strings.TrimSuffix(n, ".") {
	case "a.example":
		m.Answer = []mdns.RR{rr(n + " 300 IN CNAME b.example."), rr("b.example. 200 IN A 192.0.2.1"), rr("b.example. 200 IN A 192.0.2.2")}
		m.Ns = []mdns.RR{rr("example. 3600 IN NS ns.example.")}
		m.Extra = []mdns.RR{rr("ns.example. 3600 IN A 192.0.2.53")}
	case "six.example":
		m.Answer = []mdns.RR{rr(n + " 120 IN AAAA 2001:db8::6")}
		m.AuthenticatedData = true
	case "nx.example":
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{soa}
	case "nodata.example":
		m.Ns = []mdns.RR{soa}
	case "big.example":
		for i := range 12 {
			m.Answer = append(m.Answer, rr(n+` 60 IN TXT "`+strings.Repeat("x", 60)+string(rune('a'+i))+`"`))
		}
	}
	m.SetEdns0(4096, true)
	m.IsEdns0().Option = []mdns.EDNS0{&mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0123456789abcdef"}}
	return m, nil
}}

// A cache hit answered from the packed entry (AnswerPacket) reads as the handler's own answer
// to the same query (Answer, then packed): the client's ID, flags and question in its case,
// the TTLs aged, AD only when asked for, EDNS as the client used it, the upstream's OPT
// dropped; answers too large for the client are truncated the long way.
func TestCacheHitFromWireMatchesHandler(t *testing.T) {
	clock := newFakeClock()
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		return Decision{Action: Resolve, Exchanger: fastUpstream, Rule: "r"}
	})})
	h.Cache = testCache(clock)
	h.Names = NewNames(0, 0)
	h.Stats = &Stats{}
	client := netip.MustParseAddrPort("10.0.0.7:5353")
	type variant struct {
		name     string
		edns     int // 0: none
		do, cd   bool
		ad, noRD bool
		class    uint16
	}
	variants := []variant{
		{name: "plain"},
		{name: "edns", edns: 1232},
		{name: "do", edns: 1232, do: true},
		{name: "cd", edns: 4096, cd: true},
		{name: "ad", ad: true},
		{name: "nord", noRD: true},
		{name: "class_any", class: mdns.ClassANY},
	}
	names := []struct {
		q     string
		qtype uint16
	}{
		{"A.ExAmPle.", mdns.TypeA}, {"six.EXAMPLE.", mdns.TypeAAAA}, {"nx.example.", mdns.TypeA},
		{"NoData.example.", mdns.TypeAAAA}, {"big.example.", mdns.TypeTXT},
	}
	for _, v := range variants {
		for _, n := range names {
			req := new(mdns.Msg)
			req.SetQuestion(n.q, n.qtype)
			req.Id = 0x1234
			req.RecursionDesired = !v.noRD
			req.CheckingDisabled = v.cd
			req.AuthenticatedData = v.ad
			if v.class != 0 {
				req.Question[0].Qclass = v.class
			}
			if v.edns > 0 {
				req.SetEdns0(uint16(v.edns), v.do)
			}
			pkt, err := req.Pack()
			if err != nil {
				t.Fatal(err)
			}
			// Fill the cache (the long way), then age the entry.
			if _, later := h.AnswerPacket(client, req.Copy(), pkt, nil); later != nil {
				later()
			}
			clock.Advance(7 * time.Second)
			hitsBefore := h.Stats.Snapshot().CacheHits
			fast, later := h.AnswerPacket(client, req.Copy(), pkt, make([]byte, 0, 4096))
			if later != nil {
				t.Fatalf("%s %s: a cache hit was left for later", v.name, n.q)
			}
			if h.Stats.Snapshot().CacheHits != hitsBefore+1 {
				t.Errorf("%s %s: not counted as a hit", v.name, n.q)
			}
			want := h.Answer(context.Background(), client, req.Copy(), true)
			got := new(mdns.Msg)
			if err := got.Unpack(fast); err != nil {
				t.Fatalf("%s %s: the reply does not parse: %v", v.name, n.q, err)
			}
			if len(fast) > max(v.edns, 512) {
				t.Errorf("%s %s: %d bytes for a client taking %d", v.name, n.q, len(fast), max(v.edns, 512))
			}
			if g, w := msgText(got), msgText(want); g != w {
				t.Errorf("%s %s: from the wire\n%s\nthe handler's\n%s", v.name, n.q, g, w)
			}
			if got.Question[0].Name != n.q {
				t.Errorf("%s: question echoed as %q, asked %q", v.name, got.Question[0].Name, n.q)
			}
		}
	}
	// The hit recorded the answer's addresses for the client, under the name asked.
	if name, ok := h.Names.Lookup(client.Addr(), netip.MustParseAddr("192.0.2.2")); !ok || name != "a.example" {
		t.Errorf("real-IP map after hits: %q %v", name, ok)
	}
}

// msgText is m as text but for the case of names (a hit's names follow the client's question).
func msgText(m *mdns.Msg) string {
	m.Compress = false
	return strings.ToLower(m.String())
}

// A socket bound to the unspecified address replies from the address each query was sent to
// (a client's connected socket takes no other).
func TestServerWildcardRepliesFromAddressAsked(t *testing.T) {
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		return Decision{Action: Resolve, Exchanger: staticExchanger("w", nil), Rule: "r"}
	})})
	h.Cache = NewCache(0, 0)
	s := &Server{Handler: h}
	if err := s.Serve("0.0.0.0:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	_, port, _ := net.SplitHostPort(s.Addrs()[0].String())
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		c := &mdns.Client{Timeout: 5 * time.Second}
		for i := range 2 { // a miss, then a hit
			r, _, err := c.Exchange(query("a.example", mdns.TypeA), net.JoinHostPort(ip, port))
			if err != nil || len(r.Answer) != 1 {
				t.Fatalf("query %d to %s: %v %v", i, ip, r, err)
			}
		}
	}
}

// Past maxPending queries waiting for upstream, new ones that would wait are dropped and
// counted; cache hits are still answered.
func TestServerBoundsPendingQueries(t *testing.T) {
	release := make(chan struct{})
	slow := &exchangerFunc{name: "slow", f: func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		if strings.HasPrefix(q.Question[0].Name, "slow") {
			<-release
		}
		return staticExchanger("s", nil).f(ctx, q)
	}}
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		return Decision{Action: Resolve, Exchanger: slow, Rule: "r"}
	})})
	h.Cache = NewCache(0, 0)
	st := &Stats{}
	s := &Server{Handler: h, Stats: st, maxPending: 2}
	addr := testServer(t, s)
	defer close(release)
	ask(t, "udp", addr, query("fast.example", mdns.TypeA)) // cached
	// Its answer goes out before its goroutine gives the slot back: wait for that, or a slow
	// query finds one slot taken and one more is dropped (1 run in many under load).
	testutil.WaitUntil(t, "the first query's slot given back", func() bool { return len(s.pending) == 0 })
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 5 {
		b, _ := query("slow"+string(rune('a'+i))+".example", mdns.TypeA).Pack()
		conn.Write(b)
	}
	testutil.WaitUntil(t, "3 queries dropped as overloaded", func() bool { return st.Snapshot().Overloaded == 3 })
	if r := ask(t, "udp", addr, query("fast.example", mdns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("a cache hit while overloaded: %v", r)
	}
}
