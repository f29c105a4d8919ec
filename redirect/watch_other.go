//go:build !linux

package redirect

// Watcher is a running Watch (Linux only).
type Watcher struct{}

// Stop does nothing.
func (w *Watcher) Stop() {}

// Watch fails: kernel steering needs Linux.
func (r *Ruleset) Watch(report func(WatchEvent)) (*Watcher, error) { return nil, errNotLinux }
