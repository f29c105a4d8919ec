//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/tests/netlab"
)

const lanMAC = "02:00:5e:10:00:20"

const slowPort = 8081

// serveSlow runs an HTTP server in wan on slowPort: "/slow?n=N" sends N bytes, 32 KiB every
// 50ms, so that a download stays live for a while whatever the buffers.
func serveSlow(t *testing.T, tp *netlab.Topology) {
	ln := tp.WAN.Listen("tcp", fmt.Sprintf("[::]:%d", slowPort))
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		chunk := make([]byte, 32<<10)
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			n -= k
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond): // the server's pace, not a test's wait
			}
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// devicesGet reads the admin endpoint from inside gw.
func devicesGet(t *testing.T, tp *netlab.Topology, addr, path string, v any) string {
	t.Helper()
	out, err := curl(tp.GW, "http://"+addr+path)
	if err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, out)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, out)
		}
	}
	return out
}

func lanDevice(t *testing.T, tp *netlab.Topology, addr string) (admin.Device, bool) {
	var v struct{ Devices []admin.Device }
	devicesGet(t, tp, addr, "/devices", &v)
	for _, d := range v.Devices {
		if d.MAC == lanMAC {
			return d, true
		}
	}
	return admin.Device{}, false
}

// A lan host with a known MAC downloads slowly through socksgate: /devices shows its MAC with
// the name from a dnsmasq lease file and bytes growing while the download runs (the sampler,
// not the flow's end), /flows shows the flow with its device, a src_mac rule routes it (direct,
// while everything else goes through the proxy), and a restart keeps the totals.
func TestDevicesCountALANHostWhileItDownloads(t *testing.T) {
	needBin(t, "curl", "microsocks")
	tp := netlab.NewTopology(t)
	serveSlow(t, tp)
	startMicrosocks(t, tp, "", "")
	tp.LAN.MustRun("ip", "link", "set", "dev", netlab.LANIf, "address", lanMAC)
	state := t.TempDir()
	leases := writeFile(t, "dhcp.leases", fmt.Sprintf("%d %s %s lanhost 01:%s\n", time.Now().Add(time.Hour).Unix(), lanMAC, netlab.LAN4, lanMAC))
	const adminAddr = "127.0.0.1:9093"
	cfg := gatewayConfig("socks5://"+netlab.Proxy4+":1080", fmt.Sprintf(`admin: %q
state_dir: %q
devices: {leases: [%q], sample: 1s, reverse_dns: false}
rules:
  - {name: other-device, device: [someone-else], action: block}
  - {name: by-mac, src_mac: [%q], dst_ports: [%d], action: direct}
  - {name: rest, action: proxy, upstream: main}
`, adminAddr, state, leases, lanMAC, slowPort))
	// A damaged store (here: not a state file at all) never stops a start, and an earlier
	// version's bbolt store is renamed aside.
	if err := os.WriteFile(filepath.Join(state, "devices.db"), []byte("bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "devices.json"), []byte(strings.Repeat("garbage ", 2000)), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startSocksgate(t, tp.GW, cfg)
	if !gw.WaitOutput("moved aside", 5*time.Second) {
		t.Errorf("no warning that the damaged store was moved aside:\n%s", gw.Output())
	}
	if m, _ := filepath.Glob(filepath.Join(state, "devices.json.corrupt-*")); len(m) != 1 {
		t.Errorf("damaged store moved aside: %v", m)
	}
	if _, err := os.Stat(filepath.Join(state, "devices.db.old")); err != nil || !strings.Contains(gw.Output(), "devices.db") {
		t.Errorf("old store not renamed aside with a warning (%v):\n%s", err, gw.Output())
	}

	// A download of 3 MB that the server sends at about 640 kB/s: five seconds of a live flow.
	const size = 3 << 20
	dl := tp.LAN.Start("curl", "-sS", "-o", "/dev/null", "--max-time", "60", fmt.Sprintf("http://%s:%d/slow?n=%d", netlab.WAN4, slowPort, size))
	running := func() bool { exited, _ := dl.Wait(time.Millisecond); return !exited } // not 0: a ready timer may win over an exit

	var first admin.Device
	if !waitFor(20*time.Second, func() bool {
		d, ok := lanDevice(t, tp, adminAddr)
		first = d
		return ok && d.Today.Down > 64<<10
	}) {
		t.Fatalf("the device's bytes did not grow during the download: %+v\n%s", first, gw.Output())
	}
	if !running() {
		t.Fatalf("the download ended before its bytes were seen: the sampler did not count it (%+v)", first)
	}
	if first.Name != "lanhost" || first.NameFrom != "dhcp" || !strings.Contains(strings.Join(first.Addresses, " "), netlab.LAN4) {
		t.Errorf("device = %+v, want the lease's name and its address", first)
	}
	var second admin.Device
	if !waitFor(20*time.Second, func() bool {
		second, _ = lanDevice(t, tp, adminAddr)
		return second.Today.Down > first.Today.Down+64<<10
	}) || !running() {
		t.Fatalf("bytes did not grow again while the download ran: %+v then %+v (running %v)", first, second, running())
	}
	if second.Flows < 1 {
		t.Errorf("flows = %d during the download", second.Flows)
	}
	var flows []admin.Flow
	devicesGet(t, tp, adminAddr, "/flows", &flows)
	found := false
	for _, f := range flows {
		if f.MAC == lanMAC {
			found = true
			if f.Device != "lanhost" || f.Rule != "by-mac" || f.Action != "direct" {
				t.Errorf("flow = %+v, want device lanhost, rule by-mac, direct", f)
			}
		}
	}
	if !found {
		t.Errorf("no flow with the device's MAC in /flows: %+v", flows)
	}
	if exited, err := dl.Wait(60 * time.Second); !exited || err != nil {
		t.Fatalf("download: exited %v, %v: %s", exited, err, dl.Output())
	}
	var done admin.Device
	if !waitFor(10*time.Second, func() bool {
		done, _ = lanDevice(t, tp, adminAddr)
		return done.Total.Down >= size
	}) {
		t.Fatalf("after the download: %+v, want at least %d bytes down", done, size)
	}
	if done.Total.Down > size+size/10 || done.Total.Up == 0 {
		t.Errorf("after the download: %+v: counted twice?", done)
	}
	// The host's IPv6 address is the same device.
	if out, err := curl(tp.LAN, "-o", "/dev/null", fmt.Sprintf("http://[%s]:%d/slow?n=1000", netlab.WAN6, slowPort)); err != nil {
		t.Fatalf("curl over IPv6: %v: %s", err, out)
	}
	if !waitFor(10*time.Second, func() bool {
		done, _ = lanDevice(t, tp, adminAddr)
		return strings.Contains(strings.Join(done.Addresses, " "), netlab.LAN6) && done.Total.Down >= size+1000
	}) {
		t.Errorf("the IPv6 flow is not the device's: %+v", done)
	}
	var all struct{ Devices []admin.Device }
	devicesGet(t, tp, adminAddr, "/devices", &all)
	if len(all.Devices) != 1 {
		t.Errorf("devices = %+v, want the one lan host (its IPv4 and IPv6 addresses folded)", all.Devices)
	}
	metrics := devicesGet(t, tp, adminAddr, "/metrics", nil)
	if !strings.Contains(metrics, `socksgate_device_bytes_total{device="lanhost",direction="down"}`) {
		t.Errorf("no device series in /metrics")
	}
	// A restart keeps the totals.
	stopSocksgate(t, tp.GW, gw)
	if m, _ := filepath.Glob(filepath.Join(state, "devices.json")); len(m) != 1 {
		t.Fatalf("no devices.json in the state directory")
	}
	gw = startSocksgate(t, tp.GW, cfg)
	again, ok := lanDevice(t, tp, adminAddr)
	if !ok || again.Total != done.Total || again.Today != done.Today || again.Name != "lanhost" {
		t.Errorf("after a restart: %+v (found %v), want the totals %+v", again, ok, done.Total)
	}
	stopSocksgate(t, tp.GW, gw)
}
