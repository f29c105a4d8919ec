package configs

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var testPin = sha256.Sum256([]byte("a key"))

func TestParsePinForms(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString(testPin[:])
	hx := hex.EncodeToString(testPin[:])
	var colons []string
	for i := 0; i < len(hx); i += 2 {
		colons = append(colons, strings.ToUpper(hx[i:i+2]))
	}
	for _, s := range []string{
		"sha256//" + b64, b64, strings.TrimRight(b64, "="), " " + b64 + " ", hx, strings.ToUpper(hx), strings.Join(colons, ":"),
	} {
		p, err := ParsePin(s)
		if err != nil || p != Pin(testPin) {
			t.Errorf("ParsePin(%q) = %x, %v; want %x", s, p, err, testPin)
		}
	}
	if got := Pin(testPin).String(); got != "sha256//"+b64 {
		t.Errorf("String() = %q", got)
	}
	for _, s := range []string{
		"", "sha256//", "sha256//" + hx, // curl's prefix takes base64 only
		b64[:40], hx[:62], hx + "00", "sha1//" + b64, "sha256//" + b64 + ";sha256//" + b64,
		strings.Repeat("=", 44), "zz" + hx[2:],
	} {
		if _, err := ParsePin(s); err == nil {
			t.Errorf("ParsePin(%q) accepted", s)
		}
	}
}

// writeCA writes a file into a test directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUpstreamTLSProblems(t *testing.T) {
	garbage := writeFile(t, "garbage.pem", "not a certificate\n")
	doc := `upstreams:
  - {name: a, url: "socks5://h:1", tls: {server_name: x.example}}
  - {name: b, url: "https://h:443", tls: {ca: /nonexistent/ca.pem}}
  - {name: c, url: "socks5+tls://h:443", tls: {ca: ` + garbage + `}}
  - {name: d, url: "https://h:443", tls: {server_name: "bad name"}}
  - {name: e, url: "http://h:3128", tls: {}}
rules: [{action: direct}]`
	_, err := Parse([]byte(doc))
	got := problemsOf(t, err)
	want := []string{
		`upstreams[0].tls: applies only to https:// and socks5+tls:// upstreams, not socks5://`,
		`upstreams[1].tls.ca: open /nonexistent/ca.pem: no such file or directory`,
		`upstreams[2].tls.ca: ` + garbage + `: no PEM certificate in it`,
		`upstreams[3].tls.server_name: invalid name "bad name"`,
		`upstreams[4].tls: applies only to https:// and socks5+tls:// upstreams, not http://`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// A bad pin is the document's problem, with its line and path.
	_, err = Parse([]byte("upstreams:\n  - name: a\n    url: \"https://h:443\"\n    tls: {pin_sha256: [\"sha256//AAAA\"]}\nrules: [{action: direct}]\n"))
	got = problemsOf(t, err)
	if len(got) != 1 || !strings.HasPrefix(got[0], `line 4: upstreams[0].tls.pin_sha256[0]: invalid pin "sha256//AAAA"`) {
		t.Errorf("bad pin: %q", got)
	}
	_, err = Parse([]byte("upstreams: [{name: a, url: \"https://h:443\", tls: {pin: x}}]\n"))
	if got = problemsOf(t, err); len(got) != 1 || !strings.Contains(got[0], `unknown key "pin"`) {
		t.Errorf("unknown key: %q", got)
	}
}

func TestUpstreamTLSParsed(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString(testPin[:])
	c := mustParse(t, `upstreams:
  - {name: a, url: "https://u:p@h:443", tls: {server_name: proxy.example, pin_sha256: "`+b64+`", insecure: true}}
  - {name: b, url: "socks5+tls://u:p@h:1443", via: a}
rules: [{upstream: a}, {upstream: b}]`)
	a := c.Upstream("a")
	if a.TLS == nil || a.TLS.ServerName != "proxy.example" || !a.TLS.Insecure || !slices.Equal(a.TLS.PinSHA256, []Pin{testPin}) {
		t.Errorf("a.TLS = %+v", a.TLS)
	}
	if !a.IsTLS() || !c.Upstream("b").IsTLS() || c.Upstream("b").TLS != nil {
		t.Errorf("IsTLS: a %v, b %v (tls %+v)", a.IsTLS(), c.Upstream("b").IsTLS(), c.Upstream("b").TLS)
	}
	out, err := yaml.Marshal(c.Upstreams)
	if err != nil {
		t.Fatal(err)
	}
	var back []Upstream
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c.Upstreams) {
		t.Errorf("round trip:\n%s\n%+v != %+v", out, back, c.Upstreams)
	}
}

// socks5+tls carries no UDP (its datagrams would go in clear beside the TLS), nor does https.
func TestTLSUpstreamsCarryNoUDP(t *testing.T) {
	c := mustParse(t, `upstreams:
  - {name: s, url: "socks5+tls://h:1"}
  - {name: h, url: "https://h:1"}
transparent: {udp: true}
lan: {interfaces: [eth1]}
rules: [{protocol: udp, upstream: s}, {upstream: h}]`)
	for _, n := range []string{"s", "h"} {
		if c.Upstream(n).SupportsUDP() {
			t.Errorf("%s.SupportsUDP() = true", n)
		}
	}
	w := strings.Join(c.Warnings(), "\n")
	if !strings.Contains(w, `upstream "s"`) {
		t.Errorf("no warning about UDP routed to socks5+tls:\n%s", w)
	}
}

func TestInsecureTLSWarns(t *testing.T) {
	ca := writeFile(t, "ca.pem", "x")
	pem, _ := os.ReadFile("examples/proxy-ca.pem")
	os.WriteFile(ca, pem, 0o644)
	b64 := base64.StdEncoding.EncodeToString(testPin[:])
	c := mustParse(t, `upstreams:
  - {name: open, url: "https://h:443", tls: {insecure: true}}
  - {name: pinned, url: "https://h:444", tls: {insecure: true, pin_sha256: [`+b64+`]}}
  - {name: both, url: "https://h:445", tls: {insecure: true, pin_sha256: [`+b64+`], ca: `+ca+`}}
  - {name: fine, url: "https://h:446", tls: {ca: `+ca+`}}
groups: [{name: g, upstreams: [open, pinned, both, fine]}]
rules: [{upstream: g}]`)
	var tlsW []string
	for _, w := range c.Warnings() {
		if strings.Contains(w, ".tls.") {
			tlsW = append(tlsW, w)
		}
	}
	if len(tlsW) != 2 || !strings.HasPrefix(tlsW[0], `upstreams[0] ("open").tls.insecure: true verifies nothing`) ||
		!strings.HasPrefix(tlsW[1], `upstreams[2] ("both").tls.ca is not used`) {
		t.Errorf("warnings:\n%s", strings.Join(tlsW, "\n"))
	}
}

// A relative tls.ca in a file is read beside that file.
func TestRelativeCAIsBesideTheFile(t *testing.T) {
	dir := t.TempDir()
	pem, err := os.ReadFile("examples/proxy-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), pem, 0o644)
	cfg := filepath.Join(dir, "socksgate.yaml")
	os.WriteFile(cfg, []byte("upstreams: [{name: a, url: \"https://h:443\", tls: {ca: ca.pem}}]\nrules: [{upstream: a}]\n"), 0o644)
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Upstream("a").TLS.CA; got != filepath.Join(dir, "ca.pem") {
		t.Errorf("ca = %q", got)
	}
}

func FuzzParsePin(f *testing.F) {
	b64 := base64.StdEncoding.EncodeToString(testPin[:])
	for _, s := range []string{"", "sha256//" + b64, b64, hex.EncodeToString(testPin[:]), "sha256//;", "AB:CD", strings.Repeat(":", 95)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePin(s)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error")
			}
			return
		}
		back, err := ParsePin(p.String())
		if err != nil || back != p {
			t.Errorf("ParsePin(%q) = %v, whose String does not parse back: %v, %v", s, p, back, err)
		}
	})
}
