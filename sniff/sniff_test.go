package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// clientHello returns the first flight of a real crypto/tls client dialing serverName: one
// handshake record holding the ClientHello.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	done := make(chan []byte)
	go func() {
		buf := make([]byte, 64<<10)
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := s.Read(buf)
		done <- buf[:n]
		c.Close()
	}()
	cfg := &tls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}
	go tls.Client(c, cfg).Handshake()
	return <-done
}

// refragment re-frames the handshake bytes of one record into records of at most size bytes,
// as a client whose ClientHello exceeds one record (or a middlebox) would send it.
func refragment(rec []byte, size int) []byte {
	msg := rec[recordHeaderLen:]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordHandshake, rec[1], rec[2], byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestSNIFromRealClientHello(t *testing.T) {
	for _, name := range []string{"name.test", "www.Example.COM", "a-b.c_d.example"} {
		hello := clientHello(t, name)
		got, proto, err := Name(hello)
		want, _ := cleanName(name)
		if err != nil || proto != TLS || got != want {
			t.Fatalf("%s: got %q %v %v", name, got, proto, err)
		}
	}
}

// A ClientHello split across several records, and records split across several reads: every
// prefix is ErrIncomplete, the whole is the name.
func TestSNISplitAcrossRecordsAndSegments(t *testing.T) {
	hello := clientHello(t, "split.example.com")
	for _, size := range []int{1, 7, 100, 512, 1 << 14} {
		b := refragment(hello, size)
		for i := range len(b) {
			if _, err := SNI(b[:i]); !errors.Is(err, ErrIncomplete) {
				t.Fatalf("records of %d, first %d of %d bytes: %v, want ErrIncomplete", size, i, len(b), err)
			}
		}
		if got, err := SNI(b); err != nil || got != "split.example.com" {
			t.Fatalf("records of %d: %q %v", size, got, err)
		}
	}
}

func TestSNIWithoutServerName(t *testing.T) {
	hello := clientHello(t, "") // crypto/tls sends no SNI without a ServerName
	if _, err := SNI(hello); !errors.Is(err, ErrNoName) {
		t.Fatalf("err %v, want ErrNoName", err)
	}
}

func TestNameRejects(t *testing.T) {
	hello := clientHello(t, "x.test")
	alert := append([]byte{21, 3, 3, 0, 2}, 2, 40)
	serverHello := append([]byte{22, 3, 3, 0, 4}, 2, 0, 0, 0)
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrIncomplete},
		{"smtp banner reply", []byte("EHLO me\r\n"), ErrUnknown},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.6\r\n"), ErrUnknown},
		{"binary", []byte{0, 1, 2, 3}, ErrUnknown},
		{"tls alert", alert, ErrUnknown},
		{"tls server hello", serverHello, ErrUnknown},
		{"tls bad version", append([]byte{22, 2}, hello[2:]...), ErrUnknown},
		{"tls zero-length record", []byte{22, 3, 1, 0, 0}, ErrUnknown},
		{"lowercase method", []byte("get / HTTP/1.1\r\nHost: a.test\r\n\r\n"), ErrUnknown},
		{"http/2 preface is not http/1", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), ErrUnknown},
		{"http no host", []byte("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"), ErrNoName},
		{"http host is an address", []byte("GET / HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n"), ErrNoName},
		{"http host is a v6 address", []byte("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"), ErrNoName},
		{"http host with bad characters", []byte("GET / HTTP/1.1\r\nHost: a b.test\r\n\r\n"), ErrNoName},
		{"http host is a short-form address", []byte("GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n"), ErrNoName},
		{"http host is one number", []byte("GET / HTTP/1.1\r\nHost: 2130706433\r\n\r\n"), ErrNoName},
		{"http host ends in a hex number", []byte("GET / HTTP/1.1\r\nHost: intranet.0x7f\r\n\r\n"), ErrNoName},
		{"http partial request line", []byte("GET /index.ht"), ErrIncomplete},
		{"http partial headers", []byte("GET / HTTP/1.1\r\nUser-Agent: curl\r\nHo"), ErrIncomplete},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if n, _, err := Name(c.in); !errors.Is(err, c.want) {
				t.Fatalf("got %q %v, want %v", n, err, c.want)
			}
		})
	}
}

func TestHTTPHost(t *testing.T) {
	cases := []struct{ in, want string }{
		{"GET / HTTP/1.1\r\nHost: name.test\r\n\r\n", "name.test"},
		{"GET / HTTP/1.1\r\nhost:Name.Test:8080\r\nAccept: */*\r\n\r\n", "name.test"},
		{"POST /x HTTP/1.0\r\nUser-Agent: a\r\nHOST:  www.example.com.  \r\n", "www.example.com"},
		{"GET http://other/ HTTP/1.1\nHost: lf.only.test\n\n", "lf.only.test"},
		{"OPTIONS * HTTP/1.1\r\nHost: opt.test\r\n", "opt.test"}, // the name is known before the headers end
	}
	for _, c := range cases {
		got, proto, err := Name([]byte(c.in))
		if err != nil || proto != HTTP || got != c.want {
			t.Errorf("%q: got %q %v %v, want %q", c.in, got, proto, err, c.want)
		}
	}
}

// Sniffing never changes the caller's bytes.
func TestNameDoesNotModifyInput(t *testing.T) {
	hello := refragment(clientHello(t, "keep.test"), 50)
	orig := bytes.Clone(hello)
	Name(hello)
	if !bytes.Equal(hello, orig) {
		t.Fatal("input modified")
	}
}
