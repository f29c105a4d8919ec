package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The Clash-style control API: the external controller of Clash and mihomo, as its
// documentation and the dashboards that speak it (metacubexd, yacd, zashboard) have it, where
// socksgate has the concept. Upstreams and groups are its proxies (a group is a Selector,
// URLTest, Fallback or LoadBalance by its policy), live flows its connections, the rules its
// rules. Everything is read from the Controller at request time; the streams (/traffic,
// /memory, /logs, and /connections over WebSocket) cost nothing while nobody listens.

// Controller is implemented by a Source that can be steered through the Clash-style API.
type Controller interface {
	// Settings are the figures of GET /configs.
	Settings() Settings
	// Reload re-reads the config file as SIGHUP does; an error says why it was not.
	Reload() error
	// Proxies lists the upstreams and groups (the built-in direct first), in the config's
	// order.
	Proxies() []Proxy
	// Select makes member the choice of the select group; errors wrap ErrNoProxy or
	// ErrNotSelectable, or say the member is not one of the group's.
	Select(group, member string) error
	// Delay measures an HTTP(S) request to url through the upstream or group called name: the
	// time until the response's headers. It records the result in the proxy's history.
	Delay(ctx context.Context, name, url string) (time.Duration, error)
	// Rules lists the rules in order with their hit counts.
	Rules() []Rule
	// CloseFlow ends the live flow or UDP session with the id (its client sees the connection
	// close; a UDP session leaves the list at once); false when there is none.
	CloseFlow(id string) bool
	// CloseFlows ends every live flow and returns how many.
	CloseFlows() int
	// Traffic is the bytes carried since the start, both ways, the live flows' included.
	Traffic() (up, down uint64)
	// Logs is where the log lines go while someone streams /logs; nil: no log stream.
	Logs() *LogFeed
}

// Errors of Controller.Select and Delay.
var (
	ErrNoProxy       = errors.New("no such proxy")
	ErrNotSelectable = errors.New("must be a Selector (a group with policy select)")
)

// Settings are what GET /configs reports: the ports (0: not listening) and the log level.
type Settings struct {
	HTTPPort, SOCKSPort, MixedPort, RedirPort, TProxyPort int
	AllowLAN                                              bool   // an explicit port listens beyond loopback
	BindAddress                                           string // "*" when a port listens on every address
	LogLevel                                              string // debug, info, warning, error
	IPv6                                                  bool
}

// Proxy is one upstream, group or built-in way out, as GET /proxies reports it.
type Proxy struct {
	Name    string
	Type    string // Direct, Reject, Socks5, Socks4, Http, Selector, URLTest, Fallback, LoadBalance
	Alive   bool
	UDP     bool
	History []DelaySample // oldest first
	// Groups only:
	Members []string // in order
	Now     string   // the member new flows take ("" when none is up)
	TestURL string   // what the health checks reach through each member
}

// IsGroup reports whether p lists members.
func (p Proxy) IsGroup() bool { return p.Members != nil }

// DelaySample is one latency measurement; Delay 0 is a failed one.
type DelaySample struct {
	Time  time.Time
	Delay time.Duration
}

// Rule is one rule as GET /rules reports it.
type Rule struct {
	Name    string // socksgate's name for it
	Type    string // the Clash rule type its matchers amount to: DomainSuffix, IPCIDR, AND, Match...
	Payload string
	Proxy   string // the upstream or group it sends to; DIRECT, REJECT
	Hits    uint64 // flows it decided
}

// GlobalName is the pseudo-group every Clash dashboard looks for: its members list every
// proxy, in order. socksgate has no global mode, so it cannot be selected.
const GlobalName = "GLOBAL"

func clashRoutes(mux *http.ServeMux, src Source, c Controller, version string) {
	h := &clash{src: src, c: c, version: version, traffic: newSampler(c.Traffic)}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeCompact(w, map[string]string{"hello": "socksgate"})
	})
	mux.HandleFunc("GET /version", h.getVersion)
	mux.HandleFunc("GET /configs", h.getConfigs)
	mux.HandleFunc("PUT /configs", h.putConfigs)
	mux.HandleFunc("GET /proxies", h.getProxies)
	mux.HandleFunc("GET /proxies/{name}", h.getProxy)
	mux.HandleFunc("PUT /proxies/{name}", h.putProxy)
	mux.HandleFunc("GET /proxies/{name}/delay", h.getDelay)
	mux.HandleFunc("GET /group", h.getGroups)
	mux.HandleFunc("GET /group/{name}", h.getProxy)
	mux.HandleFunc("GET /group/{name}/delay", h.getGroupDelay)
	mux.HandleFunc("GET /providers/proxies", h.noProviders)
	mux.HandleFunc("GET /providers/rules", h.noProviders)
	mux.HandleFunc("GET /rules", h.getRules)
	mux.HandleFunc("GET /connections", h.getConnections)
	mux.HandleFunc("DELETE /connections", h.deleteConnections)
	mux.HandleFunc("DELETE /connections/{id}", h.deleteConnection)
	mux.HandleFunc("GET /traffic", h.streamTraffic)
	mux.HandleFunc("GET /memory", h.streamMemory)
	mux.HandleFunc("GET /logs", h.streamLogs)
	mux.HandleFunc("GET /dns", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, src.Snapshot().DNS)
	})
}

type clash struct {
	src     Source
	c       Controller
	version string
	traffic *sampler
}

// writeCompact writes v as one line of JSON, as the Clash API answers.
func writeCompact(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(v)
}

func (h *clash) getVersion(w http.ResponseWriter, r *http.Request) {
	writeCompact(w, struct {
		Version string `json:"version"`
		Meta    bool   `json:"meta"`
	}{"socksgate " + h.version, true})
}

func (h *clash) getConfigs(w http.ResponseWriter, r *http.Request) {
	s := h.c.Settings()
	bind := s.BindAddress
	if bind == "" {
		bind = "127.0.0.1"
	}
	writeCompact(w, map[string]any{
		"port": s.HTTPPort, "socks-port": s.SOCKSPort, "mixed-port": s.MixedPort,
		"redir-port": s.RedirPort, "tproxy-port": s.TProxyPort,
		"allow-lan": s.AllowLAN, "bind-address": bind, "mode": "rule", "log-level": s.LogLevel,
		"ipv6": s.IPv6, "authentication": []string{},
		"tun": map[string]any{"enable": false},
	})
}

// putConfigs reloads: the config file is re-read, as SIGHUP does. A body naming another file
// or carrying a config is refused: the file is the one source of socksgate's config.
func (h *clash) putConfigs(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path    string `json:"path"`
		Payload string `json:"payload"`
	}
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Payload != "" {
		writeError(w, http.StatusBadRequest, "socksgate reloads its config file; a payload is not taken: edit the file")
		return
	}
	if err := h.c.Reload(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// decodeBody reads an optional JSON body of at most 64 KiB into v; an empty body leaves v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	return nil
}

// proxyJSON is a proxy as mihomo's adapters marshal it; the group fields only for groups.
func proxyJSON(p Proxy) map[string]any {
	hist := make([]map[string]any, 0, len(p.History))
	for _, d := range p.History {
		hist = append(hist, map[string]any{"time": d.Time.UTC().Format(time.RFC3339Nano), "delay": d.Delay.Milliseconds()})
	}
	m := map[string]any{
		"name": p.Name, "id": p.Name, "type": p.Type, "alive": p.Alive, "history": hist, "extra": map[string]any{},
		"udp": p.UDP, "xudp": false, "tfo": false, "mptcp": false, "smux": false,
	}
	if p.IsGroup() {
		m["all"] = p.Members
		m["now"] = p.Now
		m["testUrl"] = p.TestURL
		m["hidden"] = false
		m["icon"] = ""
		m["fixed"] = ""
		m["expectedStatus"] = "*"
	}
	return m
}

// proxies is every proxy by name, GLOBAL included (last, listing the others in order).
func (h *clash) proxies() (map[string]map[string]any, []Proxy) {
	ps := h.c.Proxies()
	out := make(map[string]map[string]any, len(ps)+1)
	names := make([]string, 0, len(ps))
	for _, p := range ps {
		out[p.Name] = proxyJSON(p)
		names = append(names, p.Name)
	}
	global := Proxy{Name: GlobalName, Type: "Selector", Alive: true, Members: names}
	if len(names) > 0 {
		global.Now = names[0]
	}
	out[GlobalName] = proxyJSON(global)
	return out, append(ps, global)
}

func (h *clash) getProxies(w http.ResponseWriter, r *http.Request) {
	all, _ := h.proxies()
	writeCompact(w, map[string]any{"proxies": all})
}

func (h *clash) getGroups(w http.ResponseWriter, r *http.Request) {
	_, ps := h.proxies()
	groups := []map[string]any{}
	for _, p := range ps {
		if p.IsGroup() && p.Name != GlobalName {
			groups = append(groups, proxyJSON(p))
		}
	}
	writeCompact(w, map[string]any{"proxies": groups})
}

func (h *clash) getProxy(w http.ResponseWriter, r *http.Request) {
	all, _ := h.proxies()
	p, ok := all[r.PathValue("name")]
	if !ok {
		writeError(w, http.StatusNotFound, "Resource not found")
		return
	}
	writeCompact(w, p)
}

func (h *clash) putProxy(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeBody(w, r, &req); err != nil || req.Name == "" {
		writeError(w, http.StatusBadRequest, `Body invalid: want {"name": MEMBER}`)
		return
	}
	group := r.PathValue("name")
	if group == GlobalName {
		writeError(w, http.StatusBadRequest, "socksgate has no global mode: choose the member of a select group")
		return
	}
	err := h.c.Select(group, req.Name)
	switch {
	case errors.Is(err, ErrNoProxy):
		writeError(w, http.StatusNotFound, "Resource not found")
	case err != nil:
		writeError(w, http.StatusBadRequest, "Selector update error: "+err.Error())
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// delayParams reads ?url= (http or https) and ?timeout= (milliseconds, required as mihomo has
// it).
func delayParams(r *http.Request) (string, time.Duration, error) {
	q := r.URL.Query()
	u, err := url.Parse(q.Get("url"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", 0, errors.New("url: want an http:// or https:// URL")
	}
	ms, err := strconv.ParseUint(q.Get("timeout"), 10, 16)
	if err != nil || ms == 0 {
		return "", 0, errors.New("timeout: want milliseconds, 1 to 65535")
	}
	return u.String(), time.Duration(ms) * time.Millisecond, nil
}

func (h *clash) getDelay(w http.ResponseWriter, r *http.Request) {
	target, timeout, err := delayParams(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "Body invalid: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	d, err := h.c.Delay(ctx, r.PathValue("name"), target)
	switch {
	case errors.Is(err, ErrNoProxy):
		writeError(w, http.StatusNotFound, "Resource not found")
	case ctx.Err() != nil:
		writeError(w, http.StatusGatewayTimeout, "Timeout")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "An error occurred in the delay test: "+err.Error())
	default:
		writeCompact(w, map[string]int64{"delay": max(d.Milliseconds(), 1)})
	}
}

// getGroupDelay tests every member of a group at once: {member: ms}, failed ones left out, as
// mihomo answers.
func (h *clash) getGroupDelay(w http.ResponseWriter, r *http.Request) {
	target, timeout, err := delayParams(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "Body invalid: "+err.Error())
		return
	}
	var group *Proxy
	for _, p := range h.c.Proxies() {
		if p.Name == r.PathValue("name") && p.IsGroup() {
			group = &p
			break
		}
	}
	if group == nil {
		writeError(w, http.StatusNotFound, "Resource not found")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]int64{}
	for _, m := range group.Members {
		wg.Go(func() {
			if d, err := h.c.Delay(ctx, m, target); err == nil {
				mu.Lock()
				out[m] = max(d.Milliseconds(), 1)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil && len(out) == 0 {
		writeError(w, http.StatusGatewayTimeout, "Timeout")
		return
	}
	writeCompact(w, out)
}

func (h *clash) noProviders(w http.ResponseWriter, r *http.Request) {
	writeCompact(w, map[string]any{"providers": map[string]any{}})
}

func (h *clash) getRules(w http.ResponseWriter, r *http.Request) {
	rules := h.c.Rules()
	out := make([]map[string]any, 0, len(rules))
	for i, ru := range rules {
		out = append(out, map[string]any{
			"index": i, "type": ru.Type, "payload": ru.Payload, "proxy": ru.Proxy, "size": -1,
			"extra": map[string]any{"disabled": false, "hitCount": ru.Hits, "missCount": 0, "name": ru.Name},
		})
	}
	writeCompact(w, map[string]any{"rules": out})
}

// clashTypes are the Clash inbound types of socksgate's inbounds.
var clashTypes = map[string]string{
	"redirect": "Redir", "tproxy": "TProxy", "http": "HTTP", "socks": "Socks5", "router": "Redir",
}

// connection is one flow as the Clash API's connection.
type connection struct {
	ID          string             `json:"id"`
	Metadata    connectionMetadata `json:"metadata"`
	Upload      uint64             `json:"upload"`
	Download    uint64             `json:"download"`
	Start       string             `json:"start"`
	Chains      []string           `json:"chains"`
	Rule        string             `json:"rule"`
	RulePayload string             `json:"rulePayload"`
	RuleName    string             `json:"ruleName"` // socksgate's: the name of the rule that routed it
}

type connectionMetadata struct {
	Network           string `json:"network"`
	Type              string `json:"type"`
	SourceIP          string `json:"sourceIP"`
	SourcePort        string `json:"sourcePort"`
	DestinationIP     string `json:"destinationIP"`
	DestinationPort   string `json:"destinationPort"`
	Host              string `json:"host"`
	SniffHost         string `json:"sniffHost"`
	DNSMode           string `json:"dnsMode"`
	InboundName       string `json:"inboundName"`
	Process           string `json:"process"`
	ProcessPath       string `json:"processPath"`
	RemoteDestination string `json:"remoteDestination"`
	SpecialProxy      string `json:"specialProxy"`
	SpecialRules      string `json:"specialRules"`
	SourceMAC         string `json:"sourceMAC"`    // socksgate's: the LAN device's MAC
	SourceDevice      string `json:"sourceDevice"` // socksgate's: the LAN device's name
	InboundUser       string `json:"inboundUser"`  // the user that authenticated on the explicit port
}

// connections is GET /connections' body: the live flows, the totals and the memory in use.
type connections struct {
	DownloadTotal uint64       `json:"downloadTotal"`
	UploadTotal   uint64       `json:"uploadTotal"`
	Connections   []connection `json:"connections"`
	Memory        uint64       `json:"memory"`
}

func splitHostPortString(s string) (string, string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s, ""
	}
	return host, port
}

func (h *clash) connections() connections {
	flows := h.src.Flows()
	rules := map[string]Rule{}
	for _, r := range h.c.Rules() {
		rules[r.Name] = r
	}
	up, down := h.c.Traffic()
	out := connections{UploadTotal: up, DownloadTotal: down, Memory: residentBytes(), Connections: make([]connection, 0, len(flows))}
	for _, f := range flows {
		c := connection{ID: f.ID, Upload: f.BytesUp, Download: f.BytesDown, Start: f.Start.UTC().Format(time.RFC3339Nano), Chains: chains(f), RuleName: f.Rule}
		if ru, ok := rules[f.Rule]; ok {
			c.Rule, c.RulePayload = ru.Type, ru.Payload
		} else {
			c.Rule = f.Rule
		}
		md := &c.Metadata
		md.Network, md.InboundName, md.SourceMAC, md.SourceDevice = f.Network, f.Inbound, f.MAC, f.Device
		md.InboundUser = f.User
		md.Type = clashTypes[f.Inbound]
		md.SourceIP, md.SourcePort = splitHostPortString(f.Src)
		md.DestinationIP, md.DestinationPort = splitHostPortString(f.Dst)
		if md.DestinationIP == f.Name { // a flow known only by its name has no address yet
			md.DestinationIP = ""
		}
		md.DNSMode = "normal"
		switch f.NameFrom {
		case "sniff":
			md.SniffHost = f.Name
		case "fakeip":
			md.Host, md.DNSMode = f.Name, "fake-ip"
		default:
			md.Host = f.Name
		}
		out.Connections = append(out.Connections, c)
	}
	return out
}

// chains is the Clash API's chain of a flow, innermost first: [member, group], [upstream],
// [DIRECT], [REJECT] for a blocked one, [] while it is being routed.
func chains(f Flow) []string {
	switch {
	case f.Way == "direct":
		return []string{"DIRECT"}
	case f.Way != "" && f.Member != "":
		return []string{f.Member, f.Way}
	case f.Way != "":
		return []string{f.Way}
	case f.Action == "block":
		return []string{"REJECT"}
	}
	return []string{}
}

func (h *clash) getConnections(w http.ResponseWriter, r *http.Request) {
	if !isUpgrade(r) {
		writeCompact(w, h.connections())
		return
	}
	interval := time.Second
	if s := r.URL.Query().Get("interval"); s != "" {
		ms, err := strconv.ParseUint(s, 10, 32)
		if err != nil || ms < 100 {
			writeError(w, http.StatusBadRequest, "interval: want milliseconds, at least 100")
			return
		}
		interval = time.Duration(ms) * time.Millisecond
	}
	st, err := openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if st.send(h.connections()) != nil {
			return
		}
		select {
		case <-st.done():
			return
		case <-t.C:
		}
	}
}

func (h *clash) deleteConnections(w http.ResponseWriter, r *http.Request) {
	h.c.CloseFlows()
	w.WriteHeader(http.StatusNoContent)
}

// deleteConnection closes one flow; an unknown id is no error (it may have just ended), as
// mihomo answers.
func (h *clash) deleteConnection(w http.ResponseWriter, r *http.Request) {
	h.c.CloseFlow(r.PathValue("id"))
	w.WriteHeader(http.StatusNoContent)
}

// Traffic is bytes each way (up from the client or device, down to it): one second's as
// /traffic streams it, or a device's totals in /devices.
type Traffic struct {
	Up   uint64 `json:"up"`
	Down uint64 `json:"down"`
}

func (h *clash) streamTraffic(w http.ResponseWriter, r *http.Request) {
	ch, leave := h.traffic.join()
	defer leave()
	st, err := openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	forward(st, ch, nil)
}

func (h *clash) streamMemory(w http.ResponseWriter, r *http.Request) {
	st, err := openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if st.send(struct {
			Inuse   uint64 `json:"inuse"`
			OSLimit uint64 `json:"oslimit"`
		}{residentBytes(), 0}) != nil {
			return
		}
		select {
		case <-st.done():
			return
		case <-t.C:
		}
	}
}

// logLevels rank the Clash log levels; a /logs client gets its level and those above.
var logLevels = map[string]int{"debug": 0, "info": 1, "warning": 2, "error": 3, "silent": 4}

func (h *clash) streamLogs(w http.ResponseWriter, r *http.Request) {
	level := r.URL.Query().Get("level")
	if level == "" {
		level = "info"
	}
	min, ok := logLevels[level]
	if !ok {
		writeError(w, http.StatusBadRequest, "level: want debug, info, warning, error or silent")
		return
	}
	feed := h.c.Logs()
	if feed == nil {
		writeError(w, http.StatusNotFound, "no log stream")
		return
	}
	// Listening before the response's headers go out: a client that has them sees every line
	// logged from then on.
	ch, leave := feed.join()
	defer leave()
	st, err := openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	forward(st, ch, func(l LogLine) bool { return logLevels[l.Type] >= min })
}

// sampler reads the traffic totals once a second while anyone streams /traffic, and hands each
// listener the second's difference: one walk of the live flows a second, however many listen.
type sampler struct {
	read func() (up, down uint64)
	tick time.Duration
	subs hub[Traffic]
}

func newSampler(read func() (up, down uint64)) *sampler {
	s := &sampler{read: read, tick: time.Second}
	var stop chan struct{}
	s.subs.first = func() { stop = make(chan struct{}); go s.run(stop) }
	s.subs.last = func() { close(stop) }
	return s
}

// join subscribes to the samples; leave unsubscribes, and the last to leave stops the
// sampling. A listener still writing the last sample skips the next.
func (s *sampler) join() (<-chan Traffic, func()) { return s.subs.join(1) }

func (s *sampler) run(stop chan struct{}) {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	up, down := s.read()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		u, d := s.read()
		// A flow's bytes move from the live count (its client socket's) to the ended one
		// (the relay's) when it ends; the two may differ by a handshake: never negative.
		s.subs.publish(Traffic{Up: u - min(u, up), Down: d - min(d, down)})
		up, down = u, d
	}
}

// LogLine is one log line as /logs streams it: Type is debug, info, warning or error.
type LogLine struct {
	Type    string `json:"type"`
	Payload string `json:"payload"`
}

// LogFeed hands log lines to the /logs streams. Publish costs one atomic load while nobody
// listens; a listener that falls behind misses lines rather than slowing the logger.
type LogFeed struct{ subs hub[LogLine] }

// Listening reports whether anyone streams /logs now.
func (f *LogFeed) Listening() bool { return f.subs.listening() }

// Publish hands a line to every listener that has room for it.
func (f *LogFeed) Publish(l LogLine) { f.subs.publish(l) }

func (f *LogFeed) join() (<-chan LogLine, func()) { return f.subs.join(256) }
