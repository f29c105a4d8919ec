// Package admin serves socksgate's operations endpoint: Prometheus metrics (/metrics, in the
// text exposition format 0.0.4, written by a small writer of its own so the binary carries no
// Prometheus client library), the live flows (/flows) and upstream health (/upstreams) as
// JSON, a liveness probe (/healthz), and the web dashboard at /ui/ (embedded, see ui.go). It reads everything from a Source at request time, so the data
// path pays nothing for an endpoint nobody asks; it also holds the client side that
// `socksgate status` uses. It imports nothing of socksgate, so the gateway can start it.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Flow is one live flow as /flows reports it.
type Flow struct {
	ID        string    `json:"id"`                  // stable for the flow's life; the Clash API's connection id
	MAC       string    `json:"mac,omitempty"`       // the LAN device's MAC (aa:bb:cc:dd:ee:ff), when known
	Device    string    `json:"device,omitempty"`    // the device's name (DHCP hostname or reverse DNS), when known
	Network   string    `json:"network"`             // tcp or udp
	Src       string    `json:"src"`                 // client address
	Dst       string    `json:"dst"`                 // original destination ("" when the client gave only a name)
	Name      string    `json:"name,omitempty"`      // destination name, when known
	NameFrom  string    `json:"name_from,omitempty"` // where the name came from: client, dns, fakeip, sniff
	Inbound   string    `json:"inbound"`             // redirect, tproxy, http, socks, router
	User      string    `json:"user,omitempty"`      // the user that authenticated on an explicit port
	Upstream  string    `json:"upstream,omitempty"`  // redacted; empty while the flow is still being routed
	Rule      string    `json:"rule,omitempty"`      // the rule that matched
	Action    string    `json:"action,omitempty"`    // proxy, direct, block
	Start     time.Time `json:"start"`
	Age       float64   `json:"age_seconds"`
	BytesUp   uint64    `json:"bytes_up"`   // client → destination, as the client socket counts it
	BytesDown uint64    `json:"bytes_down"` // destination → client
	// Way is the upstream or group the flow's rule named, by its config name ("direct" for a
	// direct rule; empty while routing and for a block); Member the group member carrying it.
	Way    string `json:"way,omitempty"`
	Member string `json:"member,omitempty"`
}

// Upstream is one upstream's health as /upstreams and the socksgate_upstream_up metric report it.
type Upstream struct {
	Name   string    `json:"name"`
	Group  string    `json:"group,omitempty"` // the group this state belongs to; "" for a plain upstream
	URL    string    `json:"url,omitempty"`   // redacted
	Up     bool      `json:"up"`
	Reason string    `json:"reason,omitempty"` // why it is down, or how its state is known
	Since  time.Time `json:"since,omitzero"`
}

// FlowCount is the totals of the ended flows sharing one (inbound, upstream, outcome).
type FlowCount struct {
	Inbound, Upstream, Outcome string
	Flows, BytesUp, BytesDown  uint64
}

// ActiveCount is the number of live flows sharing one (inbound, upstream).
type ActiveCount struct {
	Inbound, Upstream string
	Flows             int
}

// Histogram is a cumulative histogram as Prometheus exposes it.
type Histogram struct {
	Upstream string
	Count    uint64
	Sum      float64            // seconds
	Buckets  map[float64]uint64 // upper bound (seconds) → cumulative count
}

// Snapshot is every counter at one moment.
type Snapshot struct {
	Active            []ActiveCount
	Ended             []FlowCount
	Refused           map[string]uint64 // reason → flows refused before routing
	DialLatency       []Histogram       // routing + dial + upstream handshake, successful dials
	UDPSessions       int64
	UDPSessionsTotal  uint64
	ReplyBindFailures uint64
	SOCKSUDPDropped   SOCKSUDPDrops // explicit SOCKS5 UDP relay
	DNS               *DNSStats     // nil: dns off
	RulesRestored     uint64        // kernel rules put back after someone else removed them
	RuleSets          []RuleSetStats
	DirectPrefixes    int         // prefixes in the kernel's direct sets (hoisted direct rules)
	GeoIP             *GeoIPStats // nil: no country database
}

// RuleSetStats is one rule set's state.
type RuleSetStats struct {
	Name       string
	Entries    int
	LoadErrors uint64    // loads of its file refused (unreadable, unparsable) since start
	LastLoad   time.Time // the last load that put a version in force; zero: none
	OK         bool      // the last load went well
}

// GeoIPStats is the state of the country database (geoip.path).
type GeoIPStats struct {
	Path     string
	Type     string    // the database's kind, of the version in force
	Loaded   time.Time // when the version in force was read
	Err      string    // why the last load failed (the version in force stays); "" when it succeeded
	Failures uint64    // loads that failed
	Reloads  uint64    // loads that succeeded after the first
}

// DNSStats are the counters of socksgate's DNS.
type DNSStats struct {
	Queries        []DNSQueryCount
	CacheHits      uint64
	CacheMisses    uint64
	Coalesced      uint64
	UpstreamErrors map[string]uint64 // by resolver
	RateLimited    uint64
	RefusedSource  uint64
	Malformed      uint64
	Overloaded     uint64      // queries dropped: too many waiting for their resolvers
	Latency        []Histogram // by resolver (Histogram.Upstream)
	CacheEntries   int
	CacheBytes     int
	Mappings       int // real-IP map entries
	FakeIPs        int // fake-ip pool entries
}

// DNSQueryCount is the queries a rule decided one way.
type DNSQueryCount struct {
	Rule, Action string
	Queries      uint64
}

// SOCKSUDPDrops count the datagrams the explicit SOCKS5 UDP relay dropped, by reason.
type SOCKSUDPDrops struct {
	ForeignSource uint64 // not from the association's client socket
	Fragment      uint64 // FRAG != 0: reassembly is not supported
	Malformed     uint64 // unparsable SOCKS5 UDP header
}

// Source is what the endpoint reads; the gateway implements it.
type Source interface {
	Snapshot() Snapshot
	Flows() []Flow
	Upstreams() []Upstream
}

// HealthChecker is implemented by a Source that knows of parts that should be serving and are
// not (a listener that stopped with an error). While Unhealthy lists any, /healthz answers 503
// with one reason a line; otherwise 200 "ok".
type HealthChecker interface {
	Unhealthy() []string
}

// ServingReporter is implemented by a Source that knows the LAN gateway addresses an HA pair
// moves between its routers (ha.vip): vip are those addresses, held the ones this router has
// on an interface now. This router is serving while it holds any. With no vip, nothing is
// reported.
type ServingReporter interface {
	Serving() (vip, held []netip.Addr)
}

// Handler serves /metrics, /flows, /upstreams and /healthz from src, and the dashboard at /ui/. version labels
// socksgate_build_info.
func Handler(src Source, version string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(src, version))
	registerUI(mux)
	mux.HandleFunc("GET /flows", func(w http.ResponseWriter, r *http.Request) {
		flows := src.Flows()
		if flows == nil {
			flows = []Flow{}
		}
		writeJSON(w, flows)
	})
	mux.HandleFunc("GET /upstreams", func(w http.ResponseWriter, r *http.Request) {
		ups := src.Upstreams()
		if ups == nil {
			ups = []Upstream{}
		}
		writeJSON(w, ups)
	})
	if c, ok := src.(Controller); ok {
		clashRoutes(mux, src, c, version)
	}
	if ds, ok := src.(DeviceSource); ok {
		mux.HandleFunc("GET /devices", devicesHandler(ds))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var down []string
		if hc, ok := src.(HealthChecker); ok {
			down = hc.Unhealthy()
		}
		if len(down) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		} else {
			down = []string{"ok"}
		}
		for _, line := range down {
			fmt.Fprintln(w, line)
		}
		// Whether this router serves is not its health: a standby answers 200 too, or the
		// VRRP track script on it would keep it from ever taking over.
		if vip, held, ok := serving(src); ok {
			line, as := "serving: holds", held
			if len(held) == 0 {
				line, as = "standby: holds none of", vip
			}
			for _, a := range as {
				line += " " + a.String()
			}
			fmt.Fprintln(w, line)
		}
	})
	return mux
}

// serving is src's ServingReporter answer; ok is false when src has none or no vip.
func serving(src Source) (vip, held []netip.Addr, ok bool) {
	if sr, is := src.(ServingReporter); is {
		vip, held = sr.Serving()
	}
	return vip, held, len(vip) > 0
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeError answers status with the Clash API's error body, {"message": msg}.
func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Message string `json:"message"`
	}{msg})
}

// Server is a running admin endpoint.
type Server struct {
	guard  *guard
	srv    *http.Server
	ln     net.Listener
	err    chan error
	once   sync.Once
	closed error
}

// Listen opens addr (host:port) and serves Handler(src, version) on it until Close, to the
// clients access lets in.
func Listen(addr string, src Source, version string, access Access) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	g := newGuard(Handler(src, version), access)
	s := &Server{
		guard: g,
		srv: &http.Server{
			Handler:           g,
			ReadHeaderTimeout: 5 * time.Second,
			// No ReadTimeout or WriteTimeout: the streams (/traffic, /logs, /connections
			// over WebSocket) last as long as their client; every other handler answers
			// at once, and a body is read through http.MaxBytesReader.
			IdleTimeout:    time.Minute,
			MaxHeaderBytes: 16 << 10,
		},
		ln:  ln,
		err: make(chan error, 1),
	}
	go func() { s.err <- s.srv.Serve(ln) }()
	return s, nil
}

// SetAccess replaces who may use the endpoint (a reload that changed the secret or the
// origins), for the requests that come from now on.
func (s *Server) SetAccess(a Access) { s.guard.set(a) }

// Addr is the address the endpoint listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the endpoint: /healthz stops answering at once; requests in progress get a
// second to finish.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			err = s.srv.Close()
		}
		if serr := <-s.err; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		s.closed = err
	})
	return s.closed
}

// Client reads a running socksgate's admin endpoint; `socksgate status` uses it.
type Client struct {
	Base   string       // "http://127.0.0.1:9091"
	Secret string       // the endpoint's secret (admin.secret), sent as a bearer token; "": none
	HTTP   *http.Client // nil: a client with a 5s timeout
}

// Flows fetches /flows.
func (c Client) Flows(ctx context.Context) ([]Flow, error) {
	var v []Flow
	return v, c.get(ctx, "/flows", &v)
}

// Upstreams fetches /upstreams.
func (c Client) Upstreams(ctx context.Context) ([]Upstream, error) {
	var v []Upstream
	return v, c.get(ctx, "/upstreams", &v)
}

func (c Client) get(ctx context.Context, path string, v any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path, nil)
	if err != nil {
		return fmt.Errorf("admin %s: %w", path, err)
	}
	if c.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.Secret)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("admin %s: %s: the endpoint has a secret (admin.secret): give the config with -c", path, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin %s: %s", path, resp.Status)
	}
	if err := DecodeJSON(resp.Body, v); err != nil {
		return fmt.Errorf("admin %s: %w", path, err)
	}
	return nil
}

// DecodeJSON decodes one JSON document of at most 64 MiB from r into v.
func DecodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(r, 64<<20))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}
