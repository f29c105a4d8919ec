// Package state keeps what must survive a restart (the fake-ip map, later `select` choices and
// device totals) as small files in one directory, each written atomically and checked on read.
// Losing state never stops socksgate: a missing or corrupt file is an error the caller logs
// before it starts empty.
package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultDir is the state directory when the configuration names none.
const DefaultDir = "/var/lib/socksgate"

// ErrCorrupt is wrapped by ReadFile when a file's checksum does not match its contents or its
// header is not socksgate's: it was cut short, edited or damaged.
var ErrCorrupt = errors.New("state file is corrupt")

// magic begins every state file; the SHA-256 of the data follows it on the header line.
const magic = "socksgate-state v1 "

// Dir is a state directory.
type Dir struct {
	path string
}

// Open returns the state directory at path, creating it (mode 0700) when missing.
func Open(path string) (*Dir, error) {
	if path == "" {
		path = DefaultDir
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// checkName refuses anything but a plain file name: state never leaves its directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("state file name %q: want a plain file name", name)
	}
	return nil
}

// WriteFile replaces the file name with data atomically: data goes to a temporary file in the
// same directory, which is synced, renamed over name, and the directory synced, so that a crash
// leaves either the old file or the new one, never a mix.
func (d *Dir) WriteFile(name string, data []byte) (err error) {
	if err := checkName(name); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	f, err := os.CreateTemp(d.path, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = fmt.Fprintf(f, "%s%s\n", magic, hex.EncodeToString(sum[:])); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write state %s: sync: %w", name, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	if err = os.Rename(tmp, filepath.Join(d.path, name)); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	if dir, derr := os.Open(d.path); derr == nil {
		derr = dir.Sync()
		dir.Close()
		if derr != nil {
			return fmt.Errorf("write state %s: sync directory: %w", name, derr)
		}
	}
	return nil
}

// ReadFile returns the data last written to name. A missing file is an error wrapping
// fs.ErrNotExist; a damaged one wraps ErrCorrupt.
func (d *Dir) ReadFile(name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(d.path, name))
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", name, err)
	}
	header, data, ok := bytes.Cut(b, []byte("\n"))
	if !ok || !bytes.HasPrefix(header, []byte(magic)) {
		return nil, fmt.Errorf("read state %s: %w: no header", name, ErrCorrupt)
	}
	want, err := hex.DecodeString(string(header[len(magic):]))
	sum := sha256.Sum256(data)
	if err != nil || !bytes.Equal(want, sum[:]) {
		return nil, fmt.Errorf("read state %s: %w: checksum mismatch", name, ErrCorrupt)
	}
	return data, nil
}

// IsMissing reports whether err says the state file does not exist yet (a first start), as
// opposed to one that could not be read.
func IsMissing(err error) bool { return errors.Is(err, fs.ErrNotExist) }
