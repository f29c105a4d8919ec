package configs

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Devices configures what socksgate knows of the LAN's devices: each is its MAC address (from the
// neighbour table of lan.interfaces), named from the DHCP leases or reverse DNS, with its bytes
// today, this month and in all (kept in state_dir/devices.json). It is on whenever capture is
// (lan.interfaces), unless Enabled is false.
type Devices struct {
	// Enabled: nil (default) means on with capture; false turns it off; true turns it on
	// without capture too (the explicit ports' clients on the LAN are devices as well).
	Enabled *bool `yaml:"enabled"`
	// Leases are the DHCP lease files names come from: dnsmasq's (one lease a line:
	// expiry, MAC, address, hostname, client id) and odhcpd's hosts-style state file; each
	// file's format is recognised by its lines. Default DefaultLeaseFiles; a file that does
	// not exist is skipped; [] reads none.
	Leases []string `yaml:"leases"`
	// Max bounds the devices kept: beyond it the least recently seen is forgotten (totals
	// included). Default 1024.
	Max int `yaml:"max"`
	// Sample is how often the live flows' bytes are read from the kernel (TCP_INFO, the UDP
	// sessions' counters) and added to their devices, so that a long download counts while it
	// runs. Default 15s; at least 1s.
	Sample Duration `yaml:"sample"`
	// ReverseDNS names a device without a lease by a PTR lookup of its address through the
	// local resolver (socksgate's own DNS when dns.listen is set, else Resolver). Default true.
	ReverseDNS bool `yaml:"reverse_dns"`
	// Resolver is the host:port asked for PTR records when socksgate's DNS does not listen.
	// Default 127.0.0.1:53 (the router's dnsmasq).
	Resolver string `yaml:"resolver"`
	// MetricsTop bounds socksgate_device_bytes_total: this many devices get a series of their
	// own (the first to carry the most bytes), the rest are summed as device="other". Default 32.
	MetricsTop int `yaml:"metrics_top"`
}

// DefaultLeaseFiles are where OpenWrt's dnsmasq and odhcpd and Debian's dnsmasq keep leases.
var DefaultLeaseFiles = []string{"/tmp/dhcp.leases", "/var/lib/misc/dnsmasq.leases", "/tmp/hosts/odhcpd"}

func defaultDevices() Devices {
	return Devices{
		Leases: slices.Clone(DefaultLeaseFiles), Max: 1024, Sample: Duration(15 * time.Second),
		ReverseDNS: true, Resolver: "127.0.0.1:53", MetricsTop: 32,
	}
}

// On reports whether device tracking runs for a config with capture (lan.interfaces) or not.
func (d *Devices) On(capture bool) bool {
	if d.Enabled == nil {
		return capture
	}
	return *d.Enabled
}

func (c *Config) validateDevices(p *problems) {
	d := &c.Devices
	if d.Max < 1 {
		p.add("devices.max", "must be at least 1")
	}
	if time.Duration(d.Sample) < time.Second {
		p.add("devices.sample", "must be at least 1s (got %s)", time.Duration(d.Sample))
	}
	if d.MetricsTop < 0 {
		p.add("devices.metrics_top", "must not be negative")
	}
	for i, f := range d.Leases {
		if strings.TrimSpace(f) == "" {
			p.add(fmt.Sprintf("devices.leases[%d]", i), "empty file name")
		}
	}
	if d.Resolver != "" {
		if _, port, err := splitHostPort(d.Resolver, false); err != nil {
			p.add("devices.resolver", "%v", err)
		} else if port == 0 {
			p.add("devices.resolver", "port must be 1-65535")
		}
	}
}

// MAC is a 48-bit Ethernet address, as rules (src_mac) and devices name it.
type MAC [6]byte

// ParseMAC reads aa:bb:cc:dd:ee:ff (or with dashes, any case).
func ParseMAC(s string) (MAC, error) {
	var m MAC
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("invalid MAC address %q: want six hex bytes such as aa:bb:cc:dd:ee:ff", cut(s, maxQuoted))
	}
	copy(m[:], hw)
	return m, nil
}

// String is the address as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// errBadDeviceName is a device matcher that can never match a name.
var errBadDeviceName = errors.New("want a host name (letters, digits, '-', '.', '_'), without spaces")

// normalizeDeviceName lowercases a rule's device name and checks it is a name.
func normalizeDeviceName(s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if n == "" || len(n) > 253 {
		return "", errBadDeviceName
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", errBadDeviceName
		}
	}
	return n, nil
}

// MatchDeviceName reports whether a device's name (as DHCP or reverse DNS gave it) matches a
// rule's normalised device name: equal, ignoring case and a trailing dot, or, for a rule's
// name of one label, the first label of the device's name ("laptop" matches "laptop.lan").
func MatchDeviceName(pattern, name string) bool {
	if name == "" {
		return false
	}
	name = strings.TrimSuffix(name, ".")
	if strings.EqualFold(pattern, name) {
		return true
	}
	if strings.IndexByte(pattern, '.') < 0 {
		if i := strings.IndexByte(name, '.'); i > 0 {
			return strings.EqualFold(pattern, name[:i])
		}
	}
	return false
}
