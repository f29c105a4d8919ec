package gateway

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/socksgate/socksgate/route"
)

// The router's own addresses. A flow dialled direct to one of them (or to loopback) reaches the
// router's own services — the admin endpoint, its web UI, ubus, a database — as the router
// itself, past every rule and limit meant for the LAN. A trusted proxy refuses that by default
// (squid's to_localhost); socksgate too, unless a rule names the destination with a dst
// matcher (route.Decision.ByDst): `{dst: [192.168.1.1/32], dst_ports: [80], action: direct}`
// lets the LAN reach the router's web UI through the proxy ports.

var errLocalDst = &Refusal{"local_destination", "refused: destination is the router itself (loopback or one of its addresses); a rule with that dst allows it"}

// hostAddrs caches this host's (namespace's) addresses; they come and go (DHCP, PPPoE, IPv6),
// so they are read again at most every 30 s, and at once when an address is not in the cache
// and the cache is older than a second (a new address is found without a wait).
var hostAddrs struct {
	mu   sync.Mutex
	list []netip.Addr
	at   time.Time
}

// isLocalAddr reports whether a is loopback, unspecified or an address of this host.
func isLocalAddr(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	hostAddrs.mu.Lock()
	defer hostAddrs.mu.Unlock()
	age := time.Since(hostAddrs.at)
	if hostAddrs.list != nil && age < 30*time.Second && (age < time.Second || slices.Contains(hostAddrs.list, a)) {
		return slices.Contains(hostAddrs.list, a)
	}
	hostAddrs.at = time.Now()
	hostAddrs.list = readHostAddrs(hostAddrs.list[:0])
	if hostAddrs.list == nil {
		hostAddrs.list = []netip.Addr{}
	}
	return slices.Contains(hostAddrs.list, a)
}

// readHostAddrs appends this host's (namespace's) addresses, as the kernel has them now, to
// list.
func readHostAddrs(list []netip.Addr) []netip.Addr {
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					list = append(list, ip.Unmap())
				}
			}
		}
	}
	return list
}

// capturedInbound is the inbound of a flow a transparent listener took by way of in: one from
// the router's own addresses is the router's own traffic (router.capture: the output hook's
// rules deliver it to the same listeners), route.FromRouter, which rules call "router". Nothing
// else arrives there from this host: socksgate's own sockets are never captured, and a
// connection to the listener itself is refused as a loop before it is routed.
func capturedInbound(src netip.AddrPort, in route.Inbound) route.Inbound {
	if isLocalAddr(src.Addr()) {
		return route.FromRouter
	}
	return in
}

// isLocalDst is isLocalAddr for a dial's target, which may be the zero value.
func isLocalDst(a netip.Addr) bool { return a.IsValid() && isLocalAddr(a) }
