//go:build linux

// Package netlab builds throwaway network namespaces for end-to-end tests: hosts joined by veth
// pairs, processes started inside them, and sockets opened inside them from the test process.
// Everything a Lab creates is removed in the test's cleanup, even when the test fails; nothing
// is ever configured in the machine's own namespace.
package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socksgate/socksgate/internal/testutil"
	"github.com/vishvananda/netns"
)

var seq atomic.Int64

// Lab is a set of namespaces owned by one test.
type Lab struct {
	t      testing.TB
	prefix string
}

// NS is one network namespace of a Lab.
type NS struct {
	Name string // the name `ip netns` knows it by
	Role string // the short name the test gave it
	lab  *Lab
}

// New returns an empty lab. It skips the test, with one line saying why, when not running as
// root or when the `ip` command is missing.
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("netlab: CI must run the end-to-end tests as root")
		}
		t.Skip("netlab: needs root to create network namespaces (run `sudo make test`)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netlab: the `ip` command (iproute2) is not installed")
	}
	return &Lab{t: t, prefix: fmt.Sprintf("sgt%d-%d", os.Getpid(), seq.Add(1))}
}

// NS creates a namespace with loopback up; it is deleted in cleanup after every process started
// in it has been killed.
func (l *Lab) NS(role string) *NS {
	l.t.Helper()
	n := &NS{Name: l.prefix + "-" + role, Role: role, lab: l}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		l.t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	l.t.Cleanup(n.destroy)
	n.MustRun("ip", "link", "set", "lo", "up")
	// No duplicate address detection: lab addresses are unique by construction, and a
	// tentative link-local address stalls neighbour discovery for the first seconds.
	n.MustRun("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return n
}

func (n *NS) destroy() {
	if err := destroyNS(n.Name); err != nil {
		n.lab.t.Logf("%v", err)
	}
}

// SweepStale removes the namespaces (and what runs in them) of earlier runs that did not get to
// clean up: killed, or stopped by the test timeout, which runs no cleanup. Only names of this
// package's form whose creating process is gone are touched. It needs root; without, it does
// nothing.
func SweepStale() {
	if os.Geteuid() != 0 {
		return
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		var pid, n int
		var role string
		if k, _ := fmt.Sscanf(name, "sgt%d-%d-%s", &pid, &n, &role); k != 3 || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			continue // its run is still going (or the pid is someone else's now: leave it)
		}
		if err := destroyNS(name); err != nil {
			fmt.Fprintln(os.Stderr, "netlab:", err)
		} else {
			fmt.Fprintln(os.Stderr, "netlab: removed the stale namespace", name)
		}
	}
}

// destroyNS kills whatever lives in the namespace (`ip netns del` alone would leave it
// running), then deletes it.
func destroyNS(name string) error {
	for range 50 {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			var pid int
			fmt.Sscan(p, &pid)
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, out)
	}
	return nil
}

// Link joins a and b with a veth pair named aIf inside a and bIf inside b, both up.
func (l *Lab) Link(a *NS, aIf string, b *NS, bIf string) {
	l.t.Helper()
	a.MustRun("ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	a.MustRun("ip", "link", "set", aIf, "up")
	b.MustRun("ip", "link", "set", bIf, "up")
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(args ...string) string {
	n.lab.t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		n.lab.t.Fatalf("[%s] %s: %v\n%s", n.Role, strings.Join(args, " "), err, out)
	}
	return out
}

// Addr adds addresses to an interface; IPv6 ones get nodad so they work at once.
func (n *NS) Addr(ifname string, cidrs ...string) {
	n.lab.t.Helper()
	for _, c := range cidrs {
		args := []string{"ip", "addr", "add", c, "dev", ifname}
		if strings.Contains(c, ":") {
			args = append(args, "nodad")
		}
		n.MustRun(args...)
	}
}

// Route adds a route: Route("default", "via", "10.0.0.1").
func (n *NS) Route(args ...string) {
	n.lab.t.Helper()
	ip := "ip"
	if len(args) > 2 && strings.Contains(args[2], ":") || strings.Contains(args[0], ":") {
		n.MustRun(append([]string{ip, "-6", "route", "add"}, args...)...)
		return
	}
	n.MustRun(append([]string{ip, "route", "add"}, args...)...)
}

// Forwarding turns on IPv4 and IPv6 forwarding inside the namespace.
func (n *NS) Forwarding() {
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
}

// Do runs fn on an OS thread that has entered the namespace; sockets fn creates stay in it for
// their whole life, whichever goroutine uses them later.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked and so dies with this goroutine, rather than returning to
		// the pool in the wrong namespace if restoring failed.
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Listen opens a listener inside the namespace; it is closed in cleanup.
func (n *NS) Listen(network, addr string) net.Listener {
	n.lab.t.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) { ln, err = net.Listen(network, addr); return })
	if err != nil {
		n.lab.t.Fatalf("[%s] listen %s %s: %v", n.Role, network, addr, err)
	}
	n.lab.t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacket opens a UDP socket inside the namespace; it is closed in cleanup.
func (n *NS) ListenPacket(network, addr string) net.PacketConn {
	n.lab.t.Helper()
	var pc net.PacketConn
	err := n.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return })
	if err != nil {
		n.lab.t.Fatalf("[%s] listen %s %s: %v", n.Role, network, addr, err)
	}
	n.lab.t.Cleanup(func() { pc.Close() })
	return pc
}

// Dial connects from inside the namespace.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return
	})
	return c, err
}

// WaitListening polls until a TCP connect to addr from inside the namespace succeeds.
func (n *NS) WaitListening(addr string, within time.Duration) {
	n.lab.t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		var c net.Conn
		c, err = n.Dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.lab.t.Fatalf("[%s] nothing listens on %s after %v: %v", n.Role, addr, within, err)
}

// Proc is a process running inside a namespace, with its output collected.
type Proc struct {
	Cmd  *exec.Cmd
	name string
	out  *testutil.SyncBuffer
	done chan struct{}
	err  error
}

// Start starts a process inside the namespace. It is killed in cleanup, and its output is
// logged if the test failed.
func (n *NS) Start(args ...string) *Proc {
	n.lab.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	p := &Proc{Cmd: cmd, name: n.Role + ":" + args[0], out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// Its own process group, so Kill reaches the children of forking daemons (danted, squid),
	// and a bound on waiting for output pipes those children may still hold.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		n.lab.t.Fatalf("[%s] start %v: %v", n.Role, args, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	n.lab.t.Cleanup(func() {
		p.Kill()
		if n.lab.t.Failed() {
			n.lab.t.Logf("output of %s:\n%s", p.name, p.Output())
		}
	})
	return p
}

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Kill kills the process (SIGKILL) and waits for it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	p.Cmd.Process.Kill()
	<-p.done
}

// Wait waits up to d for the process to exit; exited is false if it is still running.
func (p *Proc) Wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// WaitOutput waits until the process has printed s.
func (p *Proc) WaitOutput(s string, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), s) {
			return true
		}
		select {
		case <-p.done:
			return strings.Contains(p.Output(), s)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}
