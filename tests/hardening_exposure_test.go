//go:build linux

package tests

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/tests/netlab"
)

// Passwords never reach socksgate's output, its errors or its admin endpoint: upstream
// credentials right and wrong (SOCKS5 auth failure, HTTP 401/407 from the proxy), client
// credentials right and wrong (407, SOCKS5 auth failure), and a config the checker rejects.
func TestHardeningCredentialsNeverInOutput(t *testing.T) {
	const (
		upOK, upWrong     = "Up-S3cret-ok", "Up-S3cret-wrong"
		tpReal, tpWrong   = "Tp-S3cret-real", "Tp-S3cret-wrong"
		clPass, clWrong   = "Cl-S3cret-pass", "Cl-S3cret-bad"
		checkerSecret     = "Chk-S3cret"
		upUser, tpUser    = "upuser", "tpuser"
		clUser            = "client"
		explicitHTTPProxy = "http://" + netlab.GWLAN4 + ":8080"
	)
	tp := netlab.NewTopology(t)
	serveWeb(t, tp)
	upstreamsStartMicrosocks(t, tp, "1080", upUser, upOK)
	upstreamsStartMicrosocks(t, tp, "1081", upUser, "Up-S3cret-real")
	upstreamsStartTinyproxy(t, tp, upstreamsTinyproxy{User: tpUser, Pass: tpReal, ConnectPorts: []string{"80"}})

	cfg := fmt.Sprintf(`log: {level: debug}
lan: {interfaces: [%s]}
listen:
  http: ["lan:8080"]
  socks: ["lan:1080"]
  users: [{username: %s, password: %q}]
transparent: {sniff: {enabled: false}}
admin: %s
timeouts: {dial: 3s, grace: 1s}
upstreams:
  - {name: good, url: "socks5://%s:%s@%s:1080"}
  - {name: badsocks, url: "socks5://%s:%s@%s:1081"}
  - {name: badhttp, url: "http://%s:%s@%s:8888"}
  - {name: goodhttp, url: "http://%s:%s@%s:8888"}
rules:
  - {dst_ports: [8001], action: proxy, upstream: badsocks}
  - {dst_ports: [8002], action: proxy, upstream: badhttp}
  - {inbound: [http, socks], action: proxy, upstream: goodhttp}
  - {action: proxy, upstream: good}
`, netlab.GWLANIf, clUser, clPass, hardeningAdmin,
		upUser, upOK, netlab.Proxy4, upUser, upWrong, netlab.Proxy4,
		tpUser, tpWrong, netlab.Proxy4, tpUser, tpReal, netlab.Proxy4)
	gw := startSocksgate(t, tp.GW, cfg)

	steps := []struct {
		name string
		args []string
		ok   bool
	}{
		{"transparent through SOCKS5 with credentials", []string{urlFor(netlab.WAN4, "/")}, true},
		{"transparent, upstream SOCKS5 refuses the password", []string{"http://" + netlab.WAN4 + ":8001/"}, false},
		{"transparent, upstream HTTP proxy refuses the password", []string{"http://" + netlab.WAN4 + ":8002/"}, false},
		{"explicit HTTP with the right password", []string{"-x", explicitHTTPProxy, "--proxy-user", clUser + ":" + clPass, urlFor(netlab.WAN4, "/")}, true},
		{"explicit HTTP with a wrong password (407)", []string{"-f", "-x", explicitHTTPProxy, "--proxy-user", clUser + ":" + clWrong, urlFor(netlab.WAN4, "/")}, false},
		{"explicit HTTP CONNECT with a wrong password", []string{"-p", "-x", explicitHTTPProxy, "--proxy-user", clUser + ":" + clWrong, urlFor(netlab.WAN4, "/")}, false},
		{"explicit SOCKS5 with the right password", []string{"--socks5", netlab.GWLAN4 + ":1080", "--proxy-user", clUser + ":" + clPass, urlFor(netlab.WAN4, "/")}, true},
		{"explicit SOCKS5 with a wrong password", []string{"--socks5", netlab.GWLAN4 + ":1080", "--proxy-user", clUser + ":" + clWrong, urlFor(netlab.WAN4, "/")}, false},
		{"explicit SOCKS4 while users are set", []string{"--socks4", netlab.GWLAN4 + ":1080", urlFor(netlab.WAN4, "/")}, false},
	}
	var all strings.Builder
	for _, s := range steps {
		out, err := curl(tp.LAN, s.args...)
		if got := err == nil && out == pageBody; got != s.ok {
			t.Errorf("%s: ok=%v, want %v: %v: %q", s.name, got, s.ok, err, out)
		}
		all.WriteString(out)
	}
	waitFor(2*time.Second, func() bool { return countLogs(gw.Output(), flowEnded) >= 5 })
	for _, path := range []string{"/flows", "/upstreams", "/metrics", "/healthz"} {
		body, _ := opsGet(tp.GW, "http://"+hardeningAdmin+path)
		all.WriteString(body)
	}
	for _, sub := range []string{"check", "rules"} {
		out, _ := exec.Command(socksgateBin, sub, "-c", writeFile(t, sub+".yaml", cfg)).CombinedOutput()
		all.Write(out)
	}
	// A config the checker rejects, with the password in the offending URL and elsewhere.
	bad := fmt.Sprintf(`upstreams:
  - {name: a, url: "sock5://u:%s@%s:1080"}
  - {name: b, url: "socks5://u:%s@%s:99999"}
  - {name: c, url: "http://u:%s@[::1"}
listen: {users: [{username: u, password: %q}, {username: u, password: %q}]}
rules:
  - {action: proxy, upstream: missing}
`, checkerSecret, netlab.Proxy4, checkerSecret, netlab.Proxy4, checkerSecret, checkerSecret, checkerSecret)
	out, err := exec.Command(socksgateBin, "check", "-c", writeFile(t, "bad.yaml", bad)).CombinedOutput()
	if err == nil {
		t.Errorf("check accepted a broken config:\n%s", out)
	}
	t.Logf("check on a broken config says:\n%s", out)
	all.Write(out)
	out, _ = exec.Command(socksgateBin, "run", "-c", writeFile(t, "bad-run.yaml", bad)).CombinedOutput()
	all.Write(out)

	gw.Signal(syscall.SIGTERM)
	gw.Wait(10 * time.Second)
	all.WriteString(gw.Output())

	text := all.String()
	if !hasLog(gw.Output(), logFields{"msg": "~not authenticated", "level": "warning"}) {
		t.Errorf("no log line for the clients' failed authentication:\n%s", gw.Output())
	}
	for _, secret := range []struct{ user, pass string }{
		{upUser, upOK}, {upUser, upWrong}, {tpUser, tpWrong}, {tpUser, tpReal}, {clUser, clPass}, {clUser, clWrong}, {"u", checkerSecret},
	} {
		for _, form := range []string{
			secret.pass,
			base64.StdEncoding.EncodeToString([]byte(secret.user + ":" + secret.pass)),
			strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(secret.user+":"+secret.pass)), "="),
		} {
			if i := strings.Index(text, form); i >= 0 {
				t.Errorf("the password %q appears (as %q) in socksgate's output:\n...%s...", secret.pass, form, text[max(0, i-200):min(len(text), i+100)])
			}
		}
	}
	t.Logf("%d bytes of output, admin pages and checker messages searched for 7 passwords", len(text))
}

// A config holding passwords that other users can read draws a warning at start; one that only
// its owner can read does not; nor does a readable one without passwords.
func TestHardeningReadableConfigWithPasswordsWarns(t *testing.T) {
	lab := netlab.New(t)
	ns := lab.NS("cfg")
	const warning = "readable by other users"
	withPassword := "listen: {http: [\"127.0.0.1:8080\"], socks: [], users: [{username: u, password: \"P-S3cret\"}]}\n"
	withUpstreamPassword := "listen: {http: [\"127.0.0.1:8080\"], socks: []}\nupstreams:\n  - {name: a, url: \"socks5://u:P-S3cret@127.0.0.1:1080\"}\n"
	without := "listen: {http: [\"127.0.0.1:8080\"], socks: []}\n"
	for _, c := range []struct {
		name, yaml string
		mode       os.FileMode
		warn       bool
	}{
		{"client password, mode 644", withPassword, 0o644, true},
		{"upstream password, mode 644", withUpstreamPassword, 0o644, true},
		{"upstream password, mode 640", withUpstreamPassword, 0o640, false},
		{"upstream password, mode 600", withUpstreamPassword, 0o600, false},
		{"no password, mode 644", without, 0o644, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, "socksgate.yaml", withTestState(t, c.yaml))
			if err := os.Chmod(p, c.mode); err != nil {
				t.Fatal(err)
			}
			gw := ns.Start(socksgateBin, "run", "-log-format", "json", "-c", p)
			if _, ok := waitLog(gw, 15*time.Second, msg("socksgate ready")); !ok {
				t.Fatalf("not ready:\n%s", gw.Output())
			}
			gw.Signal(syscall.SIGTERM)
			gw.Wait(10 * time.Second)
			if got := hasLog(gw.Output(), logFields{"level": "warning", "msg": "~" + warning}); got != c.warn {
				t.Fatalf("warning=%v, want %v:\n%s", got, c.warn, gw.Output())
			}
			if strings.Contains(gw.Output(), "P-S3cret") {
				t.Fatalf("the password appears in the output:\n%s", gw.Output())
			}
		})
	}
}
