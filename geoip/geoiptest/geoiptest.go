// Package geoiptest writes small MaxMind-format databases for tests, with mmdbwriter (a
// dependency of tests only: nothing socksgate runs imports this package).
package geoiptest

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Network is one network of a test database and its country code, as GeoLite2-Country writes
// it (country.iso_code); Registered puts it in registered_country instead, as MaxMind does
// for networks without a country of their own.
type Network struct {
	Prefix     string
	Country    string
	Registered bool
}

// Bytes is a database (IPv6, with IPv4 aliased into it as MaxMind builds them) mapping each
// network to its country. Reserved ranges (10/8, 2001:db8::/32...) are allowed, for labs.
func Bytes(nets ...Network) ([]byte, error) {
	return build("GeoLite2-Country", 6, nets, country)
}

// SingBytes is a database in sing-box's format: each record is the code, lower case.
func SingBytes(nets ...Network) ([]byte, error) {
	return build("sing-geoip", 6, nets, func(n Network) mmdbtype.DataType { return mmdbtype.String(n.Country) })
}

// IPv4Bytes is Bytes as an IPv4-only database, the smallest kind (fuzz seeds).
func IPv4Bytes(nets ...Network) ([]byte, error) {
	return build("GeoLite2-Country", 4, nets, country)
}

func country(n Network) mmdbtype.DataType {
	key := mmdbtype.String("country")
	if n.Registered {
		key = "registered_country"
	}
	return mmdbtype.Map{key: mmdbtype.Map{"iso_code": mmdbtype.String(n.Country)}}
}

func build(kind string, ipVersion int, nets []Network, record func(Network) mmdbtype.DataType) ([]byte, error) {
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: kind, IncludeReservedNetworks: true, RecordSize: 24, IPVersion: ipVersion})
	if err != nil {
		return nil, err
	}
	for _, n := range nets {
		p, err := netip.ParsePrefix(n.Prefix)
		if err != nil {
			return nil, err
		}
		ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := tree.Insert(ipn, record(n)); err != nil {
			return nil, err
		}
	}
	var b bytes.Buffer
	if _, err := tree.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// WriteFile writes the database to path by a rename into place, as a download script does.
func WriteFile(path string, nets ...Network) error {
	b, err := Bytes(nets...)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
