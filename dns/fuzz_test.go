package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	mdns "github.com/miekg/dns"
)

// fuzzSeeds are real queries built by miekg/dns, and broken ones.
func fuzzSeeds() map[string][]byte {
	pack := func(m *mdns.Msg) []byte {
		m.Id = 0xbeef // the same seeds every time they are written
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		return b
	}
	seeds := map[string][]byte{}
	seeds["a"] = pack(query("www.example.com", mdns.TypeA))
	seeds["aaaa"] = pack(query("www.example.com", mdns.TypeAAAA))
	seeds["any"] = pack(query("example.com", mdns.TypeANY))
	seeds["local_ptr"] = pack(query("1.1.168.192.in-addr.arpa", mdns.TypePTR))
	ecs := query("ecs.example.com", mdns.TypeA)
	ecs.SetEdns0(4096, true)
	ecs.IsEdns0().Option = append(ecs.IsEdns0().Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0)})
	seeds["edns_ecs_do"] = pack(ecs)
	two := query("a.example", mdns.TypeA)
	two.Question = append(two.Question, mdns.Question{Name: "b.example.", Qtype: mdns.TypeAAAA, Qclass: mdns.ClassINET})
	seeds["two_questions"] = pack(two)
	txt := query("big.example", mdns.TypeTXT)
	txt.SetEdns0(512, false)
	seeds["txt_edns512"] = pack(txt)
	ch := query("version.bind", mdns.TypeTXT)
	ch.Question[0].Qclass = mdns.ClassCHAOS
	seeds["chaos"] = pack(ch)
	full := pack(query("truncated.example.com", mdns.TypeA))
	seeds["truncated"] = full[:len(full)-3]
	seeds["header_only"] = full[:12]
	return seeds
}

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzHandlePacket from fuzzSeeds when
// DNS_WRITE_FUZZ_SEEDS=1; otherwise it checks the committed seeds are there.
func TestWriteFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzHandlePacket")
	for name, b := range fuzzSeeds() {
		p := filepath.Join(dir, name)
		if os.Getenv("DNS_WRITE_FUZZ_SEEDS") == "1" {
			os.MkdirAll(dir, 0o755)
			if err := os.WriteFile(p, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644); err != nil {
				t.Fatal(err)
			}
		} else if _, err := os.Stat(p); err != nil {
			t.Errorf("seed %s missing (DNS_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds writes them): %v", name, err)
		}
	}
}

// FuzzHandlePacket hands arbitrary bytes to the server as a hijacked UDP datagram and over the
// handler's TCP path: never a panic, and either no reply or one that parses, is a response and
// carries the query's ID.
func FuzzHandlePacket(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	pool, _ := NewFakeIP(FakeIPConfig{Range6: DefaultFakeRange6})
	h := NewHandler(Config{Policy: PolicyFunc(func(_ ctxT, q Query) Decision {
		switch {
		case len(q.Name)%3 == 0:
			return Decision{Action: Block}
		default:
			return Decision{Action: Resolve, Exchanger: fuzzUpstream}
		}
	}), Local: fuzzUpstream, FakeIP: pool, BlockAnswer: BlockUnspecified})
	h.Cache = NewCache(100, 1<<16)
	h.Names = NewNames(100, 0)
	h.Stats = &Stats{}
	s := &Server{Handler: h, Rate: -1}
	client := netip.MustParseAddrPort("127.0.0.1:4000")
	dst := netip.MustParseAddrPort("192.0.2.53:53")
	f.Fuzz(func(t *testing.T, b []byte) {
		out := s.HandlePacket(client, dst, b)
		if out == nil {
			return
		}
		r := new(mdns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if !r.Response || len(b) < 2 || r.Id != uint16(b[0])<<8|uint16(b[1]) {
			t.Fatalf("reply is not a response to the query: %v", r)
		}
		if len(out) > 512 {
			q := new(mdns.Msg)
			if q.Unpack(b) == nil && (q.IsEdns0() == nil || int(q.IsEdns0().UDPSize()) < len(out)) {
				t.Fatalf("%d-byte UDP reply over the client's size", len(out))
			}
		}
		// The TCP path (no truncation) on the same query.
		q := new(mdns.Msg)
		if q.Unpack(b) == nil {
			if m := h.Answer(bg, client, q, false); m != nil {
				if _, err := m.Pack(); err != nil {
					t.Fatalf("TCP reply does not pack: %v", err)
				}
			}
		}
	})
}

type ctxT = context.Context

var bg = context.Background()

// fuzzUpstream answers in process: A/AAAA/TXT records, or NXDOMAIN with a SOA, by name length.
var fuzzUpstream = &exchangerFunc{name: "fuzz", f: func(_ context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetReply(q)
	qq := q.Question[0]
	if len(qq.Name)%2 == 0 {
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{&mdns.SOA{Hdr: mdns.RR_Header{Name: ".", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: 60}, Ns: "ns.", Mbox: "h.", Minttl: 30}}
		return m, nil
	}
	hdr := mdns.RR_Header{Name: qq.Name, Rrtype: qq.Qtype, Class: mdns.ClassINET, Ttl: 60}
	switch qq.Qtype {
	case mdns.TypeA:
		m.Answer = []mdns.RR{&mdns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 1)}}
	case mdns.TypeAAAA:
		m.Answer = []mdns.RR{&mdns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::1")}}
	case mdns.TypeTXT:
		for i := 0; i < 10; i++ {
			m.Answer = append(m.Answer, &mdns.TXT{Hdr: hdr, Txt: []string{string(make([]byte, 200))}})
		}
	}
	return m, nil
}}
