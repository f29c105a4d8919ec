package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

func runMain(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = realMain(args, &o, &e)
	return code, o.String(), e.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckReportsEveryProblemWithFieldPathAndFails(t *testing.T) {
	p := writeConfig(t, `upstreams:
  - {name: a, url: "sock5://10.0.0.1:1080"}
rules:
  - {action: proxy, upstream: nope}
`)
	code, _, stderr := runMain("check", "-c", p)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{`upstreams[0].url: unsupported scheme "sock5"`, `rules[0].upstream: no upstream or group named "nope"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func TestCheckAcceptsExamples(t *testing.T) {
	files, _ := filepath.Glob("../../configs/examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example configs found")
	}
	for _, f := range files {
		if data, _ := os.ReadFile(f); strings.Contains(string(data), "geoip:") {
			f = withTestGeoIP(t, f, string(data)) // check opens the database
			if f == "" {
				continue
			}
		}
		if code, out, errOut := runMain("check", "-sets=warn", "-c", f); code != 0 || !strings.Contains(out, ": ok") {
			t.Errorf("check %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
}

func TestCheckNeedsAFile(t *testing.T) {
	if code, _, _ := runMain("check"); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
}

func TestRulesPrintsTheTableWithoutRoot(t *testing.T) {
	p := writeConfig(t, "lan: {interfaces: [lan9]}\ntransparent: {tcp_port: 4321}\n")
	code, out, stderr := runMain("rules", "-c", p)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"table inet socksgate", `"lan9"`, "redirect to :4321"} {
		if !strings.Contains(out, want) {
			t.Errorf("rules output lacks %q:\n%s", want, out)
		}
	}
}

func TestUnknownCommandIsAUsageError(t *testing.T) {
	if code, _, stderr := runMain("frobnicate"); code != 2 || !strings.Contains(stderr, "usage") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestVersionPrints(t *testing.T) {
	if code, out, _ := runMain("version"); code != 0 || !strings.HasPrefix(out, "socksgate ") {
		t.Fatalf("exit %d, out %q", code, out)
	}
}

func TestCheckWarnsThatRelayKernelIsAuto(t *testing.T) {
	p := writeConfig(t, "relay: kernel\n")
	code, out, errOut := runMain("check", "-c", p)
	if code != 0 || !strings.Contains(out, `warning: relay: "kernel" is no longer available`) || !strings.Contains(out, "relay: auto") {
		t.Errorf("check: exit %d\n%s%s", code, out, errOut)
	}
}

// run -log-format takes text or json and nothing else; the other commands do not take it.
func TestLogFormatFlag(t *testing.T) {
	code, _, stderr := runMain("run", "-log-format", "xml")
	if code != 2 || !strings.Contains(stderr, `must be one of text, json (got "xml")`) {
		t.Fatalf("run -log-format xml: exit %d, stderr:\n%s", code, stderr)
	}
	if code, _, _ := runMain("check", "-log-format", "json", "-c", writeConfig(t, "")); code != 2 {
		t.Fatalf("check -log-format: exit %d, want 2", code)
	}
}

// The JSON logger writes one object per line, with logrus's field names.
func TestJSONLoggerWritesObjects(t *testing.T) {
	var b bytes.Buffer
	cfg := configs.Default()
	cfg.Log.Format = configs.LogJSON
	newLogger(cfg, &b).WithField("rule", "r").Info("flow")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["msg"] != "flow" || m["level"] != "info" || m["rule"] != "r" {
		t.Fatalf("%q: %v %v", b.String(), m, err)
	}
}
