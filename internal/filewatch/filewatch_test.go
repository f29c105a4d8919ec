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

// A path that is a symbolic link is followed: its target replaced in a directory of its own
// (/etc/socksgate/country.mmdb -> /var/lib/GeoIP/...: geoipupdate renames into the latter),
// and the link swapped the way Kubernetes updates a mounted ConfigMap (f -> ..data/f, and
// ..data renamed over to point at a new directory).
func TestWatchFollowsSymbolicLinks(t *testing.T) {
	data, conf := t.TempDir(), t.TempDir()
	target := filepath.Join(data, "db.mmdb")
	os.WriteFile(target, []byte("one"), 0o644)
	link := filepath.Join(conf, "db.mmdb")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	n := watch(t, link)
	tmp := filepath.Join(data, ".db.mmdb.tmp")
	os.WriteFile(tmp, []byte("two"), 0o644)
	if err := os.Rename(tmp, target); err != nil {
		t.Fatal(err)
	}
	waitCount(t, n, 1)
	os.Remove(target) // and put back
	waitCount(t, n, 2)
	os.WriteFile(target, []byte("three"), 0o644)
	waitCount(t, n, 3)

	k := t.TempDir()
	for _, v := range []string{"..v1", "..v2"} {
		os.Mkdir(filepath.Join(k, v), 0o755)
		os.WriteFile(filepath.Join(k, v, "f"), []byte(v), 0o644)
	}
	if os.Symlink("..v1", filepath.Join(k, "..data")) != nil || os.Symlink("..data/f", filepath.Join(k, "f")) != nil {
		t.Fatal("symlink")
	}
	m := watch(t, filepath.Join(k, "f"))
	if os.Symlink("..v2", filepath.Join(k, "..data_tmp")) != nil {
		t.Fatal("symlink")
	}
	if err := os.Rename(filepath.Join(k, "..data_tmp"), filepath.Join(k, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(k, "..v1"))
	waitCount(t, m, 1)
}
