package dns

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/socksgate/socksgate/internal/testutil"
)

// needPeer skips the test when a third-party program is missing, except under CI (CI set),
// where every peer is installed and a missing one is a broken CI: there it fails.
func needPeer(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; tests/deps.sh should have installed it", n)
			}
			t.Skipf("%s is not installed (make deps installs it)", n)
		}
	}
}

// freePort returns a loopback port free for UDP and TCP at the moment.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startDnsmasq runs dnsmasq on 127.0.0.1:<port> answering example.test, logging queries.
func startDnsmasq(t *testing.T) (string, *testutil.SyncBuffer) {
	t.Helper()
	port := freePort(t)
	args := []string{"-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
		"--listen-address=127.0.0.1", "--port=" + strconv.Itoa(port), "--address=/example.test/192.0.2.1",
		"--log-queries", "--log-facility=-", "--pid-file=", "--cache-size=0",
		"--local-ttl=300"} // --address answers carry TTL 0 otherwise, which nothing caches
	if os.Getuid() == 0 {
		args = append(args, "--user=root")
	}
	for i := 0; i < 12; i++ { // about 3,000 bytes of TXT: over any UDP size a client offers
		args = append(args, "--txt-record=big.example.test,"+strings.Repeat(string(rune('a'+i)), 250))
	}
	out := &testutil.SyncBuffer{}
	cmd := exec.Command("dnsmasq", args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	testutil.WaitUntil(t, "dnsmasq answering", func() bool {
		c := &mdns.Client{Timeout: 200e6}
		_, _, err := c.Exchange(query("up.example.test", mdns.TypeA), addr)
		return err == nil
	})
	return addr, out
}

func kdig(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("kdig", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kdig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestPeersDnsmasqAndKdig: kdig asks socksgate's server, which resolves through dnsmasq.
func TestPeersDnsmasqAndKdig(t *testing.T) {
	needPeer(t, "dnsmasq", "kdig")
	origin, log := startDnsmasq(t)
	up := mustExchanger(t, origin, Transport{})
	policy := PolicyFunc(func(_ context.Context, q Query) Decision {
		if strings.HasPrefix(q.Name, "ads.") {
			return Decision{Action: Block, Rule: "ads"}
		}
		return Decision{Action: Resolve, Exchanger: up, Rule: "all"}
	})
	h := NewHandler(Config{Policy: policy})
	h.Cache = NewCache(0, 0)
	h.Stats = &Stats{}
	s := &Server{Handler: h, Stats: h.Stats}
	addr := testServer(t, s)
	host, port, _ := net.SplitHostPort(addr)
	at := []string{"@" + host, "-p", port}

	// A query, over UDP then TCP: the second is a cache hit and never reaches dnsmasq.
	for _, transport := range []string{"+notcp", "+tcp"} {
		out := kdig(t, append(at, transport, "+short", "www.example.test", "A")...)
		if strings.TrimSpace(out) != "192.0.2.1" {
			t.Fatalf("kdig %s: %q", transport, out)
		}
	}
	testutil.WaitUntil(t, "dnsmasq logging the query", func() bool {
		return strings.Contains(log.String(), "query[A] www.example.test from 127.0.0.1")
	})
	if n := strings.Count(log.String(), "query[A] www.example.test"); n != 1 {
		t.Errorf("dnsmasq asked %d times for www.example.test, want 1 (the second from the cache):\n%s", n, log.String())
	}
	// A blocked name: NXDOMAIN, and dnsmasq never hears of it.
	if out := kdig(t, append(at, "ads.example.test", "A")...); !strings.Contains(out, "NXDOMAIN") {
		t.Errorf("blocked name: %s", out)
	}
	if strings.Contains(log.String(), "ads.example.test") {
		t.Error("dnsmasq was asked for a blocked name")
	}
	// A large TXT answer: truncated with TC over UDP, whole over TCP.
	out := kdig(t, append(at, "+notcp", "+ignore", "+bufsize=1232", "big.example.test", "TXT")...)
	if !strings.Contains(out, " tc") {
		t.Errorf("large TXT over UDP not truncated:\n%s", out)
	}
	out = kdig(t, append(at, "+tcp", "+short", "big.example.test", "TXT")...)
	if n := strings.Count(out, "\n"); n != 12 {
		t.Errorf("large TXT over TCP: %d records, want 12:\n%s", n, out)
	}
	// A query with an EDNS client-subnet option is answered (that the option goes no further is
	// TestHandlerStripsECSAndPassesDOCD's to check).
	kdig(t, append(at, "+subnet=198.51.100.0/24", "ecs.example.test", "A")...)
	if st := h.Stats.Snapshot(); st.CacheHits < 1 || st.Queries[QueryCountKey{"ads", "block"}] != 1 {
		t.Errorf("stats: %+v", st)
	}
}
