//go:build linux

package tests

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/tests/netlab"
)

// quicName is the server name in the Chromium capture replayed below.
const quicName = "quic.socksgate.test"

// quicConfig: UDP capture, sniffing on 443, a name rule through dante and a catch-all that
// blocks: only the QUIC server name can let the datagrams through.
func quicConfig(mode string) string {
	return udpConfig("socks5://"+netlab.Proxy4+":1080",
		", quic: "+mode+", sniff: {enabled: true, ports: [443], timeout: 2s}", `rules:
  - {name: quic-by-name, domain: [`+quicName+`], upstream: main}
  - {name: catchall, action: block}
`)
}

// A real client's Initials to a wan address on UDP 443 are routed by the domain rule their
// server name matches (by address, the catch-all would block them) and carried through
// dante; the session line shows the rule and the name. With transparent.quic: block the same
// datagrams are dropped.
func TestQUICRoutedByInitialServerName(t *testing.T) {
	dgs := testutil.ChromiumQUICInitials(t)
	for _, tc := range []struct{ mode, wan string }{{"sniff", netlab.WAN4}, {"sniff", netlab.WAN6}, {"block", netlab.WAN4}} {
		t.Run(tc.mode+" "+tc.wan, func(t *testing.T) {
			tp := netlab.NewTopology(t)
			hits := udpEcho(t, tp, 443)
			startDante(t, tp, danteOptions{})
			gw := startSocksgate(t, tp.GW, quicConfig(tc.mode))
			client := tp.LAN.ListenPacket("udp", ":0")
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.wan), 443)
			for _, d := range dgs {
				if _, err := client.WriteTo(d, net.UDPAddrFromAddrPort(dst)); err != nil {
					t.Fatal(err)
				}
			}
			// The session ends after udp_idle (1s) with its one line.
			want := udpEnded
			var line logLine
			if !waitFor(10*time.Second, func() bool {
				for _, l := range findLogs(gw.Output(), want) {
					if l.str("ip") == dst.String() || l.str("dst") == dst.String() {
						line = l
						return true
					}
				}
				return false
			}) {
				t.Fatalf("no udp session line for %s:\n%s", dst, gw.Output())
			}
			switch tc.mode {
			case "sniff":
				if !line.has(logFields{"rule": "quic-by-name", "dst": net.JoinHostPort(quicName, "443"), "ip": dst.String(), "name_from": "sniff", "outcome": "ok", "packets_up": "2"}) {
					t.Fatalf("session line: %v", line)
				}
				if !waitFor(5*time.Second, func() bool { return hits.Load() == 2 }) {
					t.Fatalf("the wan server got %d datagrams, want 2", hits.Load())
				}
			case "block":
				if !line.has(logFields{"rule": "transparent.quic", "action": "block", "outcome": "blocked", "dropped": "2"}) || hits.Load() != 0 {
					t.Fatalf("with quic: block, session line %v, %d datagrams at the server", line, hits.Load())
				}
			}
			t.Logf("%v", line)
		})
	}
}
