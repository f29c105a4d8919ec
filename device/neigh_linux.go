package device

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighbourResync is how often the whole neighbour table is read again, besides the updates:
// it repairs what a lost update (a full socket buffer) left wrong, and finds a LAN interface
// that appeared since.
const neighbourResync = time.Minute

// usable reports whether a neighbour entry maps an address to a live device: it has a link
// address and the kernel has not given up on it.
func usable(n *netlink.Neigh) bool {
	return len(n.HardwareAddr) == 6 && n.State&(unix.NUD_FAILED|unix.NUD_INCOMPLETE|unix.NUD_NOARP) == 0
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// lanLinks resolves the LAN interfaces' names to their indices; an interface missing now is
// looked for again at the next resync.
func lanLinks(names []string) map[int]bool {
	out := map[int]bool{}
	for _, n := range names {
		if ifi, err := net.InterfaceByName(n); err == nil {
			out[ifi.Index] = true
		}
	}
	return out
}

// neighbours keeps a table fed from the kernel's neighbour table of the LAN interfaces.
type neighbours struct {
	t     *Table
	names []string
	links map[int]bool // the watcher goroutine's

	missMu   sync.Mutex
	lastMiss time.Time
}

// dump reads the whole neighbour table of the LAN interfaces into t, and returns the
// interfaces' indices.
func (n *neighbours) dump() (map[int]bool, error) {
	links := lanLinks(n.names)
	ns, err := netlink.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		return links, fmt.Errorf("read the neighbour table: %w", err)
	}
	for i := range ns {
		n.apply(links, &ns[i], false)
	}
	return links, nil
}

// missed reads the neighbour table now, unless that was done less than a second ago: a lookup
// missed an address that may have appeared since the last update (its update not yet read).
func (n *neighbours) missed() {
	n.missMu.Lock()
	defer n.missMu.Unlock()
	if time.Since(n.lastMiss) < time.Second {
		return
	}
	n.dump()
	n.lastMiss = time.Now()
}

func (n *neighbours) apply(links map[int]bool, nb *netlink.Neigh, deleted bool) {
	if !links[nb.LinkIndex] {
		return
	}
	a, ok := addrOf(nb.IP)
	if !ok {
		return
	}
	if deleted || !usable(nb) {
		n.t.Forget(a)
		return
	}
	// REACHABLE (or being confirmed): the device is there now; STALE: the kernel remembers it.
	n.t.observe(a, MAC(nb.HardwareAddr), nb.State&(unix.NUD_REACHABLE|unix.NUD_DELAY|unix.NUD_PROBE|unix.NUD_PERMANENT) != 0)
}

// watch follows the kernel's neighbour updates until done closes, with a full read at the start
// and every neighbourResync; errors go to warn.
func (n *neighbours) watch(done <-chan struct{}, warn func(string, error)) {
	var dumpErr error
	redump := func() {
		var err error
		n.links, err = n.dump()
		if err != nil && (dumpErr == nil || err.Error() != dumpErr.Error()) {
			warn("devices: neighbour table", err)
		}
		dumpErr = err
	}
	redump()
	for {
		ch := make(chan netlink.NeighUpdate, 256)
		subDone := make(chan struct{})
		subErr := make(chan error, 1)
		err := netlink.NeighSubscribeWithOptions(ch, subDone, netlink.NeighSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case subErr <- err:
				default:
				}
			},
		})
		if err != nil {
			warn("devices: neighbour updates (reading the table every minute instead)", err)
		}
		tick := time.NewTicker(neighbourResync)
	loop:
		for {
			select {
			case <-done:
				tick.Stop()
				close(subDone)
				return
			case u, ok := <-ch:
				if !ok {
					break loop // the subscription ended: subscribe again
				}
				if !n.links[u.LinkIndex] {
					// An interface created since the last read may be a LAN one.
					n.links = lanLinks(n.names)
				}
				n.apply(n.links, &u.Neigh, u.Type == unix.RTM_DELNEIGH)
			case <-subErr:
				break loop
			case <-tick.C:
				redump()
			}
		}
		tick.Stop()
		close(subDone)
		redump()
		select {
		case <-done:
			return
		case <-time.After(time.Second):
		}
	}
}
