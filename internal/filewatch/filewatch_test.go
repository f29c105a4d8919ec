package filewatch

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// watch starts a watch of dir/name that counts its calls.
func watch(t *testing.T, path string) *atomic.Int32 {
	t.Helper()
	var n atomic.Int32
	stop, err := Watch(path, 200*time.Millisecond, func() { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return &n
}

func waitCount(t *testing.T, n *atomic.Int32, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n.Load() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond) // and no more than want
	if got := n.Load(); got != want {
		t.Fatalf("changed called %d times, want %d", got, want)
	}
}

func TestWatchSeesRenameIntoPlaceWritesAndCreation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "db.mmdb")
	n := watch(t, path)

	// Created: the file did not exist when the watch began.
	if err := os.WriteFile(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitCount(t, n, 1)

	// Replaced by a rename, as a download script puts a new version in place.
	tmp := filepath.Join(dir, ".db.mmdb.tmp")
	if err := os.WriteFile(tmp, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitCount(t, n, 2)

	// Written in place in pieces: one call, after the last piece.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.Write([]byte("piece"))
		time.Sleep(5 * time.Millisecond)
	}
	f.Close()
	waitCount(t, n, 3)
}

func TestWatchIgnoresOtherFilesAndStops(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "db.mmdb")
	var n atomic.Int32
	stop, err := Watch(path, 20*time.Millisecond, func() { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644)
	time.Sleep(150 * time.Millisecond)
	if n.Load() != 0 {
		t.Fatalf("a change to another file was reported")
	}
	stop()
	os.WriteFile(path, []byte("x"), 0o644)
	time.Sleep(150 * time.Millisecond)
	if n.Load() != 0 {
		t.Fatalf("changed called after stop")
	}
}

func TestWatchNeedsTheDirectory(t *testing.T) {
	if _, err := Watch(filepath.Join(t.TempDir(), "missing", "db.mmdb"), 0, func() {}); err == nil {
		t.Fatal("watching a file in a directory that does not exist: no error")
	}
}
