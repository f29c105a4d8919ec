package sniff

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// checkResult holds for every input: one of the three errors, or a clean name.
func checkResult(t *testing.T, name string, err error) {
	if err != nil {
		if !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrUnknown) && !errors.Is(err, ErrNoName) {
			t.Fatalf("unexpected error %v", err)
		}
		if name != "" {
			t.Fatalf("name %q with error %v", name, err)
		}
		return
	}
	if c, cerr := cleanName(name); cerr != nil || c != name {
		t.Fatalf("returned name %q is not clean", name)
	}
}

func FuzzSNI(f *testing.F) {
	hello := clientHello(f, "fuzz.example.com")
	f.Add(hello)
	f.Add(refragment(hello, 64))
	f.Add(refragment(hello, 1))
	f.Add(hello[:len(hello)/2])
	f.Add(clientHello(f, ""))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte{22, 3, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := SNI(b)
		checkResult(t, name, err)
		if err == nil && len(b) > 0 {
			// A name found in a prefix stays found when more bytes follow.
			if n2, err2 := SNI(append(b[:len(b):len(b)], 0x16)); err2 != nil || n2 != name {
				t.Fatalf("appending a byte changed %q to %q %v", name, n2, err2)
			}
		}
	})
}

func FuzzHTTPHost(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: name.test\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: [2001:db8::1]:80\r\n\r\n",
		"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHo",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"EHLO x\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := HTTPHost(b)
		checkResult(t, name, err)
		n2, _, err2 := Name(b)
		if len(b) > 0 && b[0] >= 'A' && b[0] <= 'Z' && (n2 != name || !errors.Is(err2, err) && err != nil) {
			t.Fatalf("Name and HTTPHost disagree: %q %v vs %q %v", n2, err2, name, err)
		}
	})
}

// splitDatagrams cuts a fuzz input into datagrams: each is a 2-byte big-endian length and that
// many bytes (the last takes what is left).
func splitDatagrams(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 2 && len(out) < MaxQUICDatagrams+2 {
		n := int(b[0])<<8 | int(b[1])
		b = b[2:]
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func joinDatagrams(dgs ...[]byte) []byte {
	var out []byte
	for _, d := range dgs {
		out = append(out, byte(len(d)>>8), byte(len(d)))
		out = append(out, d...)
	}
	return out
}

func FuzzQUIC(f *testing.F) {
	// Real client Initials (testdata/quic), the RFCs' vectors, synthetic splits.
	dirs, _ := filepath.Glob("testdata/quic/*")
	for _, dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "datagram-*"))
		var dgs [][]byte
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			dgs = append(dgs, b)
		}
		if len(dgs) > 0 {
			f.Add(joinDatagrams(dgs...))
			f.Add(joinDatagrams(dgs[len(dgs)-1]))
		}
	}
	f.Add(joinDatagrams(unhex(f, rfc9001Protected)))
	f.Add(joinDatagrams(sealInitial(f, QUICv2, rfcDCID, 2, unhex(f, rfcCryptoFrame), 1162)))
	f.Add(joinDatagrams(splitHello(f, QUICv1, "fuzz.quic.test", 700)...))
	f.Add(joinDatagrams(bytes.Join(splitHello(f, QUICv2, "fuzz.quic.test", 900), nil)))
	f.Fuzz(func(t *testing.T, b []byte) {
		dgs := splitDatagrams(b)
		orig := bytes.Clone(b)
		var q QUICSniffer
		name, err := "", error(ErrIncomplete)
		for i, d := range dgs {
			name, err = q.Feed(d)
			checkResult(t, name, err)
			if !errors.Is(err, ErrIncomplete) {
				// An answer stands whatever follows.
				if n2, err2 := q.Feed(d); n2 != name || !errors.Is(err2, err) {
					t.Fatalf("answer changed from %q %v to %q %v", name, err, n2, err2)
				}
				break
			}
			if i+1 >= MaxQUICDatagrams && errors.Is(err, ErrIncomplete) {
				t.Fatalf("still incomplete after %d datagrams", i+1)
			}
		}
		if !bytes.Equal(b, orig) {
			t.Fatal("Feed modified its input")
		}
	})
}
