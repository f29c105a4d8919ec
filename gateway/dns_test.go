package gateway

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/dns"
	"github.com/socksgate/socksgate/internal/state"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/upstream"
)

// A flow to an address socksgate's DNS gave its client carries the name asked for; another
// client's flow to the same address does not; a flow to a fake address becomes a flow to its
// name alone, and one to a fake address the pool does not know is refused.
func TestNameFlowFromSocksgatesDNS(t *testing.T) {
	names := dns.NewNames(100, time.Minute)
	fake, err := dns.NewFakeIP(dns.FakeIPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{}
	g.namer.Store(&flowNamer{names: names, fake: fake})
	client, other := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")
	names.Add(client, netip.MustParseAddr("203.0.113.10"), "echo.test", time.Minute)

	f := route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(client, 40000), Dst: netip.MustParseAddrPort("203.0.113.10:7000")}
	if err := g.nameFlow(&f); err != nil || f.Host != "echo.test" || f.From != route.NameDNS || !f.Dst.IsValid() {
		t.Fatalf("answered address: %+v, %v; want the name from dns and the address kept", f, err)
	}
	f = route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(other, 40000), Dst: netip.MustParseAddrPort("203.0.113.10:7000")}
	if g.nameFlow(&f); f.Host != "" {
		t.Fatalf("another client's flow took the name: %+v", f)
	}
	f = route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(client, 40000), Dst: netip.MustParseAddrPort("203.0.113.10:7000"), Host: "sni.test", From: route.NameSniff}
	if g.nameFlow(&f); f.Host != "sni.test" {
		t.Fatalf("a flow's own name was replaced: %+v", f)
	}

	v4, _ := fake.Addrs("fake.test")
	f = route.Flow{Network: route.UDP, Src: netip.AddrPortFrom(client, 40000), Dst: netip.AddrPortFrom(v4, 443)}
	if err := g.nameFlow(&f); err != nil || f.Host != "fake.test" || f.From != route.NameFakeIP || f.Dst.IsValid() || f.Port != 443 {
		t.Fatalf("fake address: %+v, %v; want a flow to fake.test:443 only", f, err)
	}
	f = route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(client, 40000), Dst: netip.AddrPortFrom(v4.Next().Next(), 80)}
	if err := g.nameFlow(&f); err != errFakeUnknown {
		t.Fatalf("unknown fake address: %v, want errFakeUnknown", err)
	}
}

// The datagrams of a fake destination go to the address its name resolved to, and replies
// from there come back from the fake address; others pass as they are.
func TestFakeCarrierTranslates(t *testing.T) {
	inner := &recordingUDP{from: netip.MustParseAddrPort("192.0.2.5:443")}
	c := &fakeCarrier{UDPConn: inner, fake: netip.MustParseAddrPort("198.18.0.4:443"), real: netip.MustParseAddrPort("192.0.2.5:443")}
	c.WriteToAddrPort([]byte("x"), netip.MustParseAddrPort("198.18.0.4:443"))
	if inner.to != c.real {
		t.Fatalf("written to %v, want %v", inner.to, c.real)
	}
	_, from, _ := c.ReadFromAddrPort(make([]byte, 10))
	if from != c.fake {
		t.Fatalf("reply from %v, want the fake address %v", from, c.fake)
	}
	inner.from = netip.MustParseAddrPort("192.0.2.6:443")
	if _, from, _ = c.ReadFromAddrPort(make([]byte, 10)); from != inner.from {
		t.Fatalf("a reply from another remote became %v", from)
	}
}

type recordingUDP struct{ to, from netip.AddrPort }

func (r *recordingUDP) WriteToAddrPort(b []byte, dst netip.AddrPort) (int, error) {
	r.to = dst
	return len(b), nil
}
func (r *recordingUDP) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	return 1, r.from, nil
}
func (r *recordingUDP) Close() error { return nil }

// Queries are decided by the rules: a block rule blocks, direct goes to the direct resolvers,
// a proxy rule to the resolvers through that rule's upstream, each a way out of its own that a
// reload keeps (the cache is keyed by it).
func TestDNSDecideByRules(t *testing.T) {
	up := &upstream.Direct{}
	ups := map[string]upstream.Upstream{configs.SchemeDirect: &upstream.Direct{}, "proxy": up}
	cfg := &configs.Config{
		DNS: configs.DNS{Servers: []string{"192.0.2.53"}, Direct: []string{"192.0.2.1"}, Timeout: configs.Duration(time.Second)},
		Rules: []configs.Rule{
			{Name: "ads", Domain: []string{".ads.test"}, Action: configs.ActionBlock},
			{Name: "tunnel", Domain: []string{".far.test"}, Action: configs.ActionProxy, Upstream: "proxy"},
			{Name: "default", Action: configs.ActionDirect},
		},
	}
	r, err := route.NewRouter(cfg, ups)
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{Router: r}
	s := &dnsService{g: g}
	if err := s.setWays(cfg, ups); err != nil {
		t.Fatal(err)
	}
	q := func(name string) dns.Decision {
		return s.Decide(context.Background(), dns.Query{Client: netip.MustParseAddrPort("10.0.1.2:5353"), Name: name})
	}
	if d := q("x.ads.test"); d.Action != dns.Block || d.Rule != "ads" {
		t.Errorf("ads: %+v", d)
	}
	direct, proxied := q("example.org"), q("a.far.test")
	if direct.Action != dns.Resolve || direct.Exchanger != s.ways.Load().direct {
		t.Errorf("direct: %+v", direct)
	}
	if proxied.Action != dns.Resolve || proxied.Exchanger == nil || proxied.Exchanger == direct.Exchanger || proxied.Rule != "tunnel" {
		t.Errorf("proxy: %+v", proxied)
	}
	if err := s.setWays(cfg, ups); err != nil {
		t.Fatal(err)
	}
	if again := q("a.far.test"); again.Exchanger != proxied.Exchanger {
		t.Error("a reload with the same servers made a new way out: the cache would be lost")
	}
}

// What naming costs a captured flow: one lookup in the real-IP map, with 100,000 mappings.
func BenchmarkNameFlow(b *testing.B) {
	names := dns.NewNames(200000, time.Minute)
	client := netip.MustParseAddr("10.0.1.2")
	base := netip.MustParseAddr("203.0.0.0").As4()
	for i := range 100000 {
		a := base
		a[2], a[3] = byte(i>>8), byte(i)
		a[1] += byte(i >> 16)
		names.Add(client, netip.AddrFrom4(a), "n"+strconv.Itoa(i)+".example", time.Hour)
	}
	g := &Gateway{}
	g.namer.Store(&flowNamer{names: names})
	dst := netip.MustParseAddrPort("203.0.7.9:443")
	b.ReportAllocs()
	for b.Loop() {
		f := route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(client, 40000), Dst: dst}
		g.nameFlow(&f)
		if f.Host == "" {
			b.Fatal("no name")
		}
	}
}

// The fake-ip pool is written when it changed, not every minute: a router's flash.
func TestFakeIPStateWrittenOnlyWhenChanged(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fake, err := dns.NewFakeIP(dns.FakeIPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	fake.Addrs("a.example")
	s := &dnsService{fake: fake, state: st, log: logrus.New()}
	inode := func() uint64 {
		fi, err := os.Stat(filepath.Join(st.Path(), dns.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	s.saveState()
	first := inode()
	s.saveState()
	if inode() != first {
		t.Fatal("an unchanged pool was written again")
	}
	fake.Addrs("b.example")
	s.saveState()
	if inode() == first {
		t.Fatal("a changed pool was not written")
	}
}
