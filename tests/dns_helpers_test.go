//go:build linux

package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// The DNS lab: dnsmasq in wan is the origin resolver for every name the DNS tests ask
// (--no-resolv --no-hosts: it never asks anyone else), with --log-queries, so that its log
// says who asked each name: gw's own sockets arrive from gw's upstream address, flows through
// dante from the proxy's wan address.
const (
	dnsFromGW    = netlab.GWUp4     // a query socksgate sent itself (a direct rule)
	dnsFromProxy = netlab.ProxyWAN4 // a query that went through dante (a proxy rule)
	// dnsEcho4 is a second wan address: echo.test's, so that a flow to it can only have
	// taken its name from that answer.
	dnsEcho4 = "203.0.113.20"
	// dnsEchoPort is where wan's plain TCP echo listens: no TLS, no HTTP, nothing to sniff.
	dnsEchoPort = "7000"
	// dnsBigTXT is how many 250-byte strings big.test's TXT record holds: an answer over 1232.
	dnsBigTXT = 6
)

// dnsStartOrigin runs dnsmasq in wan on port 53 of wan's address (UDP and TCP). Every name it
// answers is under .test; --local-ttl makes its answers cacheable (it says TTL 0 otherwise).
func dnsStartOrigin(t testing.TB, tp *netlab.Topology) *netlab.Proc {
	t.Helper()
	needBin(t, "dnsmasq", "dig")
	tp.WAN.Addr(netlab.WANIf, dnsEcho4+"/32")
	var big []string
	for i := range dnsBigTXT {
		big = append(big, fmt.Sprintf("%c%s", 'a'+i, strings.Repeat("x", 249)))
	}
	pid := writeFile(t, "dnsmasq.pid", "")
	args := []string{"dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--log-queries", "--log-facility=-", "--local-ttl=300", "--cache-size=0",
		"--listen-address=" + netlab.WAN4, "--bind-interfaces", "-p", "53",
		"--user=root", "--pid-file=" + pid,
		"--edns-packet-max=4096",
		"--txt-record=big.test," + strings.Join(big, ","),
		"--address=/echo.test/" + dnsEcho4,
	}
	for _, name := range []string{"router.test", "wan.test", "listen.test", "blocked.test", "cached.test",
		"direct.test", "proxied.test", "printer.lan", "fake.example", "keep.example", "dot.test", "doh.test", "wanask.test"} {
		args = append(args, "--address=/"+name+"/"+netlab.WAN4)
	}
	p := tp.WAN.Start(args...)
	tp.WAN.WaitListening(net.JoinHostPort(netlab.WAN4, "53"), 5*time.Second)
	return p
}

// dnsAsked is how many times dnsmasq's log says it was asked name's qtype from addr.
func dnsAsked(origin *netlab.Proc, qtype, name, from string) int {
	// The line ends with the address: 203.0.113.1 must not count 203.0.113.10's queries.
	want := fmt.Sprintf("query[%s] %s from %s", qtype, name, from)
	n := 0
	for _, l := range strings.Split(origin.Output(), "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), want) {
			n++
		}
	}
	return n
}

// dnsAskedAny is how many times dnsmasq was asked name, of any type, from anyone.
func dnsAskedAny(origin *netlab.Proc, name string) int {
	n := 0
	for _, l := range strings.Split(origin.Output(), "\n") {
		if strings.Contains(l, "query[") && strings.Contains(l, "] "+name+" from ") {
			n++
		}
	}
	return n
}

// dig runs dig inside ns with one try of 2 s (a lost answer is a failure, not a retry), and
// returns its output.
func dig(ns *netlab.NS, args ...string) (string, error) {
	return ns.Run(append([]string{"dig", "+time=2", "+tries=1"}, args...)...)
}

// digShort is dig +short: the answer's data, one a line.
func digShort(ns *netlab.NS, server, name, qtype string, more ...string) (string, error) {
	out, err := dig(ns, append([]string{"+short", "@" + server, name, qtype}, more...)...)
	return strings.TrimSpace(out), err
}

// digStatus is the status of dig's answer (NOERROR, NXDOMAIN, ...), "" when none came.
func digStatus(out string) string {
	_, rest, ok := strings.Cut(out, "status: ")
	if !ok {
		return ""
	}
	return strings.TrimRight(strings.Fields(rest)[0], ",")
}

// dnsConfig is socksgate with dante as upstream "dante" and the rules the DNS tests share:
// blocked.test blocked, proxied.test, echo.test, fake.example, dot.test and doh.test through dante, everything else direct.
// dnsYAML is the body of the dns: section (indented two spaces), after the servers. Every
// resolver is wan's dnsmasq: local names too (their default, the machine's resolv.conf, is
// never to be asked from a test).
func dnsConfig(dnsYAML string, moreRules string) string {
	return fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen: {http: [], socks: []}
timeouts: {dial: 3s, grace: 1s}
upstreams:
  - {name: dante, url: "socks5://%s:1080"}
rules:
  - {name: blocked, domain: [blocked.test, .blocked.test], action: block}
  - {name: proxied, domain: [proxied.test, printer.lan, echo.test, fake.example, dot.test, doh.test], action: proxy, upstream: dante}
%s  - {name: default, action: direct}
dns:
  servers: [%q]
  direct: [%q]
  local: [%q]
  rate: -1
%s`, netlab.GWLANIf, netlab.Proxy4, moreRules, netlab.WAN4, netlab.WAN4, netlab.WAN4, dnsYAML)
}

// dnsQueryLogged waits until socksgate logged a "dns query" record for name and returns it.
func dnsQueryLogged(gw *netlab.Proc, name string) (logLine, bool) {
	return waitLog(gw, 5*time.Second, logFields{"msg": "dns query", "name": "~" + strings.TrimSuffix(name, ".")})
}

// dnsEcho runs a plain TCP echo in wan on dnsEchoPort, every address: the protocol has nothing
// to sniff, so a flow to it is routed by its address or by the name DNS gave that address.
func dnsEcho(t testing.TB, tp *netlab.Topology) {
	t.Helper()
	ln := tp.WAN.Listen("tcp", "[::]:"+dnsEchoPort)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 512)
				n, _ := c.Read(buf)
				c.Write(buf[:n])
			}()
		}
	}()
}

// dnsEchoFrom sends a line to addr's echo from lan, from the source address src ("" for the
// default), with socat, and returns what came back.
func dnsEchoFrom(tp *netlab.Topology, src, addr string) (string, error) {
	target := "TCP:" + net.JoinHostPort(addr, dnsEchoPort) + ",connect-timeout=5"
	if src != "" {
		target += ",bind=" + src
	}
	return tp.LAN.Run("sh", "-c", "echo plain-tcp | timeout 10 socat -T5 - "+target)
}

// nsResolvConf points ns's resolver at server for processes started after the call (`ip netns
// exec` bind-mounts /etc/netns/NS/resolv.conf); it is removed in cleanup.
func nsResolvConf(t testing.TB, ns *netlab.NS, server string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver "+server+"\noptions timeout:2 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dnsTestCA writes a self-signed certificate (its own CA) valid for names and wan's address,
// and its key, as PEM files; it returns their paths.
func dnsTestCA(t testing.TB, names ...string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		IPAddresses:           []net.IP{net.ParseIP(netlab.WAN4)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, "dot-cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, "dot-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	// dnsdist runs as root here, but reads its files after parsing: make them readable anyway.
	os.Chmod(certFile, 0o644)
	os.Chmod(keyFile, 0o644)
	return certFile, keyFile
}

// dnsStartDNSDist runs dnsdist in wan in front of dnsmasq: DoT on wan:853 and DoH on
// wan:443/dns-query, with the certificate given (names dot.test).
func dnsStartDNSDist(t testing.TB, tp *netlab.Topology, certFile, keyFile string) *netlab.Proc {
	t.Helper()
	needBin(t, "dnsdist")
	conf := fmt.Sprintf(`setLocal("127.0.0.1:5300")
setACL({"0.0.0.0/0", "::/0"})
newServer({address="%s:53", name="dnsmasq"})
addTLSLocal("%s:853", %q, %q)
addDOHLocal("%s:443", %q, %q, "/dns-query")
`, netlab.WAN4, netlab.WAN4, certFile, keyFile, netlab.WAN4, certFile, keyFile)
	path := writeFile(t, "dnsdist.conf", conf)
	p := tp.WAN.Start("dnsdist", "--supervised", "--disable-syslog", "-C", path)
	tp.WAN.WaitListening(net.JoinHostPort(netlab.WAN4, "853"), 10*time.Second)
	tp.WAN.WaitListening(net.JoinHostPort(netlab.WAN4, "443"), 10*time.Second)
	return p
}
