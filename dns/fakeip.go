package dns

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"

	"github.com/socksgate/socksgate/internal/state"
)

// Default fake-ip ranges: 198.18.0.0/15 (RFC 2544 benchmarking, as mihomo and sing-box use) and
// fc00::/18 (sing-box's; inside fc00::/8, the half of ULA space no one assigns, so it never
// meets a real ULA prefix, which is fd00::/8).
var (
	DefaultFakeRange4 = netip.MustParsePrefix("198.18.0.0/15")
	DefaultFakeRange6 = netip.MustParsePrefix("fc00::/18")
)

// DefaultFakeIPExclude are the names answered with real addresses in fake-ip mode, after
// mihomo's and OpenClash's filters: local names, NTP and time servers (a clock must be set
// before anything else works), STUN (it reports the address it saw), captive-portal and
// connectivity checks, and consoles' NAT tests.
var DefaultFakeIPExclude = []string{
	// local
	"+.lan", "+.local", "+.localdomain", "+.localhost", "+.home.arpa", "+.internal", "+.invalid", "+.test",
	// NTP and time
	"+.ntp.org", "+.pool.ntp.org", "+.ntp.org.cn", "*.time.edu.cn", "time.*", "time.*.com", "time.*.gov",
	"time.*.edu.cn", "time.*.apple.com", "time1.*.com", "time2.*.com", "time3.*.com", "time4.*.com",
	"time5.*.com", "time6.*.com", "time7.*.com", "ntp.*.com", "ntp1.*.com", "ntp2.*.com", "ntp3.*.com",
	"ntp4.*.com", "ntp5.*.com", "ntp6.*.com", "ntp7.*.com", "time1.cloud.tencent.com",
	// STUN
	"stun.*.*", "stun.*.*.*", "+.stun.*.*", "+.stun.*.*.*", "+.stun.*.*.*.*",
	// connectivity checks
	"+.msftconnecttest.com", "+.msftncsi.com", "+.ipv6.microsoft.com", "captive.apple.com",
	"connectivitycheck.gstatic.com", "+.connectivitycheck.android.com",
	// consoles
	"+.srv.nintendo.net", "+.stun.playstation.net", "xbox.*.microsoft.com", "xnotify.xboxlive.com",
}

// FakeIPConfig configures a FakeIP pool.
type FakeIPConfig struct {
	Range4 netip.Prefix // an IPv4 prefix; zero: DefaultFakeRange4
	// Range6 is an IPv6 prefix; zero: AAAA queries for fake names are answered with no data.
	Range6 netip.Prefix
	// Exclude are more names answered with real addresses (DomainMatcher patterns), on top of
	// DefaultFakeIPExclude unless NoDefaultExclude.
	Exclude          []string
	NoDefaultExclude bool
	// MaxEntries bounds the pool (default and most: the smaller range's size less two).
	MaxEntries int
}

// FakeIP is the fake-ip pool: a name gets one address from each range (the same offset in
// both), kept while it is used; past the pool's size the least recently used name gives its
// addresses up. Answers from the pool carry TTL 1, so that a client asks again rather than
// keep an address the pool may have reused. Safe for concurrent use.
type FakeIP struct {
	range4, range6 netip.Prefix
	exclude        *DomainMatcher
	capacity       int32

	mu         sync.Mutex
	byName     map[string]int32
	slots      []string // slot i holds the name at offset i+1 of each range
	prev, next []int32
	head, tail int32
}

// FakeIPTTL is the TTL of answers from the pool.
const FakeIPTTL = 1

// NewFakeIP checks cfg and returns an empty pool.
func NewFakeIP(cfg FakeIPConfig) (*FakeIP, error) {
	if !cfg.Range4.IsValid() {
		cfg.Range4 = DefaultFakeRange4
	}
	r4, r6 := cfg.Range4.Masked(), cfg.Range6.Masked()
	if !r4.Addr().Is4() {
		return nil, fmt.Errorf("fake-ip range4 %s: not an IPv4 prefix", cfg.Range4)
	}
	capacity := uint64(1)<<(32-r4.Bits()) - 2
	if cfg.Range6.IsValid() {
		if !r6.Addr().Is6() || r6.Addr().Is4In6() {
			return nil, fmt.Errorf("fake-ip range6 %s: not an IPv6 prefix", cfg.Range6)
		}
		if host := 128 - r6.Bits(); host < 63 {
			capacity = min(capacity, uint64(1)<<host-2)
		}
	}
	if cfg.MaxEntries > 0 {
		capacity = min(capacity, uint64(cfg.MaxEntries))
	}
	capacity = min(capacity, 1<<24)
	if capacity < 1 || capacity > 1<<32 {
		return nil, fmt.Errorf("fake-ip range %s is too small: want at least /30", cfg.Range4)
	}
	patterns := cfg.Exclude
	if !cfg.NoDefaultExclude {
		patterns = append(append([]string(nil), DefaultFakeIPExclude...), cfg.Exclude...)
	}
	m, err := NewDomainMatcher(patterns)
	if err != nil {
		return nil, fmt.Errorf("fake-ip exclude: %w", err)
	}
	return &FakeIP{range4: r4, range6: r6, exclude: m, capacity: int32(capacity),
		byName: map[string]int32{}, head: -1, tail: -1}, nil
}

// Excluded reports whether name (canonical) is answered with real addresses.
func (p *FakeIP) Excluded(name string) bool { return p.exclude.Match(name) }

// HasRange6 reports whether the pool answers AAAA.
func (p *FakeIP) HasRange6() bool { return p.range6.IsValid() }

// Ranges returns the pool's ranges (Range6 zero when none): the gateway always captures them.
func (p *FakeIP) Ranges() (netip.Prefix, netip.Prefix) { return p.range4, p.range6 }

// Contains reports whether addr is in one of the pool's ranges.
func (p *FakeIP) Contains(addr netip.Addr) bool {
	addr = addr.Unmap()
	return p.range4.Contains(addr) || (p.range6.IsValid() && p.range6.Contains(addr))
}

// Len is the number of names holding addresses.
func (p *FakeIP) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byName)
}

// Addrs returns name's addresses (v6 invalid without Range6), giving it new ones if it has
// none, and marks it used.
func (p *FakeIP) Addrs(name string) (v4, v6 netip.Addr) {
	p.mu.Lock()
	i, ok := p.byName[name]
	if ok {
		p.touch(i)
	} else {
		i = p.alloc(name)
	}
	p.mu.Unlock()
	return p.addr(p.range4, i), p.addr(p.range6, i)
}

func (p *FakeIP) alloc(name string) int32 {
	var i int32
	if int32(len(p.slots)) < p.capacity {
		i = int32(len(p.slots))
		p.slots = append(p.slots, name)
		p.prev = append(p.prev, -1)
		p.next = append(p.next, -1)
	} else {
		i = p.tail
		p.unlink(i)
		delete(p.byName, p.slots[i])
		p.slots[i] = name
	}
	p.byName[name] = i
	p.pushFront(i)
	return i
}

func (p *FakeIP) touch(i int32) {
	if p.head != i {
		p.unlink(i)
		p.pushFront(i)
	}
}

func (p *FakeIP) unlink(i int32) {
	if p.prev[i] >= 0 {
		p.next[p.prev[i]] = p.next[i]
	} else {
		p.head = p.next[i]
	}
	if p.next[i] >= 0 {
		p.prev[p.next[i]] = p.prev[i]
	} else {
		p.tail = p.prev[i]
	}
}

func (p *FakeIP) pushFront(i int32) {
	p.prev[i], p.next[i] = -1, p.head
	if p.head >= 0 {
		p.prev[p.head] = i
	}
	p.head = i
	if p.tail < 0 {
		p.tail = i
	}
}

// addr is the address at slot i of r: offset i+1 (the prefix's own address is never handed out).
func (p *FakeIP) addr(r netip.Prefix, i int32) netip.Addr {
	if !r.IsValid() {
		return netip.Addr{}
	}
	off := uint64(i) + 1
	if r.Addr().Is4() {
		b := r.Addr().As4()
		var out [4]byte
		binary.BigEndian.PutUint32(out[:], binary.BigEndian.Uint32(b[:])+uint32(off))
		return netip.AddrFrom4(out)
	}
	b := r.Addr().As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	nlo, carry := bits.Add64(lo, off, 0)
	binary.BigEndian.PutUint64(b[:8], hi+carry)
	binary.BigEndian.PutUint64(b[8:], nlo)
	return netip.AddrFrom16(b)
}

// offset returns the slot of addr in r, or false.
func offset(r netip.Prefix, addr netip.Addr) (uint64, bool) {
	if !r.IsValid() || !r.Contains(addr) {
		return 0, false
	}
	a, b := addr.As16(), r.Addr().As16()
	ahi, alo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	bhi, blo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	lo, borrow := bits.Sub64(alo, blo, 0)
	hi, _ := bits.Sub64(ahi, bhi, borrow)
	if hi != 0 || lo == 0 {
		return 0, false
	}
	return lo - 1, true
}

// Lookup returns the name addr was handed out for, and marks it used.
func (p *FakeIP) Lookup(addr netip.Addr) (string, bool) {
	addr = addr.Unmap()
	off, ok := offset(p.range4, addr)
	if !ok {
		if off, ok = offset(p.range6, addr); !ok {
			return "", false
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if off >= uint64(len(p.slots)) {
		return "", false
	}
	i := int32(off)
	p.touch(i)
	return p.slots[i], true
}

// fakeState is the pool as saved: its ranges (a pool saved with others is not loaded) and its
// names by slot, most recently used first.
type fakeState struct {
	Version int           `json:"version"`
	Range4  string        `json:"range4"`
	Range6  string        `json:"range6,omitempty"`
	Entries []fakeStateKV `json:"entries"`
}

type fakeStateKV struct {
	Slot int32  `json:"slot"`
	Name string `json:"name"`
}

// StateFile is the name of the pool's file in the state directory.
const StateFile = "fakeip.json"

// MarshalBinary encodes the pool for Save.
func (p *FakeIP) MarshalBinary() ([]byte, error) {
	p.mu.Lock()
	st := fakeState{Version: 1, Range4: p.range4.String(), Entries: make([]fakeStateKV, 0, len(p.byName))}
	if p.range6.IsValid() {
		st.Range6 = p.range6.String()
	}
	for i := p.head; i >= 0; i = p.next[i] {
		st.Entries = append(st.Entries, fakeStateKV{Slot: i, Name: p.slots[i]})
	}
	p.mu.Unlock()
	return json.Marshal(st)
}

// UnmarshalBinary replaces the pool's contents with b, all or nothing: a pool saved with other
// ranges, a slot out of range, a name twice or undecodable data leave the pool as it was.
func (p *FakeIP) UnmarshalBinary(b []byte) error {
	var st fakeState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("fake-ip state: %w", err)
	}
	if st.Version != 1 {
		return fmt.Errorf("fake-ip state: version %d", st.Version)
	}
	r6 := ""
	if p.range6.IsValid() {
		r6 = p.range6.String()
	}
	if st.Range4 != p.range4.String() || st.Range6 != r6 {
		return fmt.Errorf("fake-ip state: saved for ranges %s %s, now %s %s", st.Range4, st.Range6, p.range4, r6)
	}
	// Slots are dense from 0: a saved pool larger than this one keeps its most recent names
	// only if they fit; simplest and safe is to refuse it.
	n := int32(len(st.Entries))
	if n > p.capacity {
		return fmt.Errorf("fake-ip state: %d names, the pool holds %d", n, p.capacity)
	}
	slots := make([]string, n)
	byName := make(map[string]int32, n)
	order := make([]int32, 0, n)
	for _, e := range st.Entries {
		if e.Slot < 0 || e.Slot >= n || slots[e.Slot] != "" || e.Name == "" {
			return fmt.Errorf("fake-ip state: bad slot %d", e.Slot)
		}
		if _, dup := byName[e.Name]; dup {
			return fmt.Errorf("fake-ip state: %q twice", e.Name)
		}
		slots[e.Slot] = e.Name
		byName[e.Name] = e.Slot
		order = append(order, e.Slot)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slots, p.byName = slots, byName
	p.prev, p.next = make([]int32, n), make([]int32, n)
	p.head, p.tail = -1, -1
	for j := len(order) - 1; j >= 0; j-- { // most recent last pushed to the front
		p.pushFront(order[j])
	}
	return nil
}

// Save writes the pool to the state directory (StateFile).
func (p *FakeIP) Save(d *state.Dir) error {
	b, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	return d.WriteFile(StateFile, b)
}

// Load replaces the pool with the one saved in the state directory. Any error (none saved yet,
// a damaged file, other ranges) leaves the pool as it was: the caller logs it and goes on with
// an empty pool; state.IsMissing tells a first start.
func (p *FakeIP) Load(d *state.Dir) error {
	b, err := d.ReadFile(StateFile)
	if err != nil {
		return err
	}
	return p.UnmarshalBinary(b)
}
