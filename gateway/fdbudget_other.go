//go:build !linux

package gateway

// openFDs is nil off Linux: the budget counts its charges only.
var openFDs func() (int, error)
