package sockmap

import (
	"errors"
	"fmt"
)

// ErrUnsupported is wrapped by every error Open returns: the kernel relay cannot run here and the
// caller should fall back to a userspace relay.
var ErrUnsupported = errors.New("kernel relay unavailable")

// OpenError says which step of Open failed and why, in words an operator can act on.
type OpenError struct {
	Step string // "create sockmap", "load verdict program", ...
	Hint string // what is probably missing: BPF, sockmap support, permission
	Err  error
}

func (e *OpenError) Error() string {
	s := fmt.Sprintf("%v: %s: %v", ErrUnsupported, e.Step, e.Err)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *OpenError) Unwrap() []error { return []error{ErrUnsupported, e.Err} }

// ErrNotEstablished is wrapped by Add when a socket is no longer in the ESTABLISHED state (it has
// received or sent a FIN, or was reset): the kernel accepts only established TCP sockets in a sockmap,
// so such a flow must be relayed in userspace.
var ErrNotEstablished = errors.New("socket not established: relay this flow in userspace")
