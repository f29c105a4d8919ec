package tests

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/tests/netlab"
)

// doctorRun runs socksgate doctor in ns and returns its output and exit status.
func doctorRun(t *testing.T, ns *netlab.NS, args ...string) (string, int) {
	t.Helper()
	out, err := ns.Run(append([]string{socksgateBin, "doctor"}, args...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, 0
	case errors.As(err, &ee):
		return out, ee.ExitCode()
	}
	t.Fatalf("socksgate doctor: %v\n%s", err, out)
	return "", 0
}

// On a gateway with forwarding off and strict rp_filter on its LAN side, doctor names both,
// each with its fix, and exits non-zero; socksgate not running shows as its table and
// listeners missing.
func TestDoctorFindsForwardingOffAndStrictRPFilter(t *testing.T) {
	tp := netlab.NewTopology(t)
	tp.GW.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf."+netlab.GWLANIf+".rp_filter=1")
	cfg := writeFile(t, "socksgate.yaml", gatewayConfig("socks5://"+netlab.Proxy4+":1080", "transparent: {udp: true}\n"))
	out, code := doctorRun(t, tp.GW, "-c", cfg, "--offline")
	t.Logf("socksgate doctor:\n%s", out)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	for _, want := range []string{
		"BLOCK sysctl    net.ipv4.ip_forward is 0",
		"fix: sysctl -w net.ipv4.ip_forward=1",
		"warn  rp_filter rp_filter is strict on " + netlab.GWLANIf,
		"fix: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf." + netlab.GWLANIf + ".rp_filter=2",
		"BLOCK table     table inet socksgate is missing",
		"ok    kernel    socksgate's rules install",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "upstream") {
		t.Errorf("--offline checked the upstreams:\n%s", out)
	}
}

// With socksgate running on a well-set gateway (TPROXY for UDP, the admin endpoint, a live
// upstream) doctor finds nothing that blocks and exits 0.
func TestDoctorPassesWithSocksgateRunning(t *testing.T) {
	tp := netlab.NewTopology(t)
	startMicrosocks(t, tp, "", "")
	tp.GW.MustRun("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", "net.ipv4.conf."+netlab.GWLANIf+".rp_filter=2")
	yaml := gatewayConfig("socks5://"+netlab.Proxy4+":1080", "transparent: {udp: true}\nadmin: 127.0.0.1:9090\nrules: [{action: proxy, upstream: main}]\n")
	gw, cfg := startSocksgateFile(t, tp.GW, yaml)
	defer stopSocksgate(t, tp.GW, gw)
	out, code := doctorRun(t, tp.GW, "-c", cfg)
	t.Logf("socksgate doctor:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out)
	}
	for _, want := range []string{
		"ok    table     table inet socksgate is installed",
		"ok    policy    fwmark 0x2 lookup 100 at priority 100",
		"ok    listener  the transparent TCP listener answers on 127.0.0.1:12345",
		"ok    listener  UDP port 12345 is bound",
		"ok    listener  admin endpoint 127.0.0.1:9090/healthz answers 200",
		"ok    upstream  upstream main (socks5://" + netlab.Proxy4 + ":1080) accepts connections",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "BLOCK") {
		t.Errorf("a blocking finding:\n%s", out)
	}
}
