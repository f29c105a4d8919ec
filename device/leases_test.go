package device

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

const dnsmasqLeases = `1764700000 aa:bb:cc:dd:ee:01 192.168.1.20 laptop 01:aa:bb:cc:dd:ee:01
1764700000 aa:bb:cc:dd:ee:02 192.168.1.21 * *
1764700000 aa:bb:cc:dd:ee:03 192.168.1.22 Phone.LAN. *
duid 00:01:00:01:2a:00:00:00:52:54:00:00:00:01
1764700000 305419896 fd00::20 laptop 00:01:00:01:2a:00:00:00:aa:bb:cc:dd:ee:01
1764700000 1 fd00::21 bad\x01name 00:01
garbage line
`

const odhcpdState = `# br-lan 00010001c7a1b2c3aabbccddee01 1a2b3c4d laptop 1764703600 2f4 128 fd00::2f4/128 2001:db8::2f4/128
fd00::2f4	laptop.lan	laptop
2001:db8::2f4	laptop.lan	laptop
# br-lan aabbccddee05 ipv4 printer 1764703600 c0a80132 32 192.168.1.50/32
192.168.1.50	printer.lan	printer
# br-lan 0001 1 - 1764703600 2f5 128 fd00::2f5/128
`

func mustMAC(s string) configs.MAC {
	m, err := configs.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestParseLeasesDnsmasq(t *testing.T) {
	ls, err := ParseLeases(strings.NewReader(strings.ReplaceAll(dnsmasqLeases, `\x01`, "\x01")))
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{
		{MAC: mustMAC("aa:bb:cc:dd:ee:01"), Addr: netip.MustParseAddr("192.168.1.20"), Name: "laptop"},
		{MAC: mustMAC("aa:bb:cc:dd:ee:03"), Addr: netip.MustParseAddr("192.168.1.22"), Name: "phone.lan"},
		{Addr: netip.MustParseAddr("fd00::20"), Name: "laptop"},
	}
	if !slices.Equal(ls, want) {
		t.Errorf("leases =\n%+v\nwant\n%+v", ls, want)
	}
}

func TestParseLeasesOdhcpd(t *testing.T) {
	ls, err := ParseLeases(strings.NewReader(odhcpdState))
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{
		{Addr: netip.MustParseAddr("fd00::2f4"), Name: "laptop"},
		{Addr: netip.MustParseAddr("2001:db8::2f4"), Name: "laptop"},
		{Addr: netip.MustParseAddr("fd00::2f4"), Name: "laptop"},
		{Addr: netip.MustParseAddr("2001:db8::2f4"), Name: "laptop"},
		{MAC: mustMAC("aa:bb:cc:dd:ee:05"), Addr: netip.MustParseAddr("192.168.1.50"), Name: "printer"},
		{Addr: netip.MustParseAddr("192.168.1.50"), Name: "printer"},
	}
	if !slices.Equal(ls, want) {
		t.Errorf("leases =\n%+v\nwant\n%+v", ls, want)
	}
}

func TestParseLeasesSkipsOverlongLines(t *testing.T) {
	in := strings.Repeat("x", 3*maxLeaseLine) + "\n1764700000 aa:bb:cc:dd:ee:01 192.168.1.20 laptop *\n"
	ls, err := ParseLeases(strings.NewReader(in))
	if err != nil || len(ls) != 1 || ls[0].Name != "laptop" {
		t.Fatalf("ParseLeases = %+v, %v; want the lease after the long line", ls, err)
	}
}

// FuzzParseLeases: any file gives leases with valid names and never panics or hangs.
func FuzzParseLeases(f *testing.F) {
	f.Add(dnsmasqLeases)
	f.Add(odhcpdState)
	f.Add("# a b c d 1 x y 1.2.3.4/32 ::/0\n")
	f.Add("1 aa:bb:cc:dd:ee:ff ::ffff:1.2.3.4 n\n")
	f.Add("1 aa:bb:cc:dd:ee:ff 1.2.3.4 ..\n") // was cleaned to "." (not idempotent)
	f.Fuzz(func(t *testing.T, in string) {
		ls, err := ParseLeases(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if l.Name == "" || cleanName(l.Name) != l.Name {
				t.Errorf("lease name %q is not clean", l.Name)
			}
			if l.Addr.Is4In6() {
				t.Errorf("lease address %v is not unmapped", l.Addr)
			}
			if l.MAC.IsZero() && !l.Addr.IsValid() {
				t.Errorf("lease %+v names nothing", l)
			}
		}
	})
}
