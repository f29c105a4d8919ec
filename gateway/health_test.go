package gateway

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/nat"
)

// failingReader is a transparent UDP listener whose socket fails.
type failingReader struct{ err error }

func (r failingReader) ReadDatagram([]byte) (int, netip.AddrPort, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, netip.AddrPort{}, r.err
}

// The transparent UDP listener that stops with an error is reported on /healthz (503, with the
// listener and the reason) until it is opened again; one closed on purpose is not.
func TestHealthzReportsTheTransparentUDPListenerStopped(t *testing.T) {
	h := &listenerHealth{}
	srv := httptest.NewServer(admin.Handler(AdminSource{G: &Gateway{}, Health: liveHealth{&Gateway{}}, Listeners: h}, "test"))
	defer srv.Close()
	healthz := func() (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	name := transparentUDPName(12345)

	serveUDPTable(&nat.UDPTable{}, failingReader{errors.New("recvmsg: boom")}, log, h, name)
	code, body := healthz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "transparent udp [::]:12345 stopped") || !strings.Contains(body, "boom") {
		t.Fatalf("/healthz with the UDP listener stopped: %d %q", code, body)
	}
	h.forget(name) // opened again by a reload
	if code, body := healthz(); code != http.StatusOK {
		t.Fatalf("/healthz once it is open again: %d %q", code, body)
	}

	serveUDPTable(&nat.UDPTable{}, failingReader{io.ErrClosedPipe}, log, h, name) // not the listener's close: down
	serveUDPTable(&nat.UDPTable{}, failingReader{net.ErrClosed}, log, h, transparentUDPName(1))
	if _, body := healthz(); strings.Contains(body, "[::]:1 ") {
		t.Fatalf("a listener closed on purpose is reported down: %q", body)
	}
}
