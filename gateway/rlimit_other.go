//go:build !linux

package gateway

import "github.com/sirupsen/logrus"

// raiseFileLimit is Linux-only; elsewhere the limit in force is unknown (0).
func raiseFileLimit(*logrus.Logger) uint64 { return 0 }
