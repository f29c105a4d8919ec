package configs

import (
	"bytes"
	_ "embed"
	"encoding"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/socksgate/socksgate/relay"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration file, a commented
// reference of every key.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Default returns the embedded default configuration, parsed and validated.
// It lets socksgate run with no file: explicit proxy ports on loopback, no
// capture, no upstreams, every flow direct.
func Default() *Config {
	c, err := Parse(defaultYAML)
	if err != nil {
		panic("configs: embedded default.yaml is invalid: " + err.Error())
	}
	return c
}

// Load reads the file at path and returns its configuration with defaults
// applied, validated. Problems in the file come back as a *ValidationError
// whose File is path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := parse(data, filepath.Dir(path))
	if err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			ve.File = path
		}
		return nil, err
	}
	return c, nil
}

// Parse parses a YAML configuration strictly, applies defaults and
// validates it. An empty document is the all-defaults configuration. Every
// problem found comes back together in a *ValidationError: first those of
// the document itself (syntax, unknown keys, malformed values, each with its
// line and field path), or, when the document is well-formed, those of
// Validate.
func Parse(data []byte) (*Config, error) { return parse(data, "") }

// parse is Parse for a document read from a file in dir ("": none), against which the
// relative file names it holds (upstreams' tls.ca) are read.
func parse(data []byte, dir string) (*Config, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	c.resolveFiles(dir)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode turns data into a finished, not yet validated Config.
func decode(data []byte) (*Config, error) {
	c := defaults()
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			c.finish()
			return c, nil
		}
		return nil, yamlError(err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, yamlError(err)
		}
		return nil, &ValidationError{Problems: []string{
			fmt.Sprintf("line %d: only one YAML document is allowed", more.Line)}}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	c.deprecated = retire(root)
	w := walker{seen: map[walkKey]bool{}}
	w.walk(root, reflect.TypeFor[Config](), "")
	if len(w.problems) > 0 {
		return nil, &ValidationError{Problems: w.problems}
	}
	// The walk above has checked every key and value, and has turned each
	// scalar written where a list of scalars is expected into a list of one,
	// so the tree it leaves is what is decoded (not the text again).
	if err := doc.Decode(c); err != nil {
		return nil, yamlError(err)
	}
	c.finish()
	return c, nil
}

// retire rewrites, in the document's top-level mapping, the values that are
// no longer available but still accepted into their replacements, and returns
// a warning for each: relay: kernel (the removed sockmap relay) is read as
// relay: auto.
func retire(root *yaml.Node) []string {
	if root.Kind != yaml.MappingNode {
		return nil
	}
	var warnings []string
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if v.Kind == yaml.AliasNode && v.Alias != nil {
			v = v.Alias
		}
		if k.Kind != yaml.ScalarNode || k.Value != "relay" || v.Kind != yaml.ScalarNode ||
			!strings.EqualFold(strings.TrimSpace(v.Value), "kernel") {
			continue
		}
		// A new node: an alias target may be used elsewhere as a plain value.
		root.Content[i+1] = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: relay.Auto.String(), Line: v.Line, Column: v.Column}
		warnings = append(warnings, `relay: "kernel" is no longer available (the sockmap relay was removed: it loses or duplicates bytes on current kernels); using its replacement, auto: write relay: auto`)
	}
	return warnings
}

// yamlError turns a yaml.v3 error into a ValidationError, one problem per
// line, without the "yaml: " prefix.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		ps := make([]string, len(te.Errors))
		for i, e := range te.Errors {
			ps[i] = strings.TrimSpace(e)
		}
		return &ValidationError{Problems: ps}
	}
	return &ValidationError{Problems: []string{strings.TrimPrefix(err.Error(), "yaml: ")}}
}

func defaultListenHTTP() AddrList  { return AddrList{"127.0.0.1:8080", "lan:8080"} }
func defaultListenSOCKS() AddrList { return AddrList{"127.0.0.1:1080", "lan:1080"} }
func defaultSniffPorts() []PortRange {
	return []PortRange{{80, 80}, {443, 443}}
}

// defaults returns a Config holding every top-level default; the document is
// decoded over it.
func defaults() *Config {
	on := true
	return &Config{
		Log: Log{Level: LogInfo, Format: LogText},
		Transparent: Transparent{
			TCPPort:            12345,
			TCPMode:            TCPModeRedirect,
			UDPPort:            12345,
			UDPIdle:            Duration(60 * time.Second),
			UDPMaxSessions:     4096,
			UDPOverTCPUpstream: UDPBlock,
			QUIC:               QUICSniff,
			ICMP:               ICMPPass,
			BypassBuiltin:      &on,
			TProxyMark:         0x2,
			RouteTable:         100,
			RulePriority:       100,
			Sniff: Sniff{
				Enabled: true,
				Ports:   defaultSniffPorts(),
				Timeout: Duration(300 * time.Millisecond),
			},
		},
		Listen: Listen{HTTP: defaultListenHTTP(), SOCKS: defaultListenSOCKS()},
		Timeouts: Timeouts{
			Dial:      Duration(10 * time.Second),
			Handshake: Duration(10 * time.Second),
			Idle:      Duration(2 * time.Hour),
			Grace:     Duration(5 * time.Second),
		},
		Mark:     0x1,
		OnCrash:  OnCrashClosed,
		Relay:    relay.Auto,
		DNS:      defaultDNS(),
		StateDir: DefaultStateDir,
		Devices:  defaultDevices(),
	}
}

// defaultGroup holds a group's defaults; each group is decoded over it.
func defaultGroup() Group {
	return Group{
		Policy:    PolicyFailover,
		Tolerance: Duration(50 * time.Millisecond),
		OnDown:    OnDownBlock,
		Health: Health{
			Interval: Duration(10 * time.Second),
			Timeout:  Duration(5 * time.Second),
			Rise:     2,
			Fall:     3,
		},
	}
}

// UnmarshalYAML decodes a group over its defaults, so an explicit zero (for
// example health.interval: 0) is kept.
func (g *Group) UnmarshalYAML(n *yaml.Node) error {
	type plain Group
	p := plain(defaultGroup())
	if err := n.Decode(&p); err != nil {
		return err
	}
	*g = Group(p)
	return nil
}

// upstreamYAML is Upstream as written in the file.
type upstreamYAML struct {
	Name string       `yaml:"name"`
	URL  string       `yaml:"url"`
	Via  string       `yaml:"via"`
	TLS  *UpstreamTLS `yaml:"tls,omitempty"`
}

// UnmarshalYAML decodes an upstream and parses its URL. A URL that does not
// parse is reported by Validate, with its field path and without its
// credentials.
func (u *Upstream) UnmarshalYAML(n *yaml.Node) error {
	var p upstreamYAML
	if err := n.Decode(&p); err != nil {
		return err
	}
	*u = Upstream{Name: p.Name, Via: p.Via, TLS: p.TLS}
	if strings.TrimSpace(p.URL) != "" {
		u.URL, u.urlErr = parseUpstreamURL(p.URL)
	}
	return nil
}

// MarshalYAML writes an upstream with its full URL (credentials included:
// this is for writing config files, not logs).
func (u Upstream) MarshalYAML() (any, error) {
	p := upstreamYAML{Name: u.Name, Via: u.Via, TLS: u.TLS}
	if u.URL != nil {
		p.URL = u.URL.String()
	}
	return p, nil
}

// parseUpstreamURL parses s, returning a reason free of credentials when it
// does not parse.
func parseUpstreamURL(s string) (*url.URL, string) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		return nil, "missing scheme (want e.g. \"socks5://host:1080\")"
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// url's messages quote the offending part of the URL.
			return nil, "invalid URL: " + clipMessage(ue.Err.Error())
		}
		return nil, "invalid URL"
	}
	return u, ""
}

// clipMessage bounds a message made elsewhere that may quote a value whole.
func clipMessage(s string) string { return cut(s, 2*maxQuoted) }

// finish applies the defaults that depend on the document (null lists,
// rule names, the implicit rule) and normalises values.
func (c *Config) finish() {
	if c.Listen.HTTP == nil {
		c.Listen.HTTP = defaultListenHTTP()
	}
	if c.Listen.SOCKS == nil {
		c.Listen.SOCKS = defaultListenSOCKS()
	}
	if c.Transparent.Sniff.Ports == nil {
		c.Transparent.Sniff.Ports = defaultSniffPorts()
	}
	if c.Transparent.BypassBuiltin == nil {
		on := true
		c.Transparent.BypassBuiltin = &on
	}
	// Lists where empty means the same as absent are nil when empty, so
	// that configurations compare equal however they were written.
	c.DNS.finish()
	emptyToNil(&c.LAN.Interfaces)
	emptyToNil(&c.LAN.Prefixes)
	emptyToNil(&c.Transparent.Bypass)
	emptyToNil(&c.Transparent.OffloadDevices)
	emptyToNil(&c.Router.ExcludeUIDs)
	emptyToNil(&c.Router.ExcludeGIDs)
	emptyToNil(&c.Listen.Mixed)
	emptyToNil(&c.Listen.Users)
	emptyToNil(&c.Listen.Allow)
	emptyToNil(&c.Upstreams)
	emptyToNil(&c.Groups)
	emptyToNil(&c.Admin.CORSOrigins)
	emptyToNil(&c.HA.VIP)
	for i, a := range c.HA.VIP {
		c.HA.VIP[i] = a.Unmap()
	}
	for i := range c.Groups {
		emptyToNil(&c.Groups[i].Upstreams)
	}
	maskAll(c.LAN.Prefixes)
	maskAll(c.Transparent.Bypass)
	maskAll(c.Listen.Allow)
	for i := range c.Upstreams {
		c.Upstreams[i].Name = strings.TrimSpace(c.Upstreams[i].Name)
	}
	names := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Name == "" {
			r.Name = fmt.Sprintf("rule#%d", i+1)
		}
		names[r.Name] = true
		if r.Action == 0 && r.Upstream != "" {
			r.Action = ActionProxy
		}
		emptyToNil(&r.Protocol)
		emptyToNil(&r.Dst)
		emptyToNil(&r.DstPorts)
		emptyToNil(&r.Src)
		emptyToNil(&r.Inbound)
		emptyToNil(&r.Domain)
		emptyToNil(&r.SrcMAC)
		emptyToNil(&r.Device)
		for j, d := range r.Device {
			if n, err := normalizeDeviceName(d); err == nil {
				r.Device[j] = n
			}
		}
		maskAll(r.Dst)
		maskAll(r.Src)
		for j, d := range r.Domain {
			if n, err := normalizeDomain(d); err == nil {
				r.Domain[j] = n
			}
		}
		r.finishMatchers()
	}
	c.finishRuleSets()
	c.GeoIP.Path = strings.TrimSpace(c.GeoIP.Path)
	if !slices.ContainsFunc(c.Rules, func(r Rule) bool { return r.IsCatchAll() }) {
		name := ImplicitRuleName
		if names[name] {
			name = "implicit-" + name
		}
		c.Rules = append(c.Rules, c.implicitRule(name))
	}
}

// implicitRule is the catch-all appended when the rules have none: proxy
// through the first upstream when there is one, else direct.
func (c *Config) implicitRule(name string) Rule {
	r := Rule{Name: name, Action: ActionDirect, Implicit: true}
	if len(c.Upstreams) > 0 && c.Upstreams[0].Name != "" {
		r.Action, r.Upstream = ActionProxy, c.Upstreams[0].Name
	}
	return r
}

func emptyToNil[S ~[]E, E any](s *S) {
	if len(*s) == 0 {
		*s = nil
	}
}

func maskAll(ps []netip.Prefix) {
	for i, p := range ps {
		if p.IsValid() {
			ps[i] = p.Masked()
		}
	}
}

// walker checks a node tree against the schema's Go types before decoding,
// so that every unknown key and malformed value is reported at once, each
// with its line and field path (yaml.v3 stops at the first failing
// TextUnmarshaler and reports it without a line).
type walker struct {
	problems []string
	seen     map[walkKey]bool // aliases are walked once per type
}

type walkKey struct {
	n *yaml.Node
	t reflect.Type
}

var (
	urlPtrType        = reflect.TypeFor[*url.URL]()
	prefixType        = reflect.TypeFor[netip.Prefix]()
	unmarshalerType   = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
	portRangeType     = reflect.TypeFor[PortRange]()
	adminType         = reflect.TypeFor[Admin]()
)

func (w *walker) add(n *yaml.Node, path, format string, args ...any) {
	msg := sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	w.problems = append(w.problems, fmt.Sprintf("line %d: %s", n.Line, msg))
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return
		}
		n = n.Alias
	}
	k := walkKey{n, t}
	if w.seen[k] {
		return
	}
	w.seen[k] = true
	if isNull(n) {
		return // an absent value: the default
	}
	if t == urlPtrType {
		if n.Kind != yaml.ScalarNode {
			w.add(n, path, "expected a URL string such as \"socks5://host:1080\"")
		}
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pt := reflect.PointerTo(t)
	if t == adminType && n.Kind == yaml.ScalarNode {
		return // admin: HOST:PORT, the short form; Validate checks the address
	}
	switch {
	case pt.Implements(unmarshalerType) && (t.Kind() != reflect.Struct || t == portRangeType):
		if err := reflect.New(t).Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			w.add(n, path, "%v", err)
		}
		return
	case pt.Implements(textUnmarshalType):
		if n.Kind != yaml.ScalarNode {
			w.add(n, path, "expected a string")
			return
		}
		if t == prefixType {
			if _, err := netip.ParsePrefix(strings.TrimSpace(n.Value)); err != nil {
				w.add(n, path, "invalid prefix %q: want CIDR notation such as 192.0.2.0/24 or 2001:db8::/32", n.Value)
			}
			return
		}
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			w.add(n, path, "%v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		w.walkStruct(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.add(n, path, "expected a list")
			return
		}
		for i, e := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if isNull(e) {
				w.add(e, p, "empty list entry")
				continue
			}
			w.walk(e, t.Elem(), p)
		}
	default:
		w.walkScalar(n, t, path)
	}
}

func (w *walker) walkScalar(n *yaml.Node, t reflect.Type, path string) {
	want := "a string"
	switch t.Kind() {
	case reflect.Bool:
		want = "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		want = "an integer"
	case reflect.Uint16:
		want = "an integer from 0 to 65535"
	case reflect.Uint32:
		want = "an integer from 0 to 4294967295 (0x... allowed)"
	}
	if n.Kind != yaml.ScalarNode {
		w.add(n, path, "expected %s", want)
		return
	}
	// yaml.v3 truncates a float decoded into an integer (12345.9 becomes
	// 12345, 1e3 becomes 1000): an integer must be written as one.
	if isInteger(t) && n.ShortTag() != "!!int" && n.ShortTag() != "!!str" {
		w.add(n, path, "expected %s, got %q: write a plain integer, without a fraction or exponent", want, n.Value)
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		w.add(n, path, "expected %s, got %q", want, n.Value)
	}
}

func isInteger(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

func (w *walker) walkStruct(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		if path == "" {
			w.add(n, path, "expected a mapping of keys (log, lan, transparent, listen, upstreams, ...) at the top level")
		} else {
			w.add(n, path, "expected a mapping")
		}
		return
	}
	fields, names := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Kind == yaml.ScalarNode && kn.Value == "<<" {
			w.walkMerge(vn, t, path)
			continue
		}
		key := kn.Value
		p := clip(key)
		if path != "" {
			p = path + "." + p
		}
		ft, ok := fields[key]
		if !ok {
			if s := closest(key, names); s != "" {
				w.add(kn, p, "unknown key %q, did you mean %q?", key, s)
			} else {
				w.add(kn, p, "unknown key %q (known: %s)", key, strings.Join(names, ", "))
			}
			continue
		}
		if listOfScalars(ft) {
			n.Content[i+1] = listOfOne(vn)
			vn = n.Content[i+1]
		}
		w.walk(vn, ft, p)
	}
}

// listOfScalars reports whether t is a list of scalars without a decoder of
// its own (AddrList has one): where the schema wants one, a single scalar is
// accepted as the list of that one value ("protocol: udp", "dst: 10.0.0.0/8",
// "upstreams: main").
func listOfScalars(t reflect.Type) bool {
	if t.Kind() != reflect.Slice || reflect.PointerTo(t).Implements(unmarshalerType) {
		return false
	}
	e := t.Elem()
	if e == portRangeType || reflect.PointerTo(e).Implements(textUnmarshalType) {
		return true
	}
	switch e.Kind() {
	case reflect.Struct, reflect.Slice, reflect.Array, reflect.Map, reflect.Pointer, reflect.Interface:
		return false
	}
	return true
}

// listOfOne returns n, or a one-entry sequence holding n when n is (or is an
// alias of) a scalar other than null. The walk and the decoder then see the
// list the schema wants; the alias target itself is left alone, as it may be
// used elsewhere as a plain value.
func listOfOne(n *yaml.Node) *yaml.Node {
	v := n
	if v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	if v == nil || v.Kind != yaml.ScalarNode || isNull(v) {
		return n
	}
	return &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: n.Line, Column: n.Column, Content: []*yaml.Node{n}}
}

func (w *walker) walkMerge(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.MappingNode:
		w.walkStruct(n, t, path)
	case yaml.SequenceNode:
		for _, e := range n.Content {
			w.walkMerge(e, t, path)
		}
	}
}

// fieldsCache holds yamlFields by type: the walk asks once per mapping.
var fieldsCache sync.Map // reflect.Type -> schemaFields

type schemaFields struct {
	types map[string]reflect.Type
	names []string
}

// yamlFields maps the yaml keys of struct type t to their field types, and
// lists the keys in order. The results are shared: do not modify them.
func yamlFields(t reflect.Type) (map[string]reflect.Type, []string) {
	if f, ok := fieldsCache.Load(t); ok {
		return f.(schemaFields).types, f.(schemaFields).names
	}
	m, names := structFields(t)
	fieldsCache.Store(t, schemaFields{m, names})
	return m, names
}

func structFields(t reflect.Type) (map[string]reflect.Type, []string) {
	m := map[string]reflect.Type{}
	var names []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
		names = append(names, name)
	}
	return m, names
}

// closest returns the candidate within edit distance 2 of s (the nearest),
// or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if len(s) > len(c)+2 || len(c) > len(s)+2 {
			continue // farther than 2 whatever the letters
		}
		if d := editDistance(s, c); d < bestD && d < len(s) {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
