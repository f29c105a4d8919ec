//go:build linux

package tests

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The lab itself: gw reaches wan, but lan's forwarded traffic is dropped until allowed.
func TestLabForwardingFilterBlocksLANUntilAllowed(t *testing.T) {
	tp := netlab.NewTopology(t)
	ln := tp.WAN.Listen("tcp", "[::]:80")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(ns *netlab.NS, addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		c, err := ns.Dial(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, wan := range []string{netlab.WAN4, netlab.WAN6} {
		addr := net.JoinHostPort(wan, "80")
		if err := dial(tp.GW, addr); err != nil {
			t.Errorf("gw -> %s: %v", addr, err)
		}
		if err := dial(tp.LAN, addr); err == nil {
			t.Errorf("lan -> %s got through the forwarding filter", addr)
		}
		tp.AllowDirect(wan)
		if err := dial(tp.LAN, addr); err != nil {
			t.Errorf("lan -> %s after AllowDirect: %v", addr, err)
		}
	}
}
