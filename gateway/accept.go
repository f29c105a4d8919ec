package gateway

import (
	"errors"
	"syscall"
)

// isTemporaryAccept reports accept errors that pass: out of file descriptors, or a client that
// gave up before we took its connection.
func isTemporaryAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
