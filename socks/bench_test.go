package socks

import (
	"bytes"
	"net/netip"
	"testing"
)

// Micro-benchmarks of the codecs on the per-flow and per-datagram paths. The UDP header codec
// runs once per datagram and must not allocate for IP addresses.

var benchAddrs = []struct {
	name string
	addr Addr
}{
	{"ipv4", AddrFromAddrPort(netip.MustParseAddrPort("203.0.113.10:443"))},
	{"ipv6", AddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::10]:443"))},
	{"name", Addr{Name: "www.example.com", Port: 443}},
}

func BenchmarkAppendRequest(b *testing.B) {
	for _, a := range benchAddrs {
		b.Run(a.name, func(b *testing.B) {
			buf := make([]byte, 0, 512)
			b.ReportAllocs()
			for range b.N {
				if _, err := AppendRequest(buf[:0], Request{Cmd: CmdConnect, Addr: a.addr}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadReply(b *testing.B) {
	for _, a := range benchAddrs {
		b.Run(a.name, func(b *testing.B) {
			wire, err := AppendReply(nil, Reply{Code: ReplySucceeded, Addr: a.addr})
			if err != nil {
				b.Fatal(err)
			}
			r := bytes.NewReader(wire)
			b.ReportAllocs()
			for range b.N {
				r.Reset(wire)
				if _, err := ReadReply(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadRequest(b *testing.B) {
	for _, a := range benchAddrs {
		b.Run(a.name, func(b *testing.B) {
			wire, err := AppendRequest(nil, Request{Cmd: CmdConnect, Addr: a.addr})
			if err != nil {
				b.Fatal(err)
			}
			r := bytes.NewReader(wire)
			b.ReportAllocs()
			for range b.N {
				r.Reset(wire)
				if _, err := ReadRequest(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUDPHeader(b *testing.B) {
	for _, a := range benchAddrs {
		b.Run(a.name, func(b *testing.B) {
			payload := make([]byte, 512)
			buf := make([]byte, 0, MaxUDPHeaderLen+len(payload))
			b.ReportAllocs()
			for range b.N {
				d, err := AppendUDPHeader(buf[:0], UDPHeader{Addr: a.addr})
				if err != nil {
					b.Fatal(err)
				}
				d = append(d, payload...)
				if _, _, err := ParseUDPHeader(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
