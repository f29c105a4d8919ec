//go:build linux

package tests

import (
	"strings"
	"testing"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The lab's DNS peers work on their own: dnsmasq answers and logs who asked, a large TXT is
// truncated over UDP at 1232 bytes and whole over TCP, and dnsdist serves DoT and DoH in front
// of dnsmasq to kdig with the test CA. Asked from gw, whose own traffic reaches wan.
func TestDNSLabPeers(t *testing.T) {
	needBin(t, "kdig", "dnsdist")
	tp := netlab.NewTopology(t)
	origin := dnsStartOrigin(t, tp)
	if out, err := digShort(tp.GW, netlab.WAN4, "cached.test", "A"); err != nil || out != netlab.WAN4 {
		t.Fatalf("dig cached.test: %v %q", err, out)
	}
	if n := dnsAsked(origin, "A", "cached.test", dnsFromGW); n != 1 {
		t.Fatalf("dnsmasq logged %d queries for cached.test from gw:\n%s", n, origin.Output())
	}
	out, _ := dig(tp.GW, "+ignore", "+bufsize=1232", "@"+netlab.WAN4, "big.test", "TXT")
	if !strings.Contains(out, " tc") {
		t.Fatalf("big.test over UDP at 1232 is not truncated:\n%s", out)
	}
	out, err := dig(tp.GW, "+tcp", "+short", "@"+netlab.WAN4, "big.test", "TXT")
	if err != nil || strings.Count(out, "xxxxxxxxxx") < dnsBigTXT {
		t.Fatalf("big.test over TCP: %v\n%s", err, out)
	}
	cert, key := dnsTestCA(t, "dot.test")
	dd := dnsStartDNSDist(t, tp, cert, key)
	out, err = tp.GW.Run("kdig", "+short", "+tls-ca="+cert, "+tls-hostname=dot.test", "@"+netlab.WAN4, "dot.test", "A")
	if err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("kdig +tls: %v\n%s\ndnsdist:\n%s", err, out, dd.Output())
	}
	out, err = tp.GW.Run("kdig", "+short", "+https=/dns-query", "+tls-ca="+cert, "+tls-hostname=dot.test", "@"+netlab.WAN4, "doh.test", "A")
	if err != nil || strings.TrimSpace(out) != netlab.WAN4 {
		t.Fatalf("kdig +https: %v\n%s\ndnsdist:\n%s", err, out, dd.Output())
	}
	// Without the CA, kdig refuses the certificate: the lab's TLS is real.
	if out, err := tp.GW.Run("kdig", "+short", "+tls-ca", "+tls-hostname=dot.test", "@"+netlab.WAN4, "dot.test", "A"); err == nil && strings.TrimSpace(out) == netlab.WAN4 {
		t.Fatalf("kdig +tls trusted the test certificate without its CA:\n%s", out)
	}
}
