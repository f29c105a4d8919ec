//go:build !linux

package redirect

import "context"

// Watch fails: kernel steering needs Linux.
func (r *Ruleset) Watch(ctx context.Context, report func(WatchEvent)) error { return errNotLinux }
