package device

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// A device without a lease is named by the PTR record of its address, from the resolver it
// is given (a test server on loopback here, never the machine's).
func TestReverseDNSNamesADeviceWithoutALease(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	asked := make(chan string, 4)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		asked <- q.Question[0].Name
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Name == "20.1.168.192.in-addr.arpa." {
			m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 60}, Ptr: "Laptop.lan."})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()

	tb, _ := newTestTable(10)
	tb.Observe(v4, macA)
	tb.Observe(netip.MustParseAddr("fd00::20"), macA) // the IPv4 address is asked first
	tb.Observe(netip.MustParseAddr("192.168.1.21"), macB)
	for range 2 {
		mac, a, ok := tb.nextReverse(time.Now())
		if !ok {
			t.Fatal("no device to ask for")
		}
		name, err := reverseLookup(t.Context(), &net.Dialer{}, pc.LocalAddr().String(), a)
		if err != nil {
			t.Fatal(err)
		}
		tb.setReverse(mac, name)
	}
	if _, _, ok := tb.nextReverse(time.Now()); ok {
		t.Error("asked again at once")
	}
	if d := find(tb, macA); d.Name != "laptop.lan" || d.NameFrom != NameDNS {
		t.Errorf("device A: %q from %q", d.Name, d.NameFrom)
	}
	if d := find(tb, macB); d.Name != "" {
		t.Errorf("device B (NXDOMAIN): %q", d.Name)
	}
	// A device with a lease is never asked for.
	tb.SetLeases([]Lease{{MAC: macA, Name: "dhcpname"}, {MAC: macB, Name: "other"}})
	if _, _, ok := tb.nextReverse(time.Now().Add(24 * time.Hour)); ok {
		t.Error("a device with a lease was picked for reverse DNS")
	}
}

// The lease files are read again when they change; a missing one is skipped.
func TestTrackerRereadsChangedLeaseFiles(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "dhcp.leases")
	os.WriteFile(f, []byte("1 aa:bb:cc:dd:ee:01 192.168.1.20 first *\n"), 0o600)
	tr := &Tracker{Table: NewTable(10, nil), o: Options{Leases: []string{f, filepath.Join(dir, "missing")}, Warn: func(m string, err error) { t.Errorf("%s: %v", m, err) }}}
	tr.Observe(v4, macA)
	stamps := map[string]fileStamp{}
	tr.readLeases(stamps)
	if _, name, _ := tr.Lookup(v4); name != "first" {
		t.Fatalf("name = %q", name)
	}
	os.WriteFile(f, []byte("1 aa:bb:cc:dd:ee:01 192.168.1.20 second-name *\n"), 0o600)
	tr.readLeases(stamps)
	if _, name, _ := tr.Lookup(v4); name != "second-name" {
		t.Fatalf("after the change: name = %q", name)
	}
}

// Start never fails: a store it cannot open is reported and the totals kept in memory.
func TestTrackerStartsWithAnUnusableStateDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	os.WriteFile(file, nil, 0o600)
	var warned []string
	tr := Start(Options{StateDir: file, Max: 4, Warn: func(m string, err error) { warned = append(warned, m) }})
	tr.Observe(v4, macA)
	tr.End(1, v4, 1, 2)
	if err := tr.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if len(warned) == 0 {
		t.Error("no warning for an unusable state directory")
	}
}
