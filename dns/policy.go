package dns

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// Query is what the Policy decides on: who asks, for which name and type.
type Query struct {
	Client netip.AddrPort // the LAN client as the server saw it
	Name   string         // lower case, without the trailing dot; "" for the root
	Type   uint16         // mdns.TypeA, mdns.TypeAAAA, ...
}

// Action is what becomes of a query.
type Action uint8

const (
	// Resolve asks Decision.Exchanger (the rule's way out), through the cache.
	Resolve Action = iota
	// Block answers without asking anyone: NXDOMAIN, or the unspecified address (BlockAnswer).
	Block
	// Local asks the local resolver (Config.Local), as local names always do.
	Local
)

func (a Action) String() string {
	switch a {
	case Resolve:
		return "resolve"
	case Block:
		return "block"
	case Local:
		return "local"
	}
	return "unknown"
}

// Decision is the Policy's verdict on a query.
type Decision struct {
	Action Action
	// Exchanger is the way out for Resolve; it must be a comparable value that lives as long
	// as the rule (build it once per configuration, not per query): the cache is keyed by it.
	Exchanger Exchanger
	// Rule labels the decision in metrics and events (e.g. the rule's index or name); it must
	// come from a bounded set.
	Rule string
}

// Policy decides a query by its name. The gateway adapts its router (the same rules as flows);
// Decide must be safe for concurrent use and must not block on the network for long.
type Policy interface {
	Decide(ctx context.Context, q Query) Decision
}

// PolicyFunc is a function as a Policy.
type PolicyFunc func(ctx context.Context, q Query) Decision

// Decide calls f.
func (f PolicyFunc) Decide(ctx context.Context, q Query) Decision { return f(ctx, q) }

// BlockAnswer is how a blocked name is answered.
type BlockAnswer uint8

const (
	// BlockNXDOMAIN answers every type with NXDOMAIN (the default).
	BlockNXDOMAIN BlockAnswer = iota
	// BlockUnspecified answers A with 0.0.0.0 and AAAA with ::, other types with no data.
	BlockUnspecified
)

// ParseBlockAnswer parses the configuration's dns.block_answer: "nxdomain" (or "") and
// "unspecified" (also "0.0.0.0", "null").
func ParseBlockAnswer(s string) (BlockAnswer, bool) {
	switch strings.ToLower(s) {
	case "", "nxdomain":
		return BlockNXDOMAIN, true
	case "unspecified", "0.0.0.0", "null":
		return BlockUnspecified, true
	}
	return 0, false
}

// CanonicalName is name as Query carries it: lower case, no trailing dot.
func CanonicalName(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// DefaultLocalZones are the zones whose names never leave the LAN: they always go to the local
// resolver. Beside them: single-label names and the reverse zones of private, loopback,
// link-local, shared (CGNAT) and ULA addresses (see IsLocalName).
var DefaultLocalZones = []string{"lan", "local", "home.arpa", "localhost", "internal", "localdomain"}

// localReverse are the reverse zones of addresses that never leave a LAN.
var localReverse = func() []string {
	z := []string{
		"10.in-addr.arpa", "168.192.in-addr.arpa", "127.in-addr.arpa", "254.169.in-addr.arpa",
		"0.in-addr.arpa",
		"c.f.ip6.arpa", "d.f.ip6.arpa", // fc00::/7 (ULA)
		"8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa", // fe80::/10
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", // ::1
		"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", // ::
	}
	for i := 16; i <= 31; i++ {
		z = append(z, strconv.Itoa(i)+".172.in-addr.arpa")
	}
	for i := 64; i <= 127; i++ { // 100.64.0.0/10, shared address space (RFC 6598)
		z = append(z, strconv.Itoa(i)+".100.in-addr.arpa")
	}
	return z
}()

// inZone reports whether name (canonical) is zone or below it.
func inZone(name, zone string) bool {
	return name == zone || (len(name) > len(zone) && strings.HasSuffix(name, zone) && name[len(name)-len(zone)-1] == '.')
}

// IsLocalName reports whether the canonical name belongs to the LAN: in one of zones (the
// defaults plus the configured local domains), a private reverse zone, or a single label. A
// single label asked for a type only a DNSSEC validator or a delegation walk asks (NS, DS,
// DNSKEY, SOA) is a top-level domain, not a host, and is not local.
func IsLocalName(name string, qtype uint16, zones []string) bool {
	if name == "" {
		return false
	}
	if !strings.Contains(name, ".") {
		switch qtype {
		case mdns.TypeNS, mdns.TypeDS, mdns.TypeDNSKEY, mdns.TypeSOA:
			return false
		}
		return true
	}
	for _, z := range zones {
		if inZone(name, z) {
			return true
		}
	}
	if strings.HasSuffix(name, ".arpa") {
		for _, z := range localReverse {
			if inZone(name, z) {
				return true
			}
		}
	}
	return false
}
