package dns

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// BenchmarkHandlerCacheHit is a cached A query through the server's hijacked-UDP entry, in
// process: parse, admit, decide, cache hit, real-IP record, pack.
func BenchmarkHandlerCacheHit(b *testing.B) {
	up := staticExchanger("bench", nil)
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		return Decision{Action: Resolve, Exchanger: up, Rule: "r"}
	})})
	h.Cache = NewCache(0, 0)
	h.Names = NewNames(0, -1)
	h.Stats = &Stats{}
	s := &Server{Handler: h, Rate: -1}
	client := netip.MustParseAddrPort("127.0.0.1:4000")
	dst := netip.MustParseAddrPort("192.0.2.53:53")
	q := query("www.example.com", mdns.TypeA)
	q.SetEdns0(1232, false)
	pkt, _ := q.Pack()
	if s.HandlePacket(client, dst, pkt) == nil {
		b.Fatal("no answer")
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if s.HandlePacket(client, dst, pkt) == nil {
				b.Fatal("no answer")
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	if st := h.Stats.Snapshot(); st.CacheMisses != 1 {
		b.Fatalf("%d misses", st.CacheMisses)
	}
}

// BenchmarkServerUDPCacheHit is the same over a loopback UDP socket, a miekg/dns client asking.
func BenchmarkServerUDPCacheHit(b *testing.B) {
	up := staticExchanger("bench", nil)
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		return Decision{Action: Resolve, Exchanger: up, Rule: "r"}
	})})
	h.Cache = NewCache(0, 0)
	s := &Server{Handler: h, Rate: -1}
	addr := testServer(b, s)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &mdns.Client{Timeout: 5 * time.Second}
		conn, err := c.Dial(addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		for pb.Next() {
			if _, _, err := c.ExchangeWithConn(query("www.example.com", mdns.TypeA), conn); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}

// BenchmarkCacheBytesPerEntry measures the heap a cached A answer takes (checks entryOverhead).
func BenchmarkCacheBytesPerEntry(b *testing.B) {
	for i := 0; i < b.N; i++ {
		per, accounted := cacheBytesPerEntry(20000)
		b.ReportMetric(per, "B/entry")
		b.ReportMetric(accounted, "accounted-B/entry")
	}
}

func cacheBytesPerEntry(count int) (heap, accounted float64) {
	answers := make([]*mdns.Msg, count)
	keys := make([]CacheKey, count)
	x := staticExchanger("bytes", nil)
	for i := range answers {
		name := "host" + strconv.Itoa(i) + ".example.com"
		answers[i] = answerWith(query(name, mdns.TypeA), 0, name+". 300 IN A 192.0.2.1")
		keys[i] = CacheKey{Way: wayKey(x), Name: name, Type: mdns.TypeA, Class: mdns.ClassINET}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := NewCache(count, 1<<30)
	for i := range answers {
		c.Put(keys[i], answers[i])
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(c)
	runtime.KeepAlive(keys)
	runtime.KeepAlive(answers)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(count), float64(c.Bytes()) / float64(count)
}

func TestCacheAccountingCoversTheHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	heap, accounted := cacheBytesPerEntry(20000)
	t.Logf("a cached A answer: %.0f B of heap, %.0f B accounted", heap, accounted)
	if accounted < heap*0.8 {
		t.Errorf("the byte bound undercounts: %.0f accounted for %.0f on the heap", accounted, heap)
	}
}

// BenchmarkExchangeDoT is a DoT query: a connection and a TLS handshake per query, as the
// exchanger does it, against an in-process server on loopback.
func BenchmarkExchangeDoT(b *testing.B) {
	cert, pool := testCert(b, "dot.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		b.Fatal(err)
	}
	srv := &mdns.Server{Listener: ln, Net: "tcp-tls", Handler: mdns.HandlerFunc(answerStatic)}
	up := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(up) }
	go srv.ActivateAndServe()
	<-up
	b.Cleanup(func() { srv.Shutdown() })
	x := mustExchanger(b, "tls://"+ln.Addr().String()+"#dot.test", Transport{TLSConfig: &tls.Config{RootCAs: pool}})
	q := query("a.example", mdns.TypeA)
	for b.Loop() {
		if _, err := x.Exchange(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExchangeDoH is a DoH query over the exchanger's kept HTTP/2 connection.
func BenchmarkExchangeDoH(b *testing.B) {
	cert, pool := testCert(b, "doh.test")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		q := new(mdns.Msg)
		if err := q.Unpack(body); err != nil {
			http.Error(w, "bad message", http.StatusBadRequest)
			return
		}
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, rr(q.Question[0].Name+" 60 IN A 192.0.2.7"))
		out, _ := m.Pack()
		w.Header().Set("Content-Type", "application/dns-message")
		w.Write(out)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	b.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	x := mustExchanger(b, "https://doh.test:"+itoa(port)+"/dns-query#127.0.0.1", Transport{TLSConfig: &tls.Config{RootCAs: pool}})
	b.Cleanup(func() { x.(io.Closer).Close() })
	q := query("a.example", mdns.TypeA)
	for b.Loop() {
		r, err := x.Exchange(context.Background(), q)
		if err != nil {
			b.Fatal(err)
		}
		if r.Answer[0].(*mdns.A).A.String() != "192.0.2.7" {
			b.Fatalf("DoH answer: %v", r)
		}
	}
}
