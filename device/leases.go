package device

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"io"
	"net/netip"
	"strings"

	"github.com/socksgate/socksgate/configs"
)

// Lease is one name a DHCP server handed out: for a MAC (DHCPv4), an address (DHCPv6, where
// the client is a DUID, not a MAC), or both.
type Lease struct {
	MAC  configs.MAC // zero: the lease names only Addr
	Addr netip.Addr  // invalid: the lease names only MAC
	Name string
}

// maxLeaseLine bounds one line of a lease file; longer lines are skipped.
const maxLeaseLine = 4096

// maxLeases bounds the leases read from one file.
const maxLeases = 65536

// ParseLeases reads a lease file of dnsmasq or odhcpd, recognising each line by its shape:
//
//	dnsmasq, DHCPv4:  EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID
//	dnsmasq, DHCPv6:  EXPIRY IAID ADDRESS HOSTNAME DUID (after its "duid SERVER-DUID" line)
//	odhcpd:           # IFACE DUID|MAC IAID|ipv4 HOSTNAME VALID ... ADDRESS/LEN...
//	odhcpd (hosts):   ADDRESS FQDN [HOSTNAME]
//
// A hostname of "*" or "-", or one that is not a plain name, gives no lease. Lines that fit no
// shape are skipped: the file is another program's, written while socksgate reads it.
func ParseLeases(r io.Reader) ([]Lease, error) {
	br := bufio.NewReaderSize(r, maxLeaseLine)
	var out []Lease
	for len(out) < maxLeases {
		line, more, err := br.ReadLine()
		if more { // longer than any lease: skip it whole
			for more && err == nil {
				_, more, err = br.ReadLine()
			}
			line = nil
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = parseLeaseLine(line, out)
	}
	return out, nil
}

func parseLeaseLine(line []byte, out []Lease) []Lease {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return out
	}
	if line[0] == '#' {
		return parseOdhcpdComment(strings.Fields(string(line[1:])), out)
	}
	f := strings.Fields(string(line))
	switch {
	case len(f) >= 4 && isDigits(f[0]):
		// dnsmasq: expiry, MAC (v4) or IAID (v6), address, hostname[, client id]
		a, err := netip.ParseAddr(f[2])
		name := cleanName(f[3])
		if err != nil || name == "" {
			return out
		}
		l := Lease{Addr: a.Unmap(), Name: name}
		if m, err := configs.ParseMAC(f[1]); err == nil && a.Unmap().Is4() {
			l.MAC = m
		}
		return append(out, l)
	case len(f) >= 2:
		// hosts style: address, fqdn, [aliases...]: the last alias is the plain hostname
		a, err := netip.ParseAddr(f[0])
		if err != nil {
			return out
		}
		name := cleanName(f[len(f)-1])
		if name == "" {
			return out
		}
		return append(out, Lease{Addr: a.Unmap(), Name: name})
	}
	return out
}

// parseOdhcpdComment reads odhcpd's lease lines (its state file writes each lease as a comment
// ahead of its hosts lines): IFACE, DUID (or the MAC for a DHCPv4 lease), IAID (or "ipv4"),
// HOSTNAME, VALID, then the assigned id, the prefix length and ADDRESS/LEN entries.
func parseOdhcpdComment(f []string, out []Lease) []Lease {
	if len(f) < 5 || !isDigits(strings.TrimPrefix(f[4], "-")) {
		return out
	}
	name := cleanName(f[3])
	if name == "" {
		return out
	}
	var mac configs.MAC
	if m, ok := hexMAC(f[1]); ok && f[2] == "ipv4" {
		mac = m
	}
	n := len(out)
	for _, s := range f[5:] {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		out = append(out, Lease{MAC: mac, Addr: p.Addr().Unmap(), Name: name})
	}
	if len(out) == n && !mac.IsZero() {
		out = append(out, Lease{MAC: mac, Name: name})
	}
	return out
}

// hexMAC reads a MAC as odhcpd writes it (12 hex digits) or with separators.
func hexMAC(s string) (configs.MAC, bool) {
	var m configs.MAC
	if len(s) == 12 {
		if _, err := hex.Decode(m[:], []byte(s)); err == nil {
			return m, true
		}
	}
	v, err := configs.ParseMAC(s)
	return v, err == nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// cleanName is a client-supplied hostname as socksgate shows and matches it: a name of
// letters, digits, '-', '_' and '.', at most 63 bytes, lowercase, or "" when it is not one.
func cleanName(s string) string {
	s = strings.TrimRight(s, ".")
	if s == "" || s == "*" || s == "-" || len(s) > 63 || s[0] == '.' || strings.Contains(s, "..") {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return strings.ToLower(s)
}
