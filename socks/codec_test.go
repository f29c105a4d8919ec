package socks

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

var (
	v4   = netip.MustParseAddr("192.0.2.7")
	v6   = netip.MustParseAddr("2001:db8::1")
	name = "example.com"
)

func TestAddrEncodingByType(t *testing.T) {
	tests := []struct {
		name string
		addr Addr
		want []byte
	}{
		{"ipv4", Addr{IP: v4, Port: 80}, []byte{1, 192, 0, 2, 7, 0, 80}},
		{"ipv4-mapped is sent as ipv4", Addr{IP: netip.AddrFrom16(v4.As16()), Port: 0x1234}, []byte{1, 192, 0, 2, 7, 0x12, 0x34}},
		{"ipv6", Addr{IP: v6, Port: 443}, append(append([]byte{4}, v6.AsSlice()...), 1, 187)},
		{"name", Addr{Name: name, Port: 8080}, append(append([]byte{3, byte(len(name))}, name...), 0x1f, 0x90)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.addr.AppendBinary(nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("encoded % x, want % x", got, tt.want)
			}
			if len(got) != tt.addr.EncodedLen() {
				t.Fatalf("EncodedLen %d, encoded %d bytes", tt.addr.EncodedLen(), len(got))
			}
			r := bytes.NewReader(append(got, 0xAA))
			back, err := ReadAddr(r)
			if err != nil {
				t.Fatal(err)
			}
			if back.String() != tt.addr.String() {
				t.Fatalf("read back %v, want %v", back, tt.addr)
			}
			if r.Len() != 1 {
				t.Fatalf("ReadAddr left %d bytes, want the 1 trailing byte", r.Len())
			}
			back2, n, err := ParseAddrBytes(got)
			if err != nil || n != len(got) || back2.String() != tt.addr.String() {
				t.Fatalf("ParseAddrBytes = %v, %d, %v", back2, n, err)
			}
		})
	}
}

func TestAddrEncodingRejectsBadNames(t *testing.T) {
	for _, n := range []string{"", strings.Repeat("a", 256)} {
		if _, err := (Addr{Name: n, Port: 1}).AppendBinary(nil); !errors.Is(err, ErrBadName) {
			t.Errorf("name of %d bytes: err %v, want ErrBadName", len(n), err)
		}
	}
	if _, err := (Addr{Name: strings.Repeat("a", 255), Port: 1}).AppendBinary(nil); err != nil {
		t.Errorf("255-byte name: %v", err)
	}
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		isName  bool
		wantErr bool
	}{
		{"192.0.2.1:80", "192.0.2.1:80", false, false},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", false, false},
		{"example.com:53", "example.com:53", true, false},
		{"[fe80::1%eth0]:1", "", false, true},
		{"example.com", "", false, true},
		{"example.com:99999", "", false, true},
		{":80", "", false, true},
		{strings.Repeat("a", 256) + ":1", "", false, true},
	}
	for _, tt := range tests {
		a, err := ParseAddr(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseAddr(%q) err = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (a.String() != tt.want || a.IsName() != tt.isName) {
			t.Errorf("ParseAddr(%q) = %v (name %v), want %v (name %v)", tt.in, a, a.IsName(), tt.want, tt.isName)
		}
	}
}

func TestReadAddrRejectsMalformed(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"bad atyp", []byte{9, 1, 2, 3, 4, 0, 80}, ErrBadAddrType},
		{"zero-length name", []byte{3, 0, 0, 80}, ErrBadName},
		{"short ipv4", []byte{1, 1, 2, 3}, io.ErrUnexpectedEOF},
		{"short ipv6", []byte{4, 1, 2, 3, 4, 5, 6, 7, 8}, io.ErrUnexpectedEOF},
		{"name longer than data", []byte{3, 200, 'a', 'b'}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ReadAddr(bytes.NewReader(tt.in)); !errors.Is(err, tt.want) {
				t.Fatalf("ReadAddr err = %v, want %v", err, tt.want)
			}
			if _, _, err := ParseAddrBytes(tt.in); !errors.Is(err, tt.want) {
				t.Fatalf("ParseAddrBytes err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestGreetingRoundTrip(t *testing.T) {
	b, err := AppendGreeting(nil, MethodNoAuth, MethodUserPass)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, []byte{5, 2, 0, 2}) {
		t.Fatalf("greeting % x", b)
	}
	m, err := ReadGreeting(bytes.NewReader(b))
	if err != nil || len(m) != 2 || m[0] != MethodNoAuth || m[1] != MethodUserPass {
		t.Fatalf("ReadGreeting = %v, %v", m, err)
	}
	for _, bad := range [][]byte{{4, 1, 0}, {5, 0}, {5, 3, 0}, {5}} {
		if _, err := ReadGreeting(bytes.NewReader(bad)); err == nil {
			t.Errorf("ReadGreeting(% x) succeeded", bad)
		}
	}
	if _, err := AppendGreeting(nil); err == nil {
		t.Error("empty greeting encoded")
	}
}

func TestMethodSelection(t *testing.T) {
	m, err := ReadMethodSelection(bytes.NewReader(AppendMethodSelection(nil, MethodUserPass)))
	if err != nil || m != MethodUserPass {
		t.Fatalf("= %v, %v", m, err)
	}
	if _, err := ReadMethodSelection(bytes.NewReader([]byte{4, 0})); !errors.Is(err, ErrBadVersion) {
		t.Fatalf("wrong version: %v", err)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, a := range []Addr{{IP: v4, Port: 1}, {IP: v6, Port: 2}, {Name: name, Port: 3}} {
		req := Request{Cmd: CmdConnect, Addr: a}
		b, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatal(err)
		}
		r := bytes.NewReader(append(b, 'x'))
		got, err := ReadRequest(r)
		if err != nil || got != req {
			t.Fatalf("ReadRequest = %+v, %v; want %+v", got, err, req)
		}
		if r.Len() != 1 {
			t.Fatalf("ReadRequest over-read: %d bytes left", r.Len())
		}
	}
	if _, err := ReadRequest(bytes.NewReader([]byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80})); !errors.Is(err, ErrBadVersion) {
		t.Fatalf("wrong version: %v", err)
	}
}

func TestReadReply(t *testing.T) {
	ok4, _ := AppendReply(nil, Reply{Code: ReplySucceeded, Addr: Addr{IP: v4, Port: 1080}})
	ok6, _ := AppendReply(nil, Reply{Code: ReplySucceeded, Addr: Addr{IP: v6, Port: 1080}})
	okName, _ := AppendReply(nil, Reply{Code: ReplySucceeded, Addr: Addr{Name: name, Port: 1080}})
	zero, _ := AppendReply(nil, Reply{})
	tests := []struct {
		name     string
		in       []byte
		wantCode ReplyCode
		wantAddr string
		wantErr  error
	}{
		{"ipv4", ok4, ReplySucceeded, "192.0.2.7:1080", nil},
		{"ipv6", ok6, ReplySucceeded, "[2001:db8::1]:1080", nil},
		{"name", okName, ReplySucceeded, "example.com:1080", nil},
		{"zero address", zero, ReplySucceeded, "0.0.0.0:0", nil},
		{"refused with address", []byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, ReplyConnectionRefused, "", nil},
		{"refused, bare two bytes", []byte{5, 5}, ReplyConnectionRefused, "", nil},
		{"failure with garbage atyp", []byte{5, 1, 0, 0xee}, ReplyGeneralFailure, "", nil},
		{"wrong version", []byte{4, 0, 0, 1, 1, 2, 3, 4, 0, 80}, 0, "", ErrBadVersion},
		{"bad atyp", []byte{5, 0, 0, 9, 1, 2, 3, 4, 0, 80}, 0, "", ErrBadAddrType},
		{"truncated header", []byte{5, 0, 0}, 0, "", io.ErrUnexpectedEOF},
		{"truncated address", []byte{5, 0, 0, 1, 1, 2}, 0, "", io.ErrUnexpectedEOF},
		{"short name", []byte{5, 0, 0, 3, 255, 'a'}, 0, "", io.ErrUnexpectedEOF},
		{"empty", nil, 0, "", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(tt.in)
			rep, err := ReadReply(r)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rep.Code != tt.wantCode {
				t.Fatalf("code %v, want %v", rep.Code, tt.wantCode)
			}
			if tt.wantAddr != "" && rep.Addr.String() != tt.wantAddr {
				t.Fatalf("addr %v, want %v", rep.Addr, tt.wantAddr)
			}
			if tt.wantCode == ReplySucceeded && r.Len() != 0 {
				t.Fatalf("%d bytes unread", r.Len())
			}
		})
	}
}

func TestReplyCodeNames(t *testing.T) {
	want := map[ReplyCode]string{
		0: "succeeded", 1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
		3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
		7: "command not supported", 8: "address type not supported", 0x5b: "request rejected or failed",
		0x42: "unknown reply code 0x42",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("%d: %q, want %q", byte(c), c.String(), s)
		}
	}
}

func TestUserPassRoundTrip(t *testing.T) {
	b, err := AppendUserPassRequest(nil, "alice", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, []byte("\x01\x05alice\x06s3cret")) {
		t.Fatalf("% x", b)
	}
	u, p, err := ReadUserPassRequest(bytes.NewReader(b))
	if err != nil || u != "alice" || p != "s3cret" {
		t.Fatalf("= %q %q %v", u, p, err)
	}
	long := strings.Repeat("p", 256)
	_, err = AppendUserPassRequest(nil, "u", long)
	if err == nil || strings.Contains(err.Error(), long) {
		t.Fatalf("long password: %v", err)
	}
	if _, _, err := ReadUserPassRequest(bytes.NewReader([]byte{1, 5, 'a'})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	for in, want := range map[string]byte{"\x01\x00": 0, "\x01\x01": 1, "\x05\x00": 0} {
		st, err := ReadUserPassReply(strings.NewReader(in))
		if err != nil || st != want {
			t.Errorf("ReadUserPassReply(% x) = %d, %v", in, st, err)
		}
	}
	if _, err := ReadUserPassReply(strings.NewReader("\x07\x00")); !errors.Is(err, ErrBadVersion) {
		t.Errorf("bad version: %v", err)
	}
}

func TestSOCKS4RequestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		req  Request4
		want []byte
	}{
		{"socks4", Request4{Cmd: CmdConnect, IP: v4, Port: 80, UserID: "bob"},
			[]byte{4, 1, 0, 80, 192, 0, 2, 7, 'b', 'o', 'b', 0}},
		{"socks4a", Request4{Cmd: CmdConnect, Port: 80, Name: "ex.org"},
			[]byte{4, 1, 0, 80, 0, 0, 0, 1, 0, 'e', 'x', '.', 'o', 'r', 'g', 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendRequest4(nil, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, tt.want) {
				t.Fatalf("% x, want % x", b, tt.want)
			}
			r := bytes.NewReader(append(b, 'z'))
			got, err := ReadRequest4(r)
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tt.req.Name || got.UserID != tt.req.UserID || got.Port != tt.req.Port {
				t.Fatalf("= %+v, want %+v", got, tt.req)
			}
			if r.Len() != 1 {
				t.Fatalf("over-read: %d left", r.Len())
			}
		})
	}
	if _, err := AppendRequest4(nil, Request4{IP: v6, Port: 1}); err == nil {
		t.Error("IPv6 encoded as SOCKS4")
	}
	if _, err := AppendRequest4(nil, Request4{IP: v4, UserID: "a\x00b"}); err == nil {
		t.Error("user id with NUL encoded")
	}
	long := append([]byte{4, 1, 0, 80, 1, 2, 3, 4}, bytes.Repeat([]byte{'u'}, 300)...)
	if _, err := ReadRequest4(bytes.NewReader(append(long, 0))); !errors.Is(err, ErrTooLong) {
		t.Errorf("300-byte user id: %v", err)
	}
	if _, err := ReadRequest4(bytes.NewReader([]byte{4, 1, 0, 80, 0, 0, 0, 1, 0, 0})); !errors.Is(err, ErrBadName) {
		t.Errorf("empty 4a name: %v", err)
	}
	if _, err := ReadRequest4(bytes.NewReader([]byte{4, 1, 0, 80, 1, 2, 3, 4, 'u'})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("unterminated user id: %v", err)
	}
}

func TestSOCKS4Reply(t *testing.T) {
	b := AppendReply4(nil, Reply4{Code: Reply4Granted, IP: v4, Port: 9})
	rep, err := ReadReply4(bytes.NewReader(b))
	if err != nil || rep.Code != Reply4Granted || rep.IP != v4 || rep.Port != 9 {
		t.Fatalf("= %+v, %v", rep, err)
	}
	if _, err := ReadReply4(bytes.NewReader([]byte{5, 0x5a, 0, 0, 0, 0, 0, 0})); !errors.Is(err, ErrBadVersion) {
		t.Fatalf("wrong version: %v", err)
	}
	if _, err := ReadReply4(bytes.NewReader([]byte{0, 0x5a})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short: %v", err)
	}
}

func TestUDPHeaderRoundTrip(t *testing.T) {
	for _, a := range []Addr{{IP: v4, Port: 53}, {IP: v6, Port: 53}, {Name: name, Port: 53}} {
		b, err := AppendUDPHeader(nil, UDPHeader{Addr: a})
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, "payload"...)
		h, n, err := ParseUDPHeader(b)
		if err != nil || h.Addr != a || h.Frag != 0 || string(b[n:]) != "payload" {
			t.Fatalf("= %+v %d %v", h, n, err)
		}
	}
	for _, bad := range [][]byte{nil, {0, 0, 0}, {0, 0, 0, 1, 1}, {0, 0, 0, 7, 1, 2, 3, 4, 0, 1}} {
		if _, _, err := ParseUDPHeader(bad); err == nil {
			t.Errorf("ParseUDPHeader(% x) succeeded", bad)
		}
	}
}

func TestUDPHeaderDoesNotAllocateForIPs(t *testing.T) {
	buf := make([]byte, 0, 1500)
	pkt, _ := AppendUDPHeader(nil, UDPHeader{Addr: Addr{IP: v6, Port: 53}})
	allocs := testing.AllocsPerRun(100, func() {
		b, err := AppendUDPHeader(buf[:0], UDPHeader{Addr: Addr{IP: v4, Port: 53}})
		if err != nil || len(b) != 10 {
			t.Fatal(err)
		}
		if _, _, err := ParseUDPHeader(pkt); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per header, want 0", allocs)
	}
}

// The decoders run once or twice per new flow: for IP addresses they must not allocate (a
// name costs its string, nothing more).
func TestDecodersDoNotAllocateForIPAddresses(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	dst := AddrFromAddrPort(netip.MustParseAddrPort("203.0.113.10:443"))
	req, _ := AppendRequest(nil, Request{Cmd: CmdConnect, Addr: dst})
	rep, _ := AppendReply(nil, Reply{Code: ReplySucceeded, Addr: dst})
	req4, _ := AppendRequest4(nil, Request4{Cmd: CmdConnect, IP: dst.IP, Port: 443})
	rep4 := AppendReply4(nil, Reply4{Code: Reply4Granted})
	addr, _ := dst.MarshalBinary()
	cases := []struct {
		name string
		wire []byte
		read func(r io.Reader) error
	}{
		{"ReadRequest", req, func(r io.Reader) error { _, err := ReadRequest(r); return err }},
		{"ReadReply", rep, func(r io.Reader) error { _, err := ReadReply(r); return err }},
		{"ReadAddr", addr, func(r io.Reader) error { _, err := ReadAddr(r); return err }},
		{"ReadMethodSelection", []byte{Version5, 0}, func(r io.Reader) error { _, err := ReadMethodSelection(r); return err }},
		{"ReadUserPassReply", []byte{UserPassVersion, 0}, func(r io.Reader) error { _, err := ReadUserPassReply(r); return err }},
		{"ReadReply4", rep4, func(r io.Reader) error { _, err := ReadReply4(r); return err }},
		{"ReadRequest4", req4, func(r io.Reader) error { _, err := ReadRequest4(r); return err }},
	}
	for _, c := range cases {
		r := bytes.NewReader(c.wire)
		allocs := testing.AllocsPerRun(100, func() {
			r.Reset(c.wire)
			if err := c.read(r); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per call, want 0", c.name, allocs)
		}
	}
}
