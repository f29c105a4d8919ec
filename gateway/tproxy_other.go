//go:build !linux

package gateway

import (
	"errors"
	"syscall"
)

func transparentControl(string, string, syscall.RawConn) error {
	return errors.New("transparent sockets need Linux")
}
