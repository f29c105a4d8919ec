package sniff

import (
	"bytes"
	"crypto/aes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 9001 A.2 / RFC 9369 A.2: the client Initial's CRYPTO frame (a ClientHello for
// example.com), padded to a 1162-byte payload, packet number 2, DCID 8394c8f03e515708.
const rfcCryptoFrame = `
060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
616d706c652e636f6dff01000100000a00080006001d00170018001000070005
04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
0d0010000e0403050306030203080408050806002d00020101001c0002400100
3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
75300901100f088394c8f03e51570806048000ffff`

const rfc9001Protected = `
c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11
d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399
1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c
8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212
30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5
457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208
4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec
4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3
485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db
059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c
7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8
9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556
be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74
68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a
c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00
f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632
291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964
25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd
14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff
ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198
e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd
c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73
203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f
cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e
fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade
a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047
90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2
162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4
40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0
6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e
8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0
be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400
54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab
760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9
f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4
056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064
7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241
e221af44860018ab0856972e194cd934`

// RFC 9369 A.2: the start and the end (with the AEAD tag) of the protected v2 packet.
const (
	rfc9369ProtectedPrefix = `d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485`
	rfc9369ProtectedSuffix = `
6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19
9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b
a18b2faa745b6fe189cf772a9f84cbfc`
)

var rfcDCID = []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08}

// sealInitial builds a client Initial of version with dcid, a 4-byte packet number pn and the
// frames in payload (padded with PADDING to padTo bytes of payload): the sender's side of
// RFC 9001 5, to build test inputs. It is checked against the RFCs' vectors below.
func sealInitial(t testing.TB, version uint32, dcid []byte, pn uint32, payload []byte, padTo int) []byte {
	t.Helper()
	v := quicVersions[version]
	k, err := newInitialKeys(v, dcid)
	if err != nil {
		t.Fatal(err)
	}
	if len(payload) < padTo {
		payload = append(payload, make([]byte, padTo-len(payload))...)
	}
	hdr := []byte{0xc0 | v.initialType<<4 | 3}
	hdr = binary.BigEndian.AppendUint32(hdr, version)
	hdr = append(hdr, byte(len(dcid)))
	hdr = append(hdr, dcid...)
	hdr = append(hdr, 0, 0) // no SCID, no token
	l := len(payload) + 4 + k.aead.Overhead()
	hdr = append(hdr, 0x40|byte(l>>8), byte(l)) // 2-byte varint Length
	pnOffset := len(hdr)
	hdr = binary.BigEndian.AppendUint32(hdr, pn)
	var nonce [12]byte
	copy(nonce[:], k.iv)
	for i := 0; i < 8; i++ {
		nonce[4+i] ^= byte(uint64(pn) >> (56 - 8*i))
	}
	pkt := k.aead.Seal(append([]byte(nil), hdr...), nonce[:], payload, hdr)
	var mask [aes.BlockSize]byte
	k.hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+4+16])
	pkt[0] ^= mask[0] & 0x0f
	for i := 0; i < 4; i++ {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return pkt
}

func TestQUICv1RFC9001ClientInitial(t *testing.T) {
	want := unhex(t, rfc9001Protected)
	got := sealInitial(t, QUICv1, rfcDCID, 2, unhex(t, rfcCryptoFrame), 1162)
	if !bytes.Equal(got, want) {
		t.Fatalf("sealed RFC 9001 A.2 packet differs from the RFC's:\n%x", got)
	}
	if !IsQUICInitial(want) {
		t.Fatal("IsQUICInitial: false")
	}
	if name, err := QUICName(want); err != nil || name != "example.com" {
		t.Fatalf("got %q %v", name, err)
	}
}

func TestQUICv2RFC9369ClientInitial(t *testing.T) {
	got := sealInitial(t, QUICv2, rfcDCID, 2, unhex(t, rfcCryptoFrame), 1162)
	if len(got) != 1200 || !bytes.HasPrefix(got, unhex(t, rfc9369ProtectedPrefix)) || !bytes.HasSuffix(got, unhex(t, rfc9369ProtectedSuffix)) {
		t.Fatalf("sealed RFC 9369 A.2 packet differs from the RFC's:\n%x", got)
	}
	if name, err := QUICName(got); err != nil || name != "example.com" {
		t.Fatalf("got %q %v", name, err)
	}
	// v1 keys do not open a v2 packet (the version bytes say v2: relabelled, it fails).
	relabelled := append([]byte(nil), got...)
	relabelled[0] &^= 0x30
	binary.BigEndian.PutUint32(relabelled[1:], QUICv1)
	if _, err := QUICName(relabelled); !errors.Is(err, ErrUnknown) {
		t.Fatalf("v2 packet relabelled v1: %v, want ErrUnknown", err)
	}
}

// cryptoFrame is a CRYPTO frame of data at off.
func cryptoFrame(off int, data []byte) []byte {
	f := []byte{frameCrypto, 0x80 | byte(off>>24), byte(off >> 16), byte(off >> 8), byte(off)}
	l := len(data)
	f = append(f, 0x40|byte(l>>8), byte(l))
	return append(f, data...)
}

// splitHello carries a real crypto/tls ClientHello (with its post-quantum key share: about
// 1.8 kB) in CRYPTO frames of at most chunk bytes, one Initial packet each, as Chromium
// splits its own.
func splitHello(t testing.TB, version uint32, name string, chunk int) [][]byte {
	t.Helper()
	msg := clientHello(t, name)[recordHeaderLen:]
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	var pkts [][]byte
	for off := 0; off < len(msg); off += chunk {
		data := msg[off:min(off+chunk, len(msg))]
		pkts = append(pkts, sealInitial(t, version, dcid, uint32(len(pkts)), cryptoFrame(off, data), 1162))
	}
	return pkts
}

func TestQUICClientHelloOverSeveralPackets(t *testing.T) {
	for _, version := range []uint32{QUICv1, QUICv2} {
		pkts := splitHello(t, version, "split.quic.test", 1000)
		if len(pkts) < 2 {
			t.Fatalf("ClientHello fits one packet (%d): the test needs a bigger one", len(pkts))
		}
		// In order, one datagram each: incomplete until the last.
		var q QUICSniffer
		for i, p := range pkts {
			name, err := q.Feed(p)
			if i < len(pkts)-1 && !errors.Is(err, ErrIncomplete) {
				t.Fatalf("v%x packet %d: %q %v, want ErrIncomplete", version, i, name, err)
			}
			if i == len(pkts)-1 && (err != nil || name != "split.quic.test") {
				t.Fatalf("v%x last packet: %q %v", version, name, err)
			}
		}
		// Reversed: the later half first, still found when the start arrives.
		rev := make([][]byte, len(pkts))
		for i, p := range pkts {
			rev[len(pkts)-1-i] = p
		}
		if name, err := QUICName(rev...); err != nil || name != "split.quic.test" {
			t.Fatalf("v%x reversed: %q %v", version, name, err)
		}
		// Coalesced into one datagram.
		if name, err := QUICName(bytes.Join(pkts, nil)); err != nil || name != "split.quic.test" {
			t.Fatalf("v%x coalesced: %q %v", version, name, err)
		}
	}
}

// Overlapping CRYPTO frames (a retransmission re-split), PING and ACK frames before them.
func TestQUICOverlappingCryptoAndOtherFrames(t *testing.T) {
	msg := clientHello(t, "overlap.test")[recordHeaderLen:]
	dcid := rfcDCID
	a := append([]byte{framePing, frameACK, 0, 0, 0, 0}, cryptoFrame(0, msg[:700])...)
	b := cryptoFrame(500, msg[500:])
	name, err := QUICName(sealInitial(t, QUICv1, dcid, 0, a, 1162), sealInitial(t, QUICv1, dcid, 1, b, 1162))
	if err != nil || name != "overlap.test" {
		t.Fatalf("got %q %v", name, err)
	}
}

func TestQUICRejects(t *testing.T) {
	v1 := unhex(t, rfc9001Protected)
	corrupt := append([]byte(nil), v1...)
	corrupt[100] ^= 1
	short := append([]byte{0x40}, make([]byte, 1199)...)
	unknownVersion := append([]byte(nil), v1...)
	binary.BigEndian.PutUint32(unknownVersion[1:], 0xff00001d)
	noSNI := sealInitial(t, QUICv1, rfcDCID, 0, cryptoFrame(0, clientHello(t, "")[recordHeaderLen:]), 1162)
	notHello := sealInitial(t, QUICv1, rfcDCID, 0, cryptoFrame(0, []byte{2, 0, 0, 4, 1, 2, 3, 4}), 1162)
	for _, c := range []struct {
		name string
		in   [][]byte
		want error
	}{
		{"dns", [][]byte{unhex(t, "abcd01000001000000000000076578616d706c6503636f6d0000010001")}, ErrUnknown},
		{"empty", [][]byte{{}}, ErrUnknown},
		{"short header", [][]byte{short}, ErrUnknown},
		{"corrupt", [][]byte{corrupt}, ErrUnknown},
		{"truncated", [][]byte{v1[:600]}, ErrUnknown},
		{"unknown version", [][]byte{unknownVersion}, ErrUnknown},
		{"no sni", [][]byte{noSNI}, ErrNoName},
		{"not a client hello", [][]byte{notHello}, ErrNoName},
		{"never complete", splitHello(t, QUICv1, "x.test", 100)[:MaxQUICDatagrams+1], ErrNoName},
		{"first half only", splitHello(t, QUICv1, "x.test", 1000)[:1], ErrIncomplete},
	} {
		if name, err := QUICName(c.in...); !errors.Is(err, c.want) || name != "" {
			t.Errorf("%s: %q %v, want %v", c.name, name, err, c.want)
		}
	}
}

// A sniffer that answered keeps its answer, and never modifies the caller's datagrams.
func TestQUICSnifferStableAndReadOnly(t *testing.T) {
	v1 := unhex(t, rfc9001Protected)
	orig := append([]byte(nil), v1...)
	var q QUICSniffer
	if name, err := q.Feed(v1); err != nil || name != "example.com" {
		t.Fatalf("got %q %v", name, err)
	}
	if !bytes.Equal(v1, orig) {
		t.Fatal("Feed modified its input")
	}
	if name, err := q.Feed([]byte("junk")); err != nil || name != "example.com" {
		t.Fatalf("after the answer: %q %v", name, err)
	}
}

// The real client Initials in testdata (captured from Chromium, see testdata/quic/README)
// give their names.
func TestQUICRealClientInitials(t *testing.T) {
	dirs, _ := filepath.Glob("testdata/quic/*")
	n := 0
	for _, dir := range dirs {
		want, err := os.ReadFile(filepath.Join(dir, "name"))
		if err != nil {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(dir, "datagram-*"))
		var dgs [][]byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dgs = append(dgs, b)
		}
		name, err := QUICName(dgs...)
		if err != nil || name != strings.TrimSpace(string(want)) {
			t.Errorf("%s: %q %v, want %q", dir, name, err, want)
		}
		n++
	}
	t.Logf("%d captures", n)
}

func BenchmarkQUICName(b *testing.B) {
	pkts := splitHello(b, QUICv1, "bench.quic.test", 1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := QUICName(pkts...); err != nil {
			b.Fatal(err)
		}
	}
}
