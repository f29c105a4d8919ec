// Package filewatch tells when a file has changed: written in place, replaced by a rename
// (how package managers and download scripts put a new version in place), created or removed.
// It watches the file's directory, not the file, so a replacement is seen however it is made,
// and a file that does not exist yet is seen when it appears.
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
				if filepath.Clean(ev.Name) != path || ev.Op == fsnotify.Chmod {
					continue
				}
				kick()
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
