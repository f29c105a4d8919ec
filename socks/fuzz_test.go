package socks

import (
	"bytes"
	"testing"
)

// limitCheck wraps a reader and fails the test if a decoder reads more than max bytes.
type limitCheck struct {
	t   *testing.T
	r   *bytes.Reader
	n   int
	max int
}

func (l *limitCheck) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.n += n
	if l.n > l.max {
		l.t.Fatalf("decoder read %d bytes, limit %d", l.n, l.max)
	}
	return n, err
}

func seedAll(f *testing.F, seeds ...[]byte) {
	for _, s := range seeds {
		f.Add(s)
	}
}

func FuzzReadReply(f *testing.F) {
	seedAll(f,
		[]byte{5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38},
		[]byte{5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80},
		[]byte{5, 0, 0, 3, 3, 'a', '.', 'b', 0, 80},
		[]byte{5, 5}, []byte{4, 0, 0, 1}, []byte{5, 0, 0, 3, 255}, []byte{5, 0, 0, 9, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 3 + MaxAddrLen}
		rep, err := ReadReply(r)
		if err != nil || rep.Code != ReplySucceeded {
			return
		}
		enc, err := AppendReply(nil, rep)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", rep, err)
		}
		rep2, err := ReadReply(bytes.NewReader(enc))
		if err != nil || rep2.Addr.String() != rep.Addr.String() { // IPv4-mapped IPv6 comes back as IPv4
			t.Fatalf("round trip %+v -> %+v, %v", rep, rep2, err)
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	seedAll(f,
		[]byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80},
		[]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0},
		[]byte{5, 1, 0, 3, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', 1, 187},
		[]byte{5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53},
		[]byte{5, 1, 0, 3, 0, 0, 80}, []byte{5})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 3 + MaxAddrLen}
		req, err := ReadRequest(r)
		if err != nil {
			return
		}
		enc, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		req2, err := ReadRequest(bytes.NewReader(enc))
		if err != nil || req2.Cmd != req.Cmd || req2.Addr.String() != req.Addr.String() {
			t.Fatalf("round trip %+v -> %+v, %v", req, req2, err)
		}
	})
}

func FuzzReadGreeting(f *testing.F) {
	seedAll(f, []byte{5, 1, 0}, []byte{5, 2, 0, 2}, []byte{5, 0}, []byte{5, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 2 + 255}
		m, err := ReadGreeting(r)
		if err == nil && (len(m) == 0 || len(m) > 255) {
			t.Fatalf("%d methods", len(m))
		}
	})
}

func FuzzUserPass(f *testing.F) {
	seedAll(f, []byte("\x01\x05alice\x06s3cret"), []byte("\x01\x00\x00"), []byte("\x01\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 3 + 255 + 255}
		u, p, err := ReadUserPassRequest(r)
		if err != nil {
			return
		}
		enc, err := AppendUserPassRequest(nil, u, p)
		if err != nil || !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("re-encoded % x (%v), input % x", enc, err, b)
		}
	})
}

func FuzzUDPHeader(f *testing.F) {
	seedAll(f,
		[]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'h', 'i'},
		[]byte{0, 0, 1, 1, 127, 0, 0, 1, 0, 53},
		[]byte{0, 0, 0, 3, 1, 'a', 0, 53},
		[]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53},
		[]byte{0, 0, 0, 3, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseUDPHeader(b)
		if err != nil {
			return
		}
		if n > len(b) || n > MaxUDPHeaderLen {
			t.Fatalf("header length %d of %d-byte datagram", n, len(b))
		}
		enc, err := AppendUDPHeader(nil, h)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
		h2, n2, err := ParseUDPHeader(enc)
		if err != nil || n2 != len(enc) || h2.Frag != h.Frag || h2.Addr.String() != h.Addr.String() {
			t.Fatalf("round trip %+v -> %+v (%d bytes), %v", h, h2, n2, err)
		}
	})
}

func FuzzSOCKS4Request(f *testing.F) {
	seedAll(f,
		[]byte{4, 1, 0, 80, 192, 0, 2, 7, 'b', 'o', 'b', 0},
		[]byte{4, 1, 0, 80, 0, 0, 0, 1, 0, 'e', 'x', '.', 'o', 'r', 'g', 0},
		[]byte{4, 1, 0, 80, 0, 0, 0, 1, 0, 0},
		[]byte{4, 1, 0, 80, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 8 + 256 + 256}
		req, err := ReadRequest4(r)
		if err != nil {
			return
		}
		enc, err := AppendRequest4(nil, req)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		if req.Name == "" && !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("re-encoded % x, input % x", enc, b)
		}
	})
}

func FuzzSOCKS4Reply(f *testing.F) {
	seedAll(f, []byte{0, 0x5a, 0, 0, 0, 0, 0, 0}, []byte{0, 0x5b}, []byte{4, 0x5a, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: 8}
		rep, err := ReadReply4(r)
		if err != nil {
			return
		}
		if enc := AppendReply4(nil, rep); !bytes.Equal(enc, b[:8]) {
			t.Fatalf("re-encoded % x, input % x", enc, b[:8])
		}
	})
}

func FuzzReadAddr(f *testing.F) {
	seedAll(f, []byte{1, 1, 2, 3, 4, 0, 80}, []byte{3, 1, 'a', 0, 1}, []byte{4}, []byte{3, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &limitCheck{t: t, r: bytes.NewReader(b), max: MaxAddrLen}
		a, err := ReadAddr(r)
		a2, n, err2 := ParseAddrBytes(b)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("ReadAddr err %v, ParseAddrBytes err %v", err, err2)
		}
		if err == nil && (a != a2 || n != r.n) {
			t.Fatalf("ReadAddr %v (%d bytes), ParseAddrBytes %v (%d)", a, r.n, a2, n)
		}
	})
}
