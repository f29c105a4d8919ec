package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// Config is what the Handler decides and resolves with; SetConfig swaps it whole on reload.
type Config struct {
	// Policy decides every query that is not a local name. Nil: such queries are REFUSED.
	Policy Policy
	// Local is the local resolver (the router's own, the DHCP server's): local names always go
	// there and never to the policy's way out. Nil: local names are answered NXDOMAIN.
	Local Exchanger
	// LocalZones are local domains on top of DefaultLocalZones (the DHCP domain).
	LocalZones []string
	// BlockAnswer is how blocked names are answered.
	BlockAnswer BlockAnswer
	// FakeIP, when set, answers A/AAAA for resolved names from the pool (fake-ip mode).
	FakeIP *FakeIP
	// Timeout bounds one query, every server of a sequence included; DefaultTimeout when zero.
	Timeout time.Duration
}

type handlerConfig struct {
	Config
	zones []string
}

// Event describes one answered (or dropped) query, for the gateway's log line and metrics.
type Event struct {
	Client     netip.AddrPort
	Name       string // canonical; "" for a query that could not be read
	Type       uint16
	Action     string // "resolve", "block", "local", "fake", "any", "invalid", "refused"
	Rule       string
	Upstream   string // the Exchanger asked, if any
	Resolution Resolution
	Rcode      int // -1: no answer sent
	Err        error
	Duration   time.Duration
}

// Handler answers DNS queries: it validates them, routes each by its name (local names to the
// local resolver, the rest through the Policy), answers from the cache or asks the decision's
// Exchanger, records real-IP mappings or answers from the fake-ip pool, and fits the answer to
// the client's transport (truncated with TC over UDP when larger than the client's EDNS0
// size). It never forwards the client's EDNS options (an ECS option included) and adds none;
// DO and CD are passed through, AD is returned when the client asked with DO or AD.
//
// Set Cache, Names, Stats and Observe before serving; they are not changed afterwards.
type Handler struct {
	Cache *Cache
	Names *Names
	Stats *Stats
	// Observe, when set, is called once per query with what became of it (at the end).
	Observe func(Event)

	cfg atomic.Pointer[handlerConfig]
}

// NewHandler returns a Handler deciding with cfg.
func NewHandler(cfg Config) *Handler {
	h := &Handler{}
	h.SetConfig(cfg)
	return h
}

// SetConfig replaces the configuration; queries in progress finish with the old one.
func (h *Handler) SetConfig(cfg Config) {
	hc := &handlerConfig{Config: cfg}
	hc.zones = append(append([]string(nil), DefaultLocalZones...), cfg.LocalZones...)
	for i, z := range hc.zones {
		hc.zones[i] = CanonicalName(z)
	}
	if hc.Timeout <= 0 {
		hc.Timeout = DefaultTimeout
	}
	h.cfg.Store(hc)
}

// ServeDNS implements mdns.Handler: the Server, ServeConn and HandlePacket call it.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	client := addrPortOf(w.RemoteAddr())
	_, udp := w.LocalAddr().(*net.UDPAddr)
	if m := h.Answer(context.Background(), client, req, udp); m != nil {
		w.WriteMsg(m)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	// A dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d: they are a.b.c.d to the rules,
	// the real-IP map and the log, as to the flows.
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// forwardedClient is the LAN client a resolver on the router itself (its dnsmasq, with
// add-subnet=32,128) forwards the query for: the address of a full-length EDNS client-subnet
// option, trusted only from loopback. The option is never passed on (see answer).
func forwardedClient(client netip.AddrPort, req *mdns.Msg) netip.AddrPort {
	if !client.Addr().IsLoopback() {
		return client
	}
	opt := req.IsEdns0()
	if opt == nil {
		return client
	}
	for _, o := range opt.Option {
		ecs, ok := o.(*mdns.EDNS0_SUBNET)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(ecs.Address)
		if !ok {
			return client
		}
		a = a.Unmap()
		if int(ecs.SourceNetmask) != a.BitLen() || a.IsUnspecified() {
			return client
		}
		return netip.AddrPortFrom(a, 0)
	}
	return client
}

// blockTTL is the TTL of a synthesized block answer; anyTTL that of the RFC 8482 HINFO.
const (
	blockTTL = 60
	anyTTL   = 3789
)

// Answer returns the reply to req from client, or nil for none (a response, not a query). udp
// says the reply goes back over UDP and must fit the client's size.
func (h *Handler) Answer(ctx context.Context, client netip.AddrPort, req *mdns.Msg, udp bool) *mdns.Msg {
	q := h.begin(client, req)
	m, st := h.decide(ctx, q.client, req, &q.ev)
	if st != nil {
		m = h.resolve(ctx, req, st, &q.ev)
	}
	return h.finish(q, req, m, udp)
}

// queryState is one query being answered: who asked, since when, what became of it so far.
type queryState struct {
	client netip.AddrPort
	start  time.Time
	ev     Event
}

func (h *Handler) begin(client netip.AddrPort, req *mdns.Msg) queryState {
	client = forwardedClient(client, req)
	return queryState{client: client, start: time.Now(), ev: Event{Client: client, Rcode: -1}}
}

// finish fits m, the reply to req, to the client's transport, records its names, and tells
// Observe.
func (h *Handler) finish(q queryState, req, m *mdns.Msg, udp bool) *mdns.Msg {
	if m != nil {
		if udp {
			m.Truncate(udpSize(req))
		}
		q.ev.Rcode = m.Rcode
		if h.Names != nil && m.Rcode == mdns.RcodeSuccess && q.ev.Action != "fake" {
			h.Names.Record(q.client.Addr(), q.ev.Name, m.Answer)
		}
	}
	h.observe(&q)
	return m
}

func (h *Handler) observe(q *queryState) {
	if h.Observe != nil {
		q.ev.Duration = time.Since(q.start)
		h.Observe(q.ev)
	}
}

// udpSize is the largest UDP reply req's client takes (RFC 6891 §6.2.5).
func udpSize(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), mdns.MinMsgSize)
	}
	return mdns.MinMsgSize
}

// packedOPT are the OPT records of our replies (SetEdns0(ednsSize, do)), packed, without and
// with DO: what a cache hit answered from the wire appends.
var packedOPT = func() (opts [2][]byte) {
	for i, do := range []bool{false, true} {
		m := new(mdns.Msg)
		m.SetEdns0(ednsSize, do)
		b := make([]byte, 64)
		n, err := mdns.PackRR(m.Extra[0], b, 0, nil, false)
		if err != nil {
			panic(err)
		}
		opts[i] = b[:n]
	}
	return opts
}()

// AnswerPacket answers req, a UDP query from client that reads pkt, when it can without
// waiting: a cache hit (answered from the packed entry when the reply fits the client's size,
// see Cache.hitWire), or an answer the handler makes up (block, ANY, fake-ip, errors). The
// reply is appended to out. Otherwise later is the rest of the work, which may ask upstream:
// call it off the reading goroutine, once; it returns the reply packed, or nil for none.
func (h *Handler) AnswerPacket(client netip.AddrPort, req *mdns.Msg, pkt, out []byte) (reply []byte, later func() []byte) {
	ctx := context.Background()
	q := h.begin(client, req)
	m, st := h.decide(ctx, q.client, req, &q.ev)
	if st != nil {
		var ok bool
		if reply, ok = h.hit(&q, req, st, pkt, out); ok {
			return reply, nil
		}
		if !st.cached {
			return nil, func() []byte {
				return pack(h.finish(q, req, h.resolve(ctx, req, st, &q.ev), true), nil)
			}
		}
		m = h.resolve(ctx, req, st, &q.ev) // cached, too large for the client: truncated
	}
	return pack(h.finish(q, req, m, true), out), nil
}

func pack(m *mdns.Msg, out []byte) []byte {
	if m == nil {
		return nil
	}
	b, err := m.PackBuffer(out[len(out):cap(out)])
	if err != nil {
		return nil
	}
	if len(out) > 0 {
		return append(out, b...)
	}
	return b
}

// hit answers st from the cache's packed entry when there is one and the reply fits; st.cached
// tells whether there was one at all.
func (h *Handler) hit(q *queryState, req *mdns.Msg, st *resolveStep, pkt, out []byte) ([]byte, bool) {
	var opt []byte
	if req.IsEdns0() != nil {
		opt = packedOPT[b2i(st.do)]
	}
	full, rrs, ok := h.Cache.hitWire(st.k, pkt, req.AuthenticatedData || st.do, opt, out)
	if !ok {
		return out, false
	}
	st.cached = true
	b := full[len(out):]
	if len(b) > udpSize(req) {
		return out, false
	}
	q.ev.Resolution = FromCache
	h.Stats.add(cntCacheHit)
	q.ev.Rcode = int(b[3] & rcodeMask)
	if h.Names != nil && q.ev.Rcode == mdns.RcodeSuccess {
		for _, rr := range rrs {
			if rr.addr == 0 {
				continue
			}
			ip, _ := netip.AddrFromSlice(b[int(rr.end)-int(rr.addr) : rr.end])
			if ip.IsValid() && !ip.IsUnspecified() {
				ttl := binary.BigEndian.Uint32(b[rr.ttl:])
				h.Names.Add(q.client.Addr(), ip, q.ev.Name, time.Duration(ttl)*time.Second)
			}
		}
	}
	h.observe(q)
	return full, true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// reply is an answer to req with rcode, EDNS0 kept when the client used it.
func reply(req *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, opt.Do())
	}
	m.Rcode = rcode
	return m
}

func (h *Handler) invalid(req *mdns.Msg, ev *Event, rcode int) *mdns.Msg {
	h.Stats.add(cntMalformed)
	h.Stats.query("", "invalid")
	ev.Action = "invalid"
	m := reply(req, rcode)
	if rcode == mdns.RcodeFormatError {
		m.Question = nil // what could not be read is not echoed
		if len(req.Question) == 1 {
			m.Question = req.Question
		}
	}
	return m
}

// resolveStep is a query decided and left to resolve through the cache.
type resolveStep struct {
	cfg    *handlerConfig
	ex     Exchanger
	k      CacheKey
	do     bool
	cached bool // the cache had it (AnswerPacket's hit could not use it)
}

// decide validates req and decides it: either the reply (nil for none), or what to resolve.
func (h *Handler) decide(ctx context.Context, client netip.AddrPort, req *mdns.Msg, ev *Event) (*mdns.Msg, *resolveStep) {
	if req.Response {
		ev.Action = "invalid"
		return nil, nil
	}
	cfg := h.cfg.Load()
	if req.Opcode != mdns.OpcodeQuery {
		return h.invalid(req, ev, mdns.RcodeNotImplemented), nil
	}
	if len(req.Question) != 1 {
		return h.invalid(req, ev, mdns.RcodeFormatError), nil
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		return h.invalid(req, ev, mdns.RcodeBadVers), nil // RFC 6891 §6.1.3
	}
	q := req.Question[0]
	ev.Name, ev.Type = CanonicalName(q.Name), q.Qtype
	switch q.Qclass {
	case mdns.ClassINET, mdns.ClassANY:
	default:
		return h.invalid(req, ev, mdns.RcodeNotImplemented), nil
	}
	switch q.Qtype {
	case mdns.TypeAXFR, mdns.TypeIXFR, mdns.TypeMAILA, mdns.TypeMAILB:
		return h.invalid(req, ev, mdns.RcodeNotImplemented), nil
	case mdns.TypeOPT, mdns.TypeTSIG, mdns.TypeTKEY, mdns.TypeNone:
		return h.invalid(req, ev, mdns.RcodeFormatError), nil
	}
	do := opt != nil && opt.Do()
	name := ev.Name

	var d Decision
	if IsLocalName(name, q.Qtype, cfg.zones) {
		d = Decision{Action: Local, Rule: "local"}
	} else if cfg.Policy == nil {
		ev.Action = "refused"
		h.Stats.query("", "refused")
		return reply(req, mdns.RcodeRefused), nil
	} else {
		d = cfg.Policy.Decide(ctx, Query{Client: client, Name: name, Type: q.Qtype})
	}
	ev.Rule, ev.Action = d.Rule, d.Action.String()

	if d.Action == Block {
		h.Stats.query(d.Rule, "block")
		return block(req, cfg.BlockAnswer), nil
	}
	if q.Qtype == mdns.TypeANY { // RFC 8482 §4.2: one synthesized HINFO
		ev.Action = "any"
		h.Stats.query(d.Rule, "any")
		m := reply(req, mdns.RcodeSuccess)
		m.Answer = []mdns.RR{&mdns.HINFO{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeHINFO, Class: mdns.ClassINET, Ttl: anyTTL}, Cpu: "RFC8482"}}
		return m, nil
	}
	ex := d.Exchanger
	if d.Action == Local {
		ex = cfg.Local
		if ex == nil {
			h.Stats.query(d.Rule, "local")
			return reply(req, mdns.RcodeNameError), nil
		}
	} else if d.Action != Resolve {
		h.Stats.query(d.Rule, "refused")
		ev.Action = "refused"
		return reply(req, mdns.RcodeRefused), nil
	} else if cfg.FakeIP != nil && !cfg.FakeIP.Excluded(name) {
		if m := fake(req, cfg.FakeIP, name); m != nil {
			ev.Action = "fake"
			h.Stats.query(d.Rule, "fake")
			return m, nil
		}
	}
	h.Stats.query(d.Rule, ev.Action)
	if ex == nil {
		ev.Err = errors.New("no resolver for this rule")
		return reply(req, mdns.RcodeServerFailure), nil
	}
	ev.Upstream = ex.String()

	k := CacheKey{Way: wayKey(ex), Name: name, Type: q.Qtype, Class: mdns.ClassINET, DO: do, CD: req.CheckingDisabled}
	return nil, &resolveStep{cfg: cfg, ex: ex, k: k, do: do}
}

// resolve answers st, from the cache or upstream.
func (h *Handler) resolve(ctx context.Context, req *mdns.Msg, st *resolveStep, ev *Event) *mdns.Msg {
	k := st.k
	r, res, err := h.Cache.Resolve(ctx, k, h.fetch(st.cfg.Timeout, st.ex, k.Name, k.Type, k.DO, k.CD))
	ev.Resolution = res
	switch res {
	case FromCache:
		h.Stats.add(cntCacheHit)
	case FromCoalesced:
		h.Stats.add(cntCoalesced)
	default:
		h.Stats.add(cntCacheMiss)
	}
	if err != nil {
		ev.Err = err
		return reply(req, mdns.RcodeServerFailure)
	}
	return fromUpstream(req, r, k.DO)
}

// fetch asks ex for name and qtype, bounded by timeout: the Cache's fetch of one query.
func (h *Handler) fetch(timeout time.Duration, ex Exchanger, name string, qtype uint16, do, cd bool) func(context.Context) (*mdns.Msg, error) {
	return func(fctx context.Context) (*mdns.Msg, error) {
		fctx, cancel := context.WithTimeout(fctx, timeout)
		defer cancel()
		up := new(mdns.Msg)
		up.Id = mdns.Id()
		up.RecursionDesired = true
		up.CheckingDisabled = cd
		up.AuthenticatedData = true // RFC 6840 §5.7: we understand AD
		up.Question = []mdns.Question{{Name: mdns.Fqdn(name), Qtype: qtype, Qclass: mdns.ClassINET}}
		up.SetEdns0(ednsSize, do)
		t := time.Now()
		r, err := ex.Exchange(fctx, up)
		h.Stats.upstream(ex.String(), time.Since(t), err, errors.Is(err, ErrGarbage))
		return r, err
	}
}

// Lookup resolves name to its addresses (A and AAAA, asked at once) through ex, sharing the
// cache with the queries the Handler answers: what the gateway uses to resolve a name for a
// flow (a fake-ip flow routed direct, a name an address rule has to decide) the way the
// name's rule says, never through the system's resolver. Fake-ip plays no part here.
func (h *Handler) Lookup(ctx context.Context, ex Exchanger, name string) ([]netip.Addr, error) {
	if ex == nil {
		return nil, errors.New("no resolver for this name")
	}
	cfg := h.cfg.Load()
	name = CanonicalName(name)
	type result struct {
		addrs []netip.Addr
		err   error
	}
	var res [2]result
	var wg sync.WaitGroup
	for i, qtype := range [2]uint16{mdns.TypeA, mdns.TypeAAAA} {
		wg.Go(func() {
			k := CacheKey{Way: wayKey(ex), Name: name, Type: qtype, Class: mdns.ClassINET}
			r, _, err := h.Cache.Resolve(ctx, k, h.fetch(cfg.Timeout, ex, name, qtype, false, false))
			if err != nil {
				res[i].err = err
				return
			}
			if r.Rcode != mdns.RcodeSuccess {
				res[i].err = fmt.Errorf("%s: %s", name, mdns.RcodeToString[r.Rcode])
				return
			}
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *mdns.A:
					if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
						res[i].addrs = append(res[i].addrs, a)
					}
				case *mdns.AAAA:
					if a, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
						res[i].addrs = append(res[i].addrs, a)
					}
				}
			}
		})
	}
	wg.Wait()
	addrs := append(res[0].addrs, res[1].addrs...)
	if len(addrs) == 0 {
		if err := errors.Join(res[0].err, res[1].err); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: no addresses", name)
	}
	return addrs, nil
}

// fromUpstream is the reply to req carrying upstream's answer r: the client's ID, question
// and flags, upstream's records, no EDNS option of upstream's.
func fromUpstream(req, r *mdns.Msg, do bool) *mdns.Msg {
	rcode := r.Rcode
	if rcode > 0xF { // an extended rcode belonged to upstream's OPT, not ours
		rcode = mdns.RcodeServerFailure
	}
	m := reply(req, rcode)
	m.AuthenticatedData = r.AuthenticatedData && (req.AuthenticatedData || do)
	m.Answer, m.Ns = r.Answer, r.Ns
	extra := withoutOPT(r.Extra)
	if o := m.IsEdns0(); o != nil {
		extra = append(extra, o)
	}
	m.Extra = extra
	return m
}

// block is the answer to a blocked query.
func block(req *mdns.Msg, how BlockAnswer) *mdns.Msg {
	if how != BlockUnspecified {
		return reply(req, mdns.RcodeNameError)
	}
	m := reply(req, mdns.RcodeSuccess)
	q := req.Question[0]
	hdr := mdns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: mdns.ClassINET, Ttl: blockTTL}
	switch q.Qtype {
	case mdns.TypeA:
		m.Answer = []mdns.RR{&mdns.A{Hdr: hdr, A: net.IPv4zero.To4()}}
	case mdns.TypeAAAA:
		m.Answer = []mdns.RR{&mdns.AAAA{Hdr: hdr, AAAA: net.IPv6zero}}
	}
	return m
}

// fake answers A/AAAA (and HTTPS/SVCB, whose address hints would bypass the pool, with no
// data) from the pool; nil for other types, which are resolved.
func fake(req *mdns.Msg, p *FakeIP, name string) *mdns.Msg {
	q := req.Question[0]
	switch q.Qtype {
	case mdns.TypeA, mdns.TypeAAAA:
	case mdns.TypeHTTPS, mdns.TypeSVCB:
		return reply(req, mdns.RcodeSuccess)
	default:
		return nil
	}
	m := reply(req, mdns.RcodeSuccess)
	if q.Qtype == mdns.TypeAAAA && !p.HasRange6() {
		return m
	}
	v4, v6 := p.Addrs(name)
	hdr := mdns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: mdns.ClassINET, Ttl: FakeIPTTL}
	if q.Qtype == mdns.TypeA {
		m.Answer = []mdns.RR{&mdns.A{Hdr: hdr, A: v4.AsSlice()}}
	} else {
		m.Answer = []mdns.RR{&mdns.AAAA{Hdr: hdr, AAAA: v6.AsSlice()}}
	}
	return m
}
