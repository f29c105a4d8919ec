// Package dns is socksgate's DNS: a server for the LAN (UDP and TCP, an allow-list of sources,
// a per-source rate limit), a handler that routes every query by its name through a Policy the
// gateway supplies (block, the local resolver, or a way out), resolvers over UDP, TCP, a SOCKS5
// UDP association, DoT and DoH reached through any dialer, a cache per way out, and the two
// ways of giving every flow its name: the real-IP map (Names) and the fake-ip pool (FakeIP).
// github.com/miekg/dns owns the wire format; nothing here parses DNS by hand.
//
// # Wiring
//
// The gateway builds, once per configuration:
//
//   - one Exchanger per way out (ParseEndpoint on each configured server, Endpoint.Exchanger
//     with a Transport holding that upstream's DialContext / ListenPacket, NewSequence over a
//     list), kept across reloads while the upstream is unchanged: the cache is keyed by the
//     Exchanger's identity, so a new Exchanger starts with an empty cache of its own;
//   - a Policy that maps a Query to a Decision (route.Router adapted);
//   - a Handler (NewHandler) with a Cache, Names, Stats and, in fake-ip mode, a FakeIP;
//   - a Server over the Handler, Serve on dns.listen, and for hijacked queries ServeConn (TCP)
//     or HandlePacket (UDP, with the original destination).
//
// On reload, Handler.SetConfig swaps the policy, local resolver and limits; the cache, the
// real-IP map and the fake-ip pool stay. Flows ask Names.Lookup(client, dst) or FakeIP.Lookup(dst)
// for their name.
//
// # Exposure
//
// A query from a source outside Server.Allow is dropped without an answer (no REFUSED): a
// WAN-side scanner learns nothing and the server cannot be used to reflect traffic. A source
// over its rate is dropped the same way and counted. Malformed queries get FORMERR when their
// header can be read and nothing otherwise; ANY is answered minimally (RFC 8482).
package dns
