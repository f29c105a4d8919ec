package device

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Reverse DNS is asked for one device at a time, at most every reverseEvery; a name is asked
// again after reverseRefresh, a device without one after reverseRetry.
const (
	reverseEvery   = 2 * time.Second
	reverseRefresh = 6 * time.Hour
	reverseRetry   = 10 * time.Minute
	reverseTimeout = 2 * time.Second
)

// nextReverse picks a device to ask reverse DNS for: one with no DHCP name whose last question
// is older than reverseRetry (reverseRefresh when it has a name), by its most recent address
// (IPv4 first: a privacy address rarely has a PTR). It marks the question as asked.
func (t *Table) nextReverse(now time.Time) (MAC, netip.Addr, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for mac, r := range t.devs {
		if len(r.addrs) == 0 {
			continue
		}
		if _, from := t.nameLocked(r); from == NameDHCP {
			continue
		}
		wait := reverseRetry
		if r.rdns != "" {
			wait = reverseRefresh
		}
		if !r.rdnsAt.IsZero() && now.Sub(r.rdnsAt) < wait {
			continue
		}
		a := r.addrs[len(r.addrs)-1]
		for i := len(r.addrs) - 1; i >= 0; i-- {
			if r.addrs[i].Is4() {
				a = r.addrs[i]
				break
			}
		}
		r.rdnsAt, r.dirty = now, true
		return mac, a, true
	}
	return MAC{}, netip.Addr{}, false
}

// setReverse records the reverse DNS name of mac ("" when there is none).
func (t *Table) setReverse(mac MAC, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.devs[mac]; r != nil && r.rdns != name {
		r.rdns, r.dirty = name, true
	}
}

// reverseLookup asks server (host:port) for the PTR of a; "" with no error when it has none.
func reverseLookup(ctx context.Context, d *net.Dialer, server string, a netip.Addr) (string, error) {
	arpa, err := dns.ReverseAddr(a.String())
	if err != nil {
		return "", err
	}
	m := new(dns.Msg)
	m.SetQuestion(arpa, dns.TypePTR)
	c := &dns.Client{Net: "udp", Timeout: reverseTimeout, Dialer: d}
	r, _, err := c.ExchangeContext(ctx, m, server)
	if err != nil {
		return "", fmt.Errorf("reverse DNS of %s at %s: %w", a, server, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return "", nil
	}
	for _, rr := range r.Answer {
		if p, ok := rr.(*dns.PTR); ok {
			return cleanName(p.Ptr), nil
		}
	}
	return "", nil
}
