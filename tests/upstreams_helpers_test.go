//go:build linux

package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// upstreamsTinyproxy configures upstreamsStartTinyproxy.
type upstreamsTinyproxy struct {
	Port         string   // default 8888
	User, Pass   string   // BasicAuth when User is set
	ConnectPorts []string // default [80]
}

// upstreamsStartTinyproxy runs tinyproxy 1.11 in the proxy namespace, listening on every address
// (Listen takes one address only), and waits for it. Its log (one line per CONNECT) is the Proc's
// output.
func upstreamsStartTinyproxy(t testing.TB, tp *netlab.Topology, o upstreamsTinyproxy) *netlab.Proc {
	t.Helper()
	needBin(t, "tinyproxy")
	if o.Port == "" {
		o.Port = "8888"
	}
	if len(o.ConnectPorts) == 0 {
		o.ConnectPorts = []string{"80"}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Port %s\nTimeout 60\nMaxClients 100\nLogLevel Info\nAllow 10.0.0.0/8\nAllow fd00::/8\n", o.Port)
	fmt.Fprintf(&b, "User nobody\nGroup nogroup\nDisableViaHeader Yes\n")
	for _, p := range o.ConnectPorts {
		fmt.Fprintf(&b, "ConnectPort %s\n", p)
	}
	if o.User != "" {
		fmt.Fprintf(&b, "BasicAuth %s %s\n", o.User, o.Pass)
	}
	conf := writeFile(t, "tinyproxy-"+o.Port+".conf", b.String())
	p := tp.Proxy.Start("tinyproxy", "-d", "-c", conf)
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, o.Port), 10*time.Second)
	return p
}

// upstreamsSquidConf is squid's shipped policy (CONNECT only to SSL_ports) in a config that runs
// unprivileged-safe in a test: no cache, logs to files in a world-writable temp directory.
const upstreamsSquidConf = `http_port %s:3128
pid_filename %s/squid.pid
cache_log %s/cache.log
access_log stdio:%s/access.log
cache deny all
cache_mem 8 MB
coredump_dir %s
shutdown_lifetime 0 seconds
acl SSL_ports port 443
acl Safe_ports port 80
acl Safe_ports port 443
acl Safe_ports port 1025-65535
acl CONNECT method CONNECT
acl lab src 10.0.0.0/8 fd00::/8
%s
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow lab
http_access deny all
`

// upstreamsStartSquid runs squid in the proxy namespace on port 3128. extraAccess goes before
// the shipped "deny CONNECT !SSL_ports" line (e.g. "http_access allow CONNECT lab" to lift the
// trap). It returns squid's directory (access.log is there).
func upstreamsStartSquid(t testing.TB, tp *netlab.Topology, extraAccess string) string {
	t.Helper()
	needBin(t, "squid")
	dir, err := os.MkdirTemp("", "sgt-squid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777) // squid drops to the proxy user
	conf := filepath.Join(dir, "squid.conf")
	text := fmt.Sprintf(upstreamsSquidConf, netlab.Proxy4, dir, dir, dir, dir, extraAccess)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p := tp.Proxy.Start("squid", "-N", "-f", conf)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Logf("squid cache.log:\n%s\nsquid output:\n%s", b, p.Output())
		}
	})
	tp.GW.WaitListening(net.JoinHostPort(netlab.Proxy4, "3128"), 20*time.Second)
	return dir
}

// upstreamsDanteUser runs danted with username authentication: dante checks system passwords,
// so it runs in a private mount namespace where bind-mounted copies of /etc/passwd and
// /etc/shadow hold a test user. It skips the test when that cannot be arranged.
func upstreamsStartDanteWithUser(t testing.TB, tp *netlab.Topology, port, user, pass string) *netlab.Proc {
	t.Helper()
	needBin(t, "danted", "unshare", "openssl")
	hash, err := exec.Command("openssl", "passwd", "-6", "-salt", "sgtsalt", pass).Output()
	if err != nil {
		skipOutsideCI(t, "openssl passwd: %v", err)
	}
	dir := t.TempDir()
	passwd, _ := os.ReadFile("/etc/passwd")
	shadow, _ := os.ReadFile("/etc/shadow")
	pw := filepath.Join(dir, "passwd")
	sh := filepath.Join(dir, "shadow")
	os.WriteFile(pw, append(passwd, []byte(user+":x:64123:64123::/nonexistent:/usr/sbin/nologin\n")...), 0o644)
	os.WriteFile(sh, append(shadow, []byte(user+":"+strings.TrimSpace(string(hash))+":19000:0:99999:7:::\n")...), 0o640)
	conf := writeFile(t, "danted-auth.conf", `logoutput: stderr
internal: `+netlab.Proxy4+` port = `+port+`
external: wan0
socksmethod: username
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0/0 to: 0/0 }
socks pass {
	from: 0/0 to: 0/0
	command: connect
	log: connect disconnect error
}
`)
	script := fmt.Sprintf("mount --bind %s /etc/passwd && mount --bind %s /etc/shadow && exec danted -f %s -N 2 -p %s.pid",
		pw, sh, conf, conf)
	p := tp.Proxy.Start("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	if !upstreamsWaitListening(tp.GW, net.JoinHostPort(netlab.Proxy4, port), 10*time.Second) {
		skipOutsideCI(t, "danted with a private passwd did not start (%s); dante auth not covered here", strings.TrimSpace(p.Output()))
	}
	return p
}

// upstreamsWaitListening is WaitListening that reports instead of failing.
func upstreamsWaitListening(ns *netlab.NS, addr string, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := ns.Dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// upstreamsLeakCounter counts, in gw's OUTPUT path, packets socksgate itself sends straight to
// wan (a direct dial), in a scaffolding table of the test's own. Zero means nothing went direct.
func upstreamsLeakCounter(t testing.TB, tp *netlab.Topology) func() int {
	t.Helper()
	tp.GW.MustRun("nft", "add table inet upstreamsleak")
	tp.GW.MustRun("nft", "add chain inet upstreamsleak out { type filter hook output priority 0; policy accept; }")
	tp.GW.MustRun("nft", "add rule inet upstreamsleak out ip daddr 203.0.113.0/24 counter")
	tp.GW.MustRun("nft", "add rule inet upstreamsleak out ip6 daddr 2001:db8:3::/64 counter")
	return func() int {
		return upstreamsCounterSum(tp.GW.MustRun("nft", "list chain inet upstreamsleak out"))
	}
}

var upstreamsCounterRe = regexp.MustCompile(`counter packets (\d+)`)

func upstreamsCounterSum(listing string) int {
	n := 0
	for _, m := range upstreamsCounterRe.FindAllStringSubmatch(listing, -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

// upstreamsLabDrops is the packet count of gw's lab filter drop rule (lan traffic forwarded
// toward wan instead of being carried by socksgate).
func upstreamsLabDrops(tp *netlab.Topology) int {
	for _, l := range strings.Split(tp.DirectDrops(), "\n") {
		if strings.Contains(l, "drop") {
			return upstreamsCounterSum(l)
		}
	}
	return -1
}

// upstreamsConfig is a transparent config with the given upstreams/groups/rules YAML.
func upstreamsConfig(body string) string {
	return fmt.Sprintf("log: {level: debug}\nlan: {interfaces: [%s]}\nlisten: {http: [], socks: []}\n"+
		"transparent: {sniff: {enabled: false}}\ntimeouts: {dial: 3s, grace: 1s}\n%s", netlab.GWLANIf, body)
}
