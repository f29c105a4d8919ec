package state

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReadRoundTrip(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "sub"))
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"first", "", "second, longer than the first"} {
		if err := d.WriteFile("x.json", []byte(data)); err != nil {
			t.Fatal(err)
		}
		got, err := d.ReadFile("x.json")
		if err != nil || string(got) != data {
			t.Fatalf("ReadFile = %q, %v; want %q", got, err, data)
		}
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(d.Path())
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want 1: %v", len(ents), ents)
	}
}

func TestReadMissingIsNotExist(t *testing.T) {
	d, _ := Open(t.TempDir())
	_, err := d.ReadFile("none")
	if !IsMissing(err) {
		t.Fatalf("err = %v, want a missing file", err)
	}
}

func TestReadCorrupt(t *testing.T) {
	d, _ := Open(t.TempDir())
	if err := d.WriteFile("f", []byte("payload")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d.Path(), "f")
	b, _ := os.ReadFile(p)
	for name, bad := range map[string][]byte{
		"flipped byte": append(append([]byte{}, b[:len(b)-1]...), 'X'),
		"cut short":    b[:len(b)-3],
		"no header":    []byte("payload"),
		"empty":        {},
	} {
		os.WriteFile(p, bad, 0o600)
		if _, err := d.ReadFile("f"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func TestBadNames(t *testing.T) {
	d, _ := Open(t.TempDir())
	for _, n := range []string{"", ".", "..", "../x", "a/b", ".hidden"} {
		if err := d.WriteFile(n, nil); err == nil {
			t.Errorf("WriteFile(%q) succeeded", n)
		}
		if _, err := d.ReadFile(n); err == nil {
			t.Errorf("ReadFile(%q) succeeded", n)
		}
	}
}
