package sniff

import (
	"errors"
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
