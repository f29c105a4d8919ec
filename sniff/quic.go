package sniff

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// QUIC versions whose Initial packets QUICSniffer opens.
const (
	QUICv1 uint32 = 0x00000001 // RFC 9000, 9001
	QUICv2 uint32 = 0x6b3343cf // RFC 9369
)

// Bounds of QUICSniffer: a client's ClientHello, even with post-quantum key shares split over
// several Initial packets, arrives in its first two or three datagrams.
const (
	// MaxQUICDatagrams is how many datagrams a QUICSniffer reads before it gives up.
	MaxQUICDatagrams = 4
	// maxCryptoBytes bounds the CRYPTO stream offsets a QUICSniffer reassembles.
	maxCryptoBytes = MaxBytes
	// maxCoalesced bounds the packets read from one datagram (a client coalesces an Initial
	// with 0-RTT, rarely more).
	maxCoalesced = 8
)

// QUIC is the protocol of a name found by a QUICSniffer.
const QUIC Protocol = HTTP + 1

// quicVersion holds what differs between the versions' Initial protection.
type quicVersion struct {
	salt             []byte
	initialType      byte // the long header's packet type of an Initial
	zeroRTTType      byte
	key, iv, hpLabel string
}

var quicVersions = map[uint32]*quicVersion{
	QUICv1: {
		salt:        []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a},
		initialType: 0, zeroRTTType: 1,
		key: "quic key", iv: "quic iv", hpLabel: "quic hp",
	},
	QUICv2: {
		salt:        []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9},
		initialType: 1, zeroRTTType: 2,
		key: "quicv2 key", iv: "quicv2 iv", hpLabel: "quicv2 hp",
	},
}

// QUICSniffer finds the server name in a QUIC client's first datagrams: it opens the Initial
// packets (their keys derive from public salts and the client's connection ID), reassembles
// the CRYPTO frames by offset across packets and datagrams, and reads the SNI of the TLS
// ClientHello they carry. Feed it the datagrams in the order they came; it is not safe for
// concurrent use. The zero value is ready.
type QUICSniffer struct {
	datagrams int
	dcid      []byte // of the keys below
	version   uint32
	keys      *initialKeys
	crypto    []byte // the CRYPTO stream reassembled so far (zeros where nothing arrived)
	have      []span // which parts of crypto arrived, sorted, merged
	done      bool
	name      string
	err       error
}

type span struct{ from, to int }

// Feed takes the next datagram of the flow (not retained) and returns the name once the
// ClientHello is whole, ErrIncomplete while it is not (feed the next datagram), ErrUnknown
// when the datagrams are not a QUIC client's Initials, or ErrNoName when they are but carry
// no usable name (or it did not arrive within MaxQUICDatagrams). Once it has answered
// anything but ErrIncomplete it keeps answering the same.
func (q *QUICSniffer) Feed(datagram []byte) (string, error) {
	if q.done {
		return q.name, q.err
	}
	q.datagrams++
	opened, err := q.datagram(datagram)
	switch {
	case err != nil:
		return q.finish("", err)
	case opened && len(q.have) > 0 && q.have[0].from == 0:
		name, err := handshakeSNI(q.crypto[:q.have[0].to])
		if !errors.Is(err, ErrIncomplete) {
			if errors.Is(err, ErrUnknown) {
				err = ErrNoName // a QUIC Initial whose CRYPTO data is no ClientHello
			}
			return q.finish(name, err)
		}
	case !opened && q.keys == nil:
		return q.finish("", ErrUnknown)
	}
	if q.datagrams >= MaxQUICDatagrams {
		return q.finish("", ErrNoName)
	}
	return "", ErrIncomplete
}

func (q *QUICSniffer) finish(name string, err error) (string, error) {
	q.done, q.name, q.err = true, name, err
	q.crypto, q.have = nil, nil
	return name, err
}

// QUICName returns the server name in datagrams, a QUIC client's first datagrams in order.
func QUICName(datagrams ...[]byte) (string, error) {
	var q QUICSniffer
	name, err := "", error(ErrIncomplete)
	for _, d := range datagrams {
		if name, err = q.Feed(d); !errors.Is(err, ErrIncomplete) {
			break
		}
	}
	return name, err
}

// IsQUICInitial reports whether b starts like a QUIC v1 or v2 long-header Initial packet: a
// cheap check before holding a datagram for Feed.
func IsQUICInitial(b []byte) bool {
	if len(b) < 7 || b[0]&0xc0 != 0xc0 {
		return false
	}
	v := quicVersions[binary.BigEndian.Uint32(b[1:5])]
	return v != nil && (b[0]>>4)&3 == v.initialType
}

// datagram opens the Initial packets of one datagram and adds their CRYPTO frames. opened
// reports whether at least one Initial was opened; err is ErrUnknown when the datagram does
// not start with a QUIC v1 or v2 long header, or its first Initial does not open (the caller
// decides whether that disqualifies the flow).
func (q *QUICSniffer) datagram(b []byte) (opened bool, err error) {
	first := true
	for packets := 0; len(b) > 0 && packets < maxCoalesced; packets++ {
		if b[0]&0x80 == 0 {
			break // a short header packet: the rest of the datagram is 1-RTT
		}
		p, rest, ok := parseLongHeader(b)
		if !ok {
			if first {
				return false, ErrUnknown
			}
			break
		}
		b = rest
		v := quicVersions[p.version]
		if v == nil || p.fixed == 0 {
			if first {
				return false, ErrUnknown
			}
			break
		}
		if first && q.version != 0 && p.version != q.version {
			return false, ErrUnknown
		}
		first = false
		if p.typ != v.initialType {
			continue // 0-RTT or Handshake coalesced after the Initial: skipped by its length
		}
		payload, ok := q.open(p, v)
		if !ok {
			if q.keys == nil {
				return false, ErrUnknown
			}
			continue // a packet that does not open (corrupt, or another connection): ignored
		}
		opened = true
		if err := q.frames(payload); err != nil {
			return opened, err
		}
	}
	return opened, nil
}

// longPacket is a long-header packet still protected: packet is the whole packet, pnOffset
// where its (protected) packet number starts.
type longPacket struct {
	version  uint32
	fixed    byte
	typ      byte
	dcid     []byte
	packet   []byte
	pnOffset int
}

// parseLongHeader splits the long-header packet at the start of b (RFC 9000 17.2) from what
// follows it in the datagram.
func parseLongHeader(b []byte) (longPacket, []byte, bool) {
	var p longPacket
	if len(b) < 7 {
		return p, nil, false
	}
	p.fixed = b[0] & 0x40
	p.typ = (b[0] >> 4) & 3
	p.version = binary.BigEndian.Uint32(b[1:5])
	i := 5
	dl := int(b[i])
	i++
	if dl > 20 || len(b) < i+dl+1 {
		return p, nil, false
	}
	p.dcid = b[i : i+dl]
	i += dl
	sl := int(b[i])
	i++
	if sl > 20 || len(b) < i+sl {
		return p, nil, false
	}
	i += sl
	v := quicVersions[p.version]
	if v != nil && p.typ == v.initialType {
		tl, n := varint(b[i:])
		if n == 0 || tl > uint64(len(b)-i-n) {
			return p, nil, false
		}
		i += n + int(tl)
	}
	if v == nil || p.typ == 3 && v == quicVersions[QUICv1] || p.typ == 0 && v == quicVersions[QUICv2] {
		// Retry has no Length (and a client does not send it); nor is an unknown version's
		// layout known.
		return p, nil, false
	}
	l, n := varint(b[i:])
	if n == 0 || l > uint64(len(b)-i-n) {
		return p, nil, false
	}
	i += n
	p.pnOffset = i
	p.packet = b[:i+int(l)]
	return p, b[i+int(l):], true
}

// varint decodes a QUIC variable-length integer (RFC 9000 16); n is 0 when b is too short.
func varint(b []byte) (v uint64, n int) {
	if len(b) == 0 {
		return 0, 0
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n
}

// initialKeys are a client's Initial packet protection keys (RFC 9001 5.2).
type initialKeys struct {
	aead cipher.AEAD
	iv   []byte
	hp   cipher.Block
}

func newInitialKeys(v *quicVersion, dcid []byte) (*initialKeys, error) {
	initial, err := hkdf.Extract(sha256.New, dcid, v.salt)
	if err != nil {
		return nil, err
	}
	client, err := expandLabel(initial, "client in", sha256.Size)
	if err != nil {
		return nil, err
	}
	key, err := expandLabel(client, v.key, 16)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(client, v.iv, 12)
	if err != nil {
		return nil, err
	}
	hpKey, err := expandLabel(client, v.hpLabel, 16)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, err
	}
	return &initialKeys{aead: aead, iv: iv, hp: hp}, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context (RFC 8446 7.1).
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(sha256.New, secret, string(info), length)
}

// open removes p's header protection and decrypts its payload (RFC 9001 5.3, 5.4). It works
// on a copy: the caller's datagram is never modified.
func (q *QUICSniffer) open(p longPacket, v *quicVersion) ([]byte, bool) {
	if q.keys == nil || q.version != p.version || string(q.dcid) != string(p.dcid) {
		if len(p.dcid) < 8 && q.keys == nil {
			return nil, false // a client's first Initial has a DCID of at least 8 bytes
		}
		k, err := newInitialKeys(v, p.dcid)
		if err != nil {
			return nil, false
		}
		if q.keys != nil && q.version == p.version {
			// Another DCID within the flow: open this packet with its own keys, keep the first.
			return k.openPacket(p)
		}
		q.keys, q.version, q.dcid = k, p.version, append([]byte(nil), p.dcid...)
		payload, ok := k.openPacket(p)
		if !ok {
			q.keys, q.version, q.dcid = nil, 0, nil
		}
		return payload, ok
	}
	return q.keys.openPacket(p)
}

func (k *initialKeys) openPacket(p longPacket) ([]byte, bool) {
	const sampleLen = 16
	if len(p.packet) < p.pnOffset+4+sampleLen {
		return nil, false
	}
	var mask [aes.BlockSize]byte
	k.hp.Encrypt(mask[:], p.packet[p.pnOffset+4:p.pnOffset+4+sampleLen])
	first := p.packet[0] ^ mask[0]&0x0f
	pnLen := int(first&3) + 1
	hdr := make([]byte, p.pnOffset+pnLen, len(p.packet))
	copy(hdr, p.packet)
	hdr[0] = first
	var pn uint64
	for i := 0; i < pnLen; i++ {
		hdr[p.pnOffset+i] ^= mask[1+i]
		pn = pn<<8 | uint64(hdr[p.pnOffset+i])
	}
	// The client's first packet numbers are small: the truncated number is the number
	// (no packet has been acknowledged yet, RFC 9000 A.3).
	var nonce [12]byte
	copy(nonce[:], k.iv)
	for i := 0; i < 8; i++ {
		nonce[4+i] ^= byte(pn >> (56 - 8*i))
	}
	ct := p.packet[p.pnOffset+pnLen:]
	if len(ct) < k.aead.Overhead() {
		return nil, false
	}
	out, err := k.aead.Open(hdr[len(hdr):len(hdr)], nonce[:], ct, hdr)
	if err != nil {
		return nil, false
	}
	return out, true
}

// QUIC frame types an Initial carries (RFC 9000 12.4, 19).
const (
	framePadding = 0x00
	framePing    = 0x01
	frameACK     = 0x02
	frameACKECN  = 0x03
	frameCrypto  = 0x06
)

// frames adds the CRYPTO frames of a decrypted Initial payload, skipping PADDING, PING and
// ACK; any other frame ends the packet (a client's Initial carries nothing else the name
// could be in, and CONNECTION_CLOSE ends the flow anyway).
func (q *QUICSniffer) frames(b []byte) error {
	for len(b) > 0 {
		switch b[0] {
		case framePadding, framePing:
			b = b[1:]
		case frameACK, frameACKECN:
			var ok bool
			if b, ok = skipACK(b[1:], b[0] == frameACKECN); !ok {
				return nil
			}
		case frameCrypto:
			off, n := varint(b[1:])
			if n == 0 {
				return nil
			}
			l, m := varint(b[1+n:])
			if m == 0 || l > uint64(len(b)-1-n-m) {
				return nil
			}
			data := b[1+n+m : 1+n+m+int(l)]
			b = b[1+n+m+int(l):]
			if off+l > maxCryptoBytes {
				return ErrNoName
			}
			q.addCrypto(int(off), data)
		default:
			return nil
		}
	}
	return nil
}

// skipACK skips an ACK frame's body (RFC 9000 19.3).
func skipACK(b []byte, ecn bool) ([]byte, bool) {
	b, ok := skipVarints(b, 2) // largest acknowledged, delay
	if !ok {
		return nil, false
	}
	count, n := varint(b)
	if n == 0 || count > uint64(len(b)) {
		return nil, false
	}
	extra := 0
	if ecn {
		extra = 3
	}
	return skipVarints(b[n:], 1+2*int(count)+extra) // first range, gap/length pairs, ECN counts
}

// skipVarints skips n variable-length integers.
func skipVarints(b []byte, n int) ([]byte, bool) {
	for ; n > 0; n-- {
		_, l := varint(b)
		if l == 0 {
			return nil, false
		}
		b = b[l:]
	}
	return b, true
}

// addCrypto records data at off of the CRYPTO stream; what overlaps earlier data is ignored.
func (q *QUICSniffer) addCrypto(off int, data []byte) {
	end := off + len(data)
	if len(data) == 0 {
		return
	}
	if end > len(q.crypto) {
		q.crypto = append(q.crypto, make([]byte, end-len(q.crypto))...)
	}
	copy(q.crypto[off:end], data)
	// Merge [off, end) into the sorted spans.
	out := q.have[:0:0]
	placed := false
	for _, s := range q.have {
		switch {
		case s.to < off:
			out = append(out, s)
		case s.from > end:
			if !placed {
				out = append(out, span{off, end})
				placed = true
			}
			out = append(out, s)
		default:
			off, end = min(off, s.from), max(end, s.to)
		}
	}
	if !placed {
		out = append(out, span{off, end})
	}
	q.have = out
}

// handshakeSNI returns the server name of the TLS ClientHello at the start of msg, a
// handshake message stream without record headers (QUIC's CRYPTO stream, RFC 9001 4).
func handshakeSNI(msg []byte) (string, error) {
	if len(msg) == 0 {
		return "", ErrIncomplete
	}
	if msg[0] != handshakeClientHello {
		return "", ErrUnknown
	}
	if len(msg) < 4 {
		return "", ErrIncomplete
	}
	need := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
	if need > maxCryptoBytes {
		return "", ErrNoName
	}
	if len(msg) < need {
		return "", ErrIncomplete
	}
	return clientHelloSNI(msg[4:need])
}
