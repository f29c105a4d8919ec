package gateway

import (
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/route"
)

// A captured flow from one of the router's own addresses is the router's own traffic.
func TestCapturedInboundTellsTheRouterFromTheLAN(t *testing.T) {
	for _, tc := range []struct {
		src  string
		in   route.Inbound
		want route.Inbound
	}{
		{"127.0.0.1:40000", route.Redirect, route.FromRouter},
		{"[::1]:40000", route.TProxy, route.FromRouter},
		{"[::ffff:127.0.0.1]:40000", route.TProxy, route.FromRouter},
		{"203.0.113.10:40000", route.Redirect, route.Redirect},
		{"[2001:db8::10]:40000", route.TProxy, route.TProxy},
	} {
		if got := capturedInbound(netip.MustParseAddrPort(tc.src), tc.in); got != tc.want {
			t.Errorf("capturedInbound(%s, %v) = %v, want %v", tc.src, tc.in, got, tc.want)
		}
	}
}
