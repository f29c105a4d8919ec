package gateway

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/socksgate/socksgate/device"
	"github.com/socksgate/socksgate/route"
)

// liveTCP fills g's flow table with n live flows over loopback TCP connections (the client
// side is the flow's client socket), all from src.
func liveTCP(tb testing.TB, g *Gateway, n int, src netip.Addr) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var peers []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			peers = append(peers, c)
			mu.Unlock()
		}
	}()
	g.flows = map[*liveFlow]struct{}{}
	for i := range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		f := route.Flow{Network: route.TCP, Src: netip.AddrPortFrom(src, uint16(1024+i)), Inbound: route.Redirect}
		g.flows[&liveFlow{Flow: f, client: c, start: time.Now()}] = struct{}{}
	}
	tb.Cleanup(func() {
		mu.Lock()
		for _, c := range peers {
			c.Close()
		}
		mu.Unlock()
	})
}

// The sampler credits a live flow's bytes while it runs, and its end only the rest.
func TestSamplerThenEndCountOnce(t *testing.T) {
	g := &Gateway{}
	src := netip.MustParseAddr("192.168.1.20")
	liveTCP(t, g, 1, src)
	tr := device.Start(device.Options{Max: 10, Walk: g.walkFlows, Sample: time.Hour})
	defer tr.Close()
	g.devices.Store(&deviceBox{t: tr, top: 4})
	tr.Observe(src, device.MAC{2, 0, 0, 0, 0, 1})
	var lf *liveFlow
	for f := range g.flows {
		lf = f
	}
	if _, err := lf.client.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	// TCP_INFO's bytes_acked of the client socket: what the peer acknowledged, soon.
	var got device.Traffic
	for range 200 {
		tr.SamplePass()
		got = tr.Devices()[0].Today
		if got.Down >= 1000 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// tcpi_bytes_acked counts the SYN's sequence number too: one byte more.
	if got.Down != 1000 && got.Down != 1001 {
		t.Fatalf("sampled %+v, want 1000 down (the client socket's acknowledged bytes)", got)
	}
	g.mu.Lock()
	delete(g.flows, lf)
	g.mu.Unlock()
	g.deviceEnd(lf, lf.Flow, 10, 1500)
	if got := tr.Devices()[0].Today; got != (device.Traffic{Up: 10, Down: 1500}) {
		t.Errorf("after the end: %+v, want {10 1500}", got)
	}
	if n := tr.Metered(); n != 0 {
		t.Errorf("%d readings kept after the end", n)
	}
}

// BenchmarkSamplerPass1000 is one sampler pass over 1,000 live TCP flows: the copy of the flow
// table, a TCP_INFO read each, and the credit to their device.
func BenchmarkSamplerPass1000(b *testing.B) {
	g := &Gateway{}
	src := netip.MustParseAddr("192.168.1.20")
	liveTCP(b, g, 1000, src)
	tr := device.Start(device.Options{Max: 10, Walk: g.walkFlows, Sample: time.Hour})
	defer tr.Close()
	tr.Observe(src, device.MAC{2, 0, 0, 0, 0, 1})
	b.ReportAllocs()
	for b.Loop() {
		tr.SamplePass()
	}
}
