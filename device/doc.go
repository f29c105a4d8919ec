// Package device knows the LAN's devices: each is its MAC address, learnt from the neighbour
// table of the LAN interfaces (so every address a device uses, IPv6 privacy addresses
// included, folds into one device), named from the DHCP leases of dnsmasq and odhcpd or by
// reverse DNS through the local resolver, with the bytes it moved today, this month and in all.
//
// Bytes are credited when a flow ends and, for long flows, by one sampler that walks the live
// flows every few seconds and adds what each moved since its last look (a Meter pass), so a
// day's total is right while a download runs; nothing is done per read or per flow besides.
// Totals survive restarts in a bbolt file; a missing or damaged one is moved aside and the
// table starts empty. The table is bounded: beyond its limit the least recently seen device
// is forgotten.
package device
