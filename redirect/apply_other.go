//go:build !linux

package redirect

import (
	"errors"
	"net/netip"
	"syscall"
)

var errNotLinux = errors.New("kernel steering needs Linux (nftables and policy routing)")

// Option changes where or how the kernel state is managed.
type Option func(*options)

type options struct{ netns int }

// WithNetNS targets the network namespace behind fd (Linux only).
func WithNetNS(fd int) Option { return func(o *options) { o.netns = fd } }

// Ruleset is installed kernel state (Linux only).
type Ruleset struct{}

// Apply fails: kernel steering needs Linux.
func Apply(s Spec, opts ...Option) (*Ruleset, error) { return nil, errNotLinux }

// Spec returns the zero Spec.
func (r *Ruleset) Spec() Spec { return Spec{} }

// Replace fails: kernel steering needs Linux.
func (r *Ruleset) Replace(s Spec) error { return errNotLinux }

// Close does nothing.
func (r *Ruleset) Close() error { return nil }

// Remove fails: kernel steering needs Linux.
func Remove(s Spec, opts ...Option) error { return errNotLinux }

// InterfacePrefixes fails: it needs Linux netlink.
func InterfacePrefixes(names []string, opts ...Option) ([]netip.Prefix, error) {
	return nil, errNotLinux
}

// MarkControl returns a Control hook that always fails: SO_MARK is Linux only.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error { return errNotLinux }
}

// Offload is a stub for non-Linux builds.
func (r *Ruleset) Offload() ([]string, error) { return nil, errNotLinux }
