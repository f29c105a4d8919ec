package route

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

// tenKCIDRRules is 10,000 rules of one /24 each (spread over 10.0.0.0/8's neighbours, as a
// country list would be), a few rules without a dst matcher in between, and the default.
func tenKCIDRRules() *configs.Config {
	cfg := &configs.Config{}
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{byte(1 + i/250%200), byte(i % 250), byte(i * 7 % 256), 0})
		r := configs.Rule{Name: fmt.Sprintf("cidr%d", i), Action: configs.ActionBlock, Dst: []netip.Prefix{netip.PrefixFrom(a, 24)}}
		if i%1000 == 0 {
			cfg.Rules = append(cfg.Rules, configs.Rule{Name: fmt.Sprintf("port%d", i), Action: configs.ActionBlock,
				DstPorts: ports(uint16(60000+i/1000), uint16(60000+i/1000))})
		}
		cfg.Rules = append(cfg.Rules, r)
	}
	cfg.Rules = append(cfg.Rules, configs.Rule{Name: "default", Action: configs.ActionDirect})
	return cfg
}

// BenchmarkRoute10kCIDR routes flows against 10,000 CIDR rules: "index" is Route, "linear" the
// rule-by-rule reference, on a flow that matches a rule near the end (the linear scan's
// worst realistic case) and on one that matches none (falls to the default).
func BenchmarkRoute10kCIDR(b *testing.B) {
	cfg := tenKCIDRRules()
	r, err := NewRouter(cfg, testUpstreams())
	if err != nil {
		b.Fatal(err)
	}
	dst := dstOf(cfg)
	last := cfg.Rules[len(cfg.Rules)-2].Dst[0].Addr().Next()
	flows := map[string]Flow{
		"late-match": {Network: TCP, Src: ap("10.0.1.2:40000"), Dst: netip.AddrPortFrom(last, 443), Inbound: Redirect},
		"no-match":   tcpFlow("203.0.113.10:443"),
		"ipv6":       tcpFlow("[2001:db8:3::10]:443"),
	}
	ctx := context.Background()
	for _, name := range []string{"late-match", "no-match", "ipv6"} {
		f := flows[name]
		if got, want := r.Route(ctx, f).Rule, r.linearRoute(f, dst).Rule; got != want {
			b.Fatalf("%s: index %q, linear %q", name, got, want)
		}
		b.Run("index/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = r.Route(ctx, f)
			}
		})
		b.Run("linear/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = r.linearRoute(f, dst)
			}
		})
	}
}

// BenchmarkRouteDomainsPorts routes a sniffed flow past 200 rules with domain and port matchers
// (a hand-written list: no index for them), to the default.
func BenchmarkRouteDomainsPorts(b *testing.B) {
	cfg := &configs.Config{}
	for i := range 100 {
		cfg.Rules = append(cfg.Rules,
			configs.Rule{Name: fmt.Sprintf("d%d", i), Action: configs.ActionBlock, Domain: []string{fmt.Sprintf(".site%d.example", i), fmt.Sprintf("www.site%d.test", i)}},
			configs.Rule{Name: fmt.Sprintf("p%d", i), Action: configs.ActionBlock, DstPorts: ports(uint16(1000+i), uint16(1000+i))})
	}
	cfg.Rules = append(cfg.Rules, configs.Rule{Name: "default", Action: configs.ActionDirect})
	r, err := NewRouter(cfg, testUpstreams())
	if err != nil {
		b.Fatal(err)
	}
	f := tcpFlow("203.0.113.10:443")
	f.Host = "cdn.images.example.org"
	ctx := context.Background()
	if got := r.Route(ctx, f).Rule; got != "default" {
		b.Fatalf("routed to %q", got)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Route(ctx, f)
	}
}
