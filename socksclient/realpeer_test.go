package socksclient

// Tests against real SOCKS servers (microsocks, dante) started on loopback as child processes.
// Each test skips with one line when its server binary is not installed.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/socksgate/socksgate/socks"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPeer runs a server binary in its own process group, waits until addr accepts
// connections, and returns a function that stops it (also run in t.Cleanup). It skips the test
// when the binary is missing.
func startPeer(t *testing.T, addr, bin string, args ...string) (stop func()) {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("%s not installed: %v", bin, err)
	}
	out := &testutil.SyncBuffer{}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // the group we created: dante forks
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", bin, out)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return stop
		}
		select {
		case <-exited:
			t.Fatalf("%s exited before listening on %s:\n%s", bin, addr, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after 10s:\n%s", bin, addr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tcpEcho serves an echo on a loopback address ("127.0.0.1:0" or "[::1]:0") and returns it.
func tcpEcho(t *testing.T, network, addr string) *net.TCPAddr {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

// udpEcho serves a UDP echo on 127.0.0.1 and returns its address.
func udpEcho(t *testing.T) *net.UDPAddr {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr)
}

// roundTrip dials address through d and checks that a message comes back from the echo.
func roundTrip(t *testing.T, d *Dialer, address string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		t.Fatalf("dial %s via %s: %v", address, d, err)
	}
	defer c.Close()
	msg := []byte("hello through " + d.String())
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo via %s = %q, %v", d, got, err)
	}
}

func startMicrosocks(t *testing.T, args ...string) string {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	_, port, _ := net.SplitHostPort(addr)
	startPeer(t, addr, "microsocks", append([]string{"-i", "127.0.0.1", "-p", port}, args...)...)
	return addr
}

func TestMicrosocksConnect(t *testing.T) {
	proxy := startMicrosocks(t)
	echo4 := tcpEcho(t, "tcp4", "127.0.0.1:0")
	d := &Dialer{Address: proxy}
	t.Run("ipv4", func(t *testing.T) { roundTrip(t, d, echo4.String()) })
	t.Run("name", func(t *testing.T) { roundTrip(t, d, net.JoinHostPort("localhost", strconv.Itoa(echo4.Port))) })
	t.Run("ipv6", func(t *testing.T) {
		echo6 := tcpEcho(t, "tcp6", "[::1]:0")
		roundTrip(t, d, echo6.String())
	})
	t.Run("refused is a typed reply", func(t *testing.T) {
		closed := freePort(t)
		_, err := d.DialContext(context.Background(), "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(closed)))
		var re *ReplyError
		if !errors.As(err, &re) {
			t.Fatalf("err = %v, want *ReplyError", err)
		}
		t.Logf("microsocks refused with: %v", err)
	})
	t.Run("http", func(t *testing.T) {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "hello from "+r.Host)
		})}
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 10 * time.Second}
		resp, err := client.Get("http://" + l.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "hello from "+l.Addr().String() {
			t.Fatalf("body %q", body)
		}
	})
	t.Run("pipelined request is never answered", func(t *testing.T) {
		// Why Dialer.Pipeline is off by default: microsocks 1.0.3 reads the greeting, answers
		// it, and never reads the request that came with it.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := (&Dialer{Address: proxy, Pipeline: true}).DialContext(ctx, "tcp", echo4.String())
		if err == nil {
			c.Close()
			t.Fatal("microsocks answered a pipelined request: Pipeline could be safe with it now")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the deadline", err)
		}
	})
	t.Run("probe says no pipelining", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if ok, err := d.ProbePipelining(ctx); ok || err != nil {
			t.Fatalf("ProbePipelining = %v, %v; want false, nil", ok, err)
		}
	})
	t.Run("no udp associate", func(t *testing.T) {
		_, err := d.ListenPacket(context.Background())
		var re *ReplyError
		if !errors.As(err, &re) || re.Code != socks.ReplyCommandNotSupported {
			t.Fatalf("err = %v, want command not supported", err)
		}
	})
}

func TestMicrosocksUserPass(t *testing.T) {
	const user, pass = "gwuser", "gw pass!"
	proxy := startMicrosocks(t, "-u", user, "-P", pass)
	echo := tcpEcho(t, "tcp4", "127.0.0.1:0")
	t.Run("right credentials", func(t *testing.T) {
		roundTrip(t, &Dialer{Address: proxy, Username: user, Password: pass}, echo.String())
	})
	t.Run("wrong password", func(t *testing.T) {
		const wrong = "not-the-password"
		d := &Dialer{Address: proxy, Username: user, Password: wrong}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := d.DialContext(ctx, "tcp", echo.String())
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("err = %v, want ErrAuthFailed", err)
		}
		if bytes.Contains([]byte(err.Error()), []byte(wrong)) {
			t.Fatalf("error %q contains the password", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("auth failure took %v", el)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		_, err := (&Dialer{Address: proxy}).DialContext(context.Background(), "tcp", echo.String())
		if !errors.Is(err, ErrNoAcceptableMethods) {
			t.Fatalf("err = %v, want ErrNoAcceptableMethods", err)
		}
	})
}

// startDante writes a loopback-only dante config (no authentication, CONNECT and UDP ASSOCIATE
// allowed) and starts danted with it. It returns the proxy address and a stop function.
func startDante(t *testing.T) (string, func()) {
	t.Helper()
	if _, err := exec.LookPath("danted"); err != nil {
		t.Skipf("danted not installed: %v", err)
	}
	port := freePort(t)
	dir := t.TempDir()
	users := ""
	if os.Geteuid() == 0 {
		users = "user.privileged: root\nuser.unprivileged: nobody\n"
	}
	conf := fmt.Sprintf(`logoutput: stderr
internal: 127.0.0.1 port = %d
external: 127.0.0.1
socksmethod: none
clientmethod: none
%s
client pass {
	from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
	from: 127.0.0.0/8 to: 0.0.0.0/0
	command: connect udpassociate
	protocol: tcp udp
}
socks pass {
	from: 0.0.0.0/0 to: 127.0.0.0/8
	command: udpreply
	protocol: udp
}
`, port, users)
	path := filepath.Join(dir, "danted.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	stop := startPeer(t, addr, "danted", "-f", path, "-N", "1", "-p", filepath.Join(dir, "danted.pid"))
	return addr, stop
}

func TestDanteConnect(t *testing.T) {
	proxy, _ := startDante(t)
	echo := tcpEcho(t, "tcp4", "127.0.0.1:0")
	tests := []struct {
		name    string
		d       *Dialer
		address string
	}{
		{"socks5 ipv4", &Dialer{Address: proxy}, echo.String()},
		{"socks5 name", &Dialer{Address: proxy}, net.JoinHostPort("localhost", strconv.Itoa(echo.Port))},
		{"socks5 pipelined", &Dialer{Address: proxy, Pipeline: true}, echo.String()},
		{"socks4", &Dialer{Version: SOCKS4, Address: proxy, Username: "someone"}, echo.String()},
		{"socks4a with an ip literal", &Dialer{Version: SOCKS4A, Address: proxy}, echo.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { roundTrip(t, tt.d, tt.address) })
	}
	t.Run("probe says pipelining", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if ok, err := (&Dialer{Address: proxy}).ProbePipelining(ctx); !ok || err != nil {
			t.Fatalf("ProbePipelining = %v, %v; want true, nil", ok, err)
		}
	})
}

func TestDanteUDPAssociate(t *testing.T) {
	proxy, _ := startDante(t)
	echo := udpEcho(t)
	d := &Dialer{Address: proxy}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := d.ListenPacket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for i, to := range []net.Addr{
		echo,
		socks.Addr{Name: "localhost", Port: uint16(echo.Port)},
	} {
		msg := fmt.Sprintf("datagram %d to %v", i, to)
		if _, err := pc.WriteTo([]byte(msg), to); err != nil {
			t.Fatal(err)
		}
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read reply to %v: %v", to, err)
		}
		if string(buf[:n]) != msg {
			t.Fatalf("reply %q, want %q", buf[:n], msg)
		}
		if from.String() != echo.String() {
			t.Fatalf("reply from %v, want %v", from, echo)
		}
	}
	// Many datagrams in a row, none lost on loopback (allowing a little slack for UDP).
	const count = 200
	got := 0
	for i := range count {
		msg := []byte(strconv.Itoa(i))
		if _, err := pc.WriteTo(msg, echo); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		if bytes.Equal(buf[:n], msg) {
			got++
		}
	}
	if got < count*9/10 {
		t.Fatalf("%d of %d datagrams echoed", got, count)
	}
}

// TestDanteUDPAssociationEndsWithProxy stops dante and checks that the association notices.
func TestDanteUDPAssociationEndsWithProxy(t *testing.T) {
	proxy, stop := startDante(t)
	d := &Dialer{Address: proxy}
	pc, err := d.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	errc := make(chan error, 1)
	go func() {
		_, _, err := pc.ReadFrom(make([]byte, 100))
		errc <- err
	}()
	stop()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("ReadFrom returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("association still open 10s after the proxy stopped")
	}
}
