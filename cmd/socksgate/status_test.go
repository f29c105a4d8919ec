package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/admin"
)

type statusSource struct{}

func (statusSource) Snapshot() admin.Snapshot { return admin.Snapshot{} }
func (statusSource) Flows() []admin.Flow {
	return []admin.Flow{{Network: "tcp", Src: "10.0.1.2:40000", Dst: "203.0.113.10:443", Name: "example.com",
		Inbound: "redirect", Upstream: "socks5://10.0.2.2:1080", Rule: "web", Age: 75, BytesUp: 1536, BytesDown: 3 << 20}}
}
func (statusSource) Upstreams() []admin.Upstream {
	return []admin.Upstream{{Name: "main", URL: "socks5://10.0.2.2:1080", Up: true, Reason: "not health-checked"},
		{Name: "backup", Group: "pool", Up: false, Reason: "connection refused"}}
}

// `socksgate status -a` prints one row per upstream and per live flow.
func TestStatusPrintsUpstreamsAndFlows(t *testing.T) {
	srv := httptest.NewServer(admin.Handler(statusSource{}, "test"))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := realMain([]string{"status", "-a", strings.TrimPrefix(srv.URL, "http://")}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	s := out.String()
	for _, want := range []string{"UPSTREAMS (2)", "FLOWS (1)", "main", "up", "backup", "pool", "down",
		"connection refused", "10.0.1.2:40000", "203.0.113.10:443", "example.com", "web", "1m15s", "1.5KiB", "3.0MiB"} {
		if !strings.Contains(s, want) {
			t.Errorf("status output lacks %q:\n%s", want, s)
		}
	}
}

func TestStatusUnreachableEndpointFails(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	var out, errOut bytes.Buffer
	if code := realMain([]string{"status", "-a", addr}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "admin") {
		t.Fatalf("error does not point at the admin endpoint: %s", errOut.String())
	}
	if code := realMain([]string{"status", "-a", "nonsense"}, &out, &errOut); code != 2 {
		t.Fatalf("bad -a: exit %d, want 2", code)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 1536: "1.5KiB", 5 << 30: "5.0GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// `socksgate status -c FILE` reads the admin endpoint's secret from the config and sends it.
func TestStatusSendsTheConfiguredSecret(t *testing.T) {
	srv := httptest.NewServer(admin.Guarded(admin.Handler(statusSource{}, "test"), admin.Access{Secret: "s3cret"}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	var out, errOut bytes.Buffer
	if code := realMain([]string{"status", "-a", addr}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "401") {
		t.Fatalf("without the secret: exit %d: %s", code, errOut.String())
	}
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("admin: {listen: \""+addr+"\", secret: s3cret}\nlisten: {http: [], socks: []}\nlan: {interfaces: [eth9]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := realMain([]string{"status", "-c", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("with -c: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "FLOWS (1)") {
		t.Errorf("output: %s", out.String())
	}
}
