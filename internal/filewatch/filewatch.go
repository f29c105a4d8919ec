// Package filewatch tells when a file has changed: written in place, replaced by a rename
// (how package managers and download scripts put a new version in place), created or removed.
// It watches the file's directory, not the file, so a replacement is seen however it is made,
// and a file that does not exist yet is seen when it appears. A path that is a symbolic link
// is followed: its target's directory is watched too, and a link on the way that is pointed
// elsewhere (how Kubernetes updates a mounted ConfigMap) is a change.
package filewatch

import (
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle is how long a file must be quiet before Watch reports it changed: a writer that
// copies a file in pieces is reported once, after its last piece.
const Settle = 250 * time.Millisecond

// Watch calls changed, from a goroutine of its own, each time the file at path has changed
// and then been quiet for settle (Settle when 0). Events on other files of the directory are
// ignored. stop ends the watch; changed is not called once stop has returned. The directory
// must exist. changed must not call stop.
func Watch(path string, settle time.Duration, changed func()) (stop func(), err error) {
	if settle <= 0 {
		settle = Settle
	}
	path = filepath.Clean(path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := w.Add(filepath.Dir(path)); err != nil {
		w.Close()
		return nil, err
	}
	target := follow(w, path, "")
	linked := target != path // path is, or was, a symbolic link
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
	)
	fire := func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			changed() // under mu: stop waits for a call in progress
		}
	}
	kick := func() {
		mu.Lock()
		defer mu.Unlock()
		if timer == nil {
			timer = time.AfterFunc(settle, fire)
		} else {
			timer.Reset(settle)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Op == fsnotify.Chmod {
					continue
				}
				name := filepath.Clean(ev.Name)
				if name != path && !linked {
					continue
				}
				// Through a link, any event of the watched directories may have repointed it.
				t := follow(w, path, target)
				linked = linked || t != path
				if name == path || name == target || t != target {
					target = t
					kick()
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				// An overflowed event queue loses events: say the file changed, to be sure.
				kick()
			}
		}
	}()
	return func() {
		w.Close()
		<-done
		mu.Lock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}, nil
}

// follow is where path leads through symbolic links (path itself when it is none, or when it
// leads nowhere yet), with the directory of a new target watched; was is the last answer.
func follow(w *fsnotify.Watcher, path, was string) string {
	t, err := filepath.EvalSymlinks(path)
	if err != nil {
		return path
	}
	if t != was && t != path {
		w.Add(filepath.Dir(t)) // a failure leaves the link's own directory watched
	}
	return t
}
