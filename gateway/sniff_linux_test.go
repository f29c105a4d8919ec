package gateway

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/route"
)

// queued reports how many bytes c has waiting to be read (FIONREAD), without taking them.
func queued(t *testing.T, c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

// Bytes that are already there when sniffing starts are read without waiting: a whole request
// gives its name at once, a part of one is completed by what follows, within the timeout. The
// socket is left without a deadline either way.
func TestSniffNameWhatIsAlreadyThere(t *testing.T) {
	req := []byte("GET / HTTP/1.1\r\nHost: there.test\r\n\r\n")
	for _, tc := range []struct {
		name       string
		first      []byte
		rest       []byte
		wantHost   string
		wantLength int
	}{
		{"whole request", req, nil, "there.test", len(req)},
		{"part, then the rest", req[:10], req[10:], "there.test", len(req)},
		{"neither TLS nor HTTP", []byte("SSH-2.0-x\r\n"), nil, "", 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := testutil.TCPPair(t)
			client.Write(tc.first)
			testutil.WaitUntil(t, "the first bytes queued", func() bool { return queued(t, server) == len(tc.first) })
			if tc.rest != nil {
				go func() {
					time.Sleep(20 * time.Millisecond)
					client.Write(tc.rest)
				}()
			}
			f := route.Flow{Network: route.TCP, Dst: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), 80)}
			bp := sniffTestGateway().sniffName(server, &f)
			got := sniffed(bp)
			if f.Host != tc.wantHost || len(got) != tc.wantLength || !bytes.HasPrefix(req, got) && tc.wantHost != "" {
				t.Fatalf("host %q and %d bytes %q, want %q and %d", f.Host, len(got), got, tc.wantHost, tc.wantLength)
			}
			putSniffed(bp)
			client.Write([]byte("x"))
			server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := server.Read(make([]byte, 1)); err != nil {
				t.Fatalf("read after sniffing: %v", err)
			}
		})
	}
}
