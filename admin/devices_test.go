package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type deviceFake struct {
	fakeSource
	devs  []Device
	bytes []DeviceBytes
}

func (d deviceFake) Devices() []Device          { return d.devs }
func (d deviceFake) DeviceBytes() []DeviceBytes { return d.bytes }

// /devices has the contract's shape, field by field; the metric has one series a device and
// direction.
func TestDevicesEndpointShape(t *testing.T) {
	seen := time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)
	src := deviceFake{
		fakeSource: testSource,
		devs: []Device{{MAC: "aa:bb:cc:dd:ee:ff", Name: "laptop", NameFrom: "dhcp", Addresses: []string{"192.168.1.20", "fd00::20"},
			Flows: 3, LastSeen: seen, Today: Traffic{1, 2}, Month: Traffic{3, 4}, Total: Traffic{5, 6}},
			{MAC: "aa:bb:cc:dd:ee:01", LastSeen: seen}},
		bytes: []DeviceBytes{{Device: "laptop", Total: Traffic{5, 6}}, {Device: "other", Total: Traffic{7, 8}}},
	}
	code, body := get(t, Handler(src, "v"), "/devices")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var v map[string][]map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	d := v["devices"][0]
	want := map[string]any{
		"mac": "aa:bb:cc:dd:ee:ff", "name": "laptop", "name_from": "dhcp",
		"addresses": []any{"192.168.1.20", "fd00::20"}, "flows": 3.0, "last_seen": "2026-12-02T18:00:00Z",
		"today": map[string]any{"up": 1.0, "down": 2.0}, "month": map[string]any{"up": 3.0, "down": 4.0},
		"total": map[string]any{"up": 5.0, "down": 6.0},
	}
	if len(d) != len(want) {
		t.Errorf("fields %v, want %v", d, want)
	}
	for k, w := range want {
		g, _ := json.Marshal(d[k])
		wj, _ := json.Marshal(w)
		if string(g) != string(wj) {
			t.Errorf("%s = %s, want %s", k, g, wj)
		}
	}
	if e := v["devices"][1]; e["name"] != "" || e["name_from"] != "" || e["addresses"] == nil {
		t.Errorf("unnamed device: %v", e)
	}
	_, metrics := get(t, Handler(src, "v"), "/metrics")
	for _, w := range []string{
		`socksgate_device_bytes_total{device="laptop",direction="up"} 5`,
		`socksgate_device_bytes_total{device="other",direction="down"} 8`,
	} {
		if !strings.Contains(metrics, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
	// A source without devices has neither.
	if code, _ := get(t, Handler(testSource, "v"), "/devices"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Errorf("/devices without devices: %d", code)
	}
	rec := httptest.NewRecorder()
	Handler(testSource, "v").ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if strings.Contains(rec.Body.String(), "socksgate_device_bytes_total") {
		t.Error("device series without devices")
	}
}
