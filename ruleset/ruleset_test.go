package ruleset

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socksgate/socksgate/configs"
)

func parse(t *testing.T, kind configs.SetKind, format configs.SetFormat, text string) *Set {
	t.Helper()
	s, err := Parse(strings.NewReader(text), kind, format, int64(len(text)))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, text)
	}
	return s
}

func TestDomainListSemantics(t *testing.T) {
	s := parse(t, configs.SetDomain, configs.SetFormatAuto, `# v2fly and Clash prefixes
example.com
full:exact.example.org
domain:Suffix.Example.NET @cn
+.plus.example
.under.example
*.star.example
keyword:tracker
regexp:^ad[0-9]+\.
0.0.0.0 hosts.example other.hosts.example # a hosts line
include:other-list
`)
	if s.Stats.Format != configs.SetFormatList || s.Stats.Bad != 0 || s.Stats.Other != 1 || s.Stats.Entries != 10 {
		t.Fatalf("stats %+v", s.Stats)
	}
	d := s.Domains
	for name, want := range map[string]bool{
		"example.com": true, "www.example.com": true, "WWW.Example.COM.": true, "notexample.com": false, "com": false,
		"exact.example.org": true, "a.exact.example.org": false,
		"suffix.example.net": true, "x.y.suffix.example.net": true,
		"plus.example": true, "a.plus.example": true,
		"under.example": false, "a.under.example": true, "star.example": false, "a.b.star.example": true,
		"mytracker.io": true, "ad12.example.io": true, "bad12.example.io": false,
		"hosts.example": true, "sub.hosts.example": false, "other.hosts.example": true,
		"": false, "other-list": false,
	} {
		if got := d.Match(name); got != want {
			t.Errorf("Match(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestClashAndDnsmasqFormats(t *testing.T) {
	clash := parse(t, configs.SetDomain, configs.SetFormatAuto, `# a rule provider
payload:
  - '+.google.com'
  - "exact.example"   # a comment
  - .under.example
  - DOMAIN-SUFFIX,classic.example
  - DOMAIN,one.classic.example
  - DOMAIN-KEYWORD,keyw
  - IP-CIDR,192.0.2.0/24,no-resolve
  - PROCESS-NAME,curl
`)
	if clash.Stats.Format != configs.SetFormatClash || clash.Stats.Bad != 0 || clash.Stats.Other != 2 || clash.Stats.Entries != 6 {
		t.Fatalf("clash stats %+v", clash.Stats)
	}
	for name, want := range map[string]bool{
		"google.com": true, "mail.google.com": true, "exact.example": true, "www.exact.example": false,
		"under.example": false, "x.under.example": true, "classic.example": true, "a.classic.example": true,
		"one.classic.example": true, "x.one.classic.example": true, "keyword.example": true,
	} {
		if got := clash.Domains.Match(name); got != want {
			t.Errorf("clash Match(%q) = %v, want %v", name, got, want)
		}
	}
	flow := parse(t, configs.SetCIDR, configs.SetFormatClash, "payload: ['192.0.2.0/24', \"2001:db8::/32\"]\n")
	if !flow.CIDRs.Contains(netip.MustParseAddr("2001:db8::1")) || flow.Stats.Entries != 2 {
		t.Errorf("flow payload: %+v", flow.Stats)
	}
	dm := parse(t, configs.SetDomain, configs.SetFormatAuto, `server=/cn-example.com/114.114.114.114
ipset=/ipset.example/a.example/setname
nftset=/nft.example/4#inet#fw4#set
server=/#/1.1.1.1
conf-dir=/etc/dnsmasq.d
server=/bad name/1.2.3.4
`)
	if dm.Stats.Format != configs.SetFormatDnsmasq || dm.Stats.Bad != 1 || dm.Stats.BadLines[0] != 6 || dm.Stats.Entries != 4 {
		t.Fatalf("dnsmasq stats %+v", dm.Stats)
	}
	for _, n := range []string{"cn-example.com", "www.cn-example.com", "ipset.example", "a.example", "x.nft.example"} {
		if !dm.Domains.Match(n) {
			t.Errorf("dnsmasq: %q not matched", n)
		}
	}
}

func TestCIDRList(t *testing.T) {
	s := parse(t, configs.SetCIDR, configs.SetFormatAuto, `# prefixes
192.0.2.0/24
192.0.2.128/25
198.51.100.7
10.1.2.3/8
2001:db8::/32
::ffff:203.0.113.0/120
IP-CIDR6,2001:db8:ffff::/48,no-resolve
DOMAIN,example.com
not-a-prefix
`)
	if s.Stats.Entries != 7 || s.Stats.Bad != 1 || s.Stats.Other != 1 || !slices.Equal(s.Stats.BadLines, []int{10}) {
		t.Fatalf("stats %+v", s.Stats)
	}
	for a, want := range map[string]bool{
		"192.0.2.0": true, "192.0.2.255": true, "192.0.3.0": false, "198.51.100.7": true, "198.51.100.8": false,
		"10.200.0.1": true, "11.0.0.0": false, "2001:db8:1::1": true, "2001:db9::": false, "203.0.113.9": true,
		"::ffff:192.0.2.1": true,
	} {
		if got := s.CIDRs.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", a, got, want)
		}
	}
	if s.CIDRs.Ranges() != 5 {
		t.Errorf("ranges %d, want 5 (192.0.2.0/25 merged into /24)", s.CIDRs.Ranges())
	}
}

func TestBrokenFilesAreRefused(t *testing.T) {
	for _, tc := range []struct {
		kind configs.SetKind
		text string
	}{
		{configs.SetCIDR, "example.com\nwww.example.org\n"},
		{configs.SetDomain, "192.0.2.0/24\n10.0.0.0/8\n"},
		{configs.SetDomain, "payload:\n  - IP-CIDR,192.0.2.0/24\n"},
		{configs.SetDomain, "regexp:(\n"},
	} {
		if _, err := Parse(strings.NewReader(tc.text), tc.kind, 0, 0); err == nil || !strings.Contains(err.Error(), "kind or format") {
			t.Errorf("%v %q: err %v", tc.kind, tc.text, err)
		}
	}
	if s := parse(t, configs.SetDomain, 0, ""); s.Len() != 0 {
		t.Errorf("empty file: %d entries", s.Len())
	}
	long := strings.Repeat("a", maxLine+10) + "\nexample.com\n"
	if s := parse(t, configs.SetDomain, 0, long); s.Stats.Bad != 1 || s.Len() != 1 {
		t.Errorf("long line: %+v", s.Stats)
	}
}

func TestSetArithmetic(t *testing.T) {
	set := func(ps ...string) *CIDRs {
		var b cidrBuilder
		for _, p := range ps {
			b.add(netip.MustParsePrefix(p))
		}
		return b.build()
	}
	got := set("10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0").Minus(set("10.1.0.0/16", "128.0.0.0/1", "2001:db8:8000::/33", "0.0.0.0/8")).Prefixes()
	want := []string{"1.0.0.0/8", "2.0.0.0/7", "4.0.0.0/6", "8.0.0.0/7", "10.0.0.0/16", "10.2.0.0/15", "10.4.0.0/14", "10.8.0.0/13",
		"10.16.0.0/12", "10.32.0.0/11", "10.64.0.0/10", "10.128.0.0/9", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4", "32.0.0.0/3",
		"64.0.0.0/2", "2001:db8::/33"}
	var gs []string
	for _, p := range got {
		gs = append(gs, p.String())
	}
	if !slices.Equal(gs, want) {
		t.Errorf("Minus.Prefixes =\n %v\nwant\n %v", gs, want)
	}
	if ps := set("::/0", "0.0.0.0/0").Prefixes(); len(ps) != 2 || ps[0].String() != "0.0.0.0/0" || ps[1].String() != "::/0" {
		t.Errorf("everything: %v", ps)
	}
	u := Union(set("192.0.2.0/25"), nil, set("192.0.2.128/25"))
	if ps := u.Prefixes(); len(ps) != 1 || ps[0].String() != "192.0.2.0/24" {
		t.Errorf("union: %v", ps)
	}
}

func TestRegistryReloadsOnRenameAndKeepsOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "set.txt")
	if err := os.WriteFile(path, []byte("192.0.2.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := configs.RuleSet{Name: "later", Kind: configs.SetDomain, Path: filepath.Join(dir, "later.txt")}
	rs := []configs.RuleSet{{Name: "s", Kind: configs.SetCIDR, Path: path}, missing}
	r := NewRegistry()
	r.Poll, r.Settle = time.Hour, 20*time.Millisecond
	evs := r.Apply(rs)
	if len(evs) != 2 || evs[0].Err != nil || evs[1].Err == nil {
		t.Fatalf("events %+v", evs)
	}
	r.Start()
	defer r.Close()
	h := r.Handles()["s"]
	wait := func(what string) Event {
		t.Helper()
		select {
		case ev := <-r.Events():
			return ev
		case <-time.After(5 * time.Second):
			t.Fatalf("no event after %s", what)
		}
		return Event{}
	}
	in := func(a string) bool { return h.CIDRs().Contains(netip.MustParseAddr(a)) }

	// An editor's way: write elsewhere, rename into place.
	tmp := filepath.Join(dir, ".set.txt.swp")
	os.WriteFile(tmp, []byte("198.51.100.0/24\n"), 0o644)
	os.Rename(tmp, path)
	if ev := wait("rename"); ev.Err != nil || ev.Name != "s" {
		t.Fatalf("event %+v", ev)
	}
	if in("192.0.2.1") || !in("198.51.100.1") {
		t.Fatal("the renamed file is not in force")
	}
	// A broken rewrite keeps the version in force.
	os.WriteFile(path, []byte("garbage here\n"), 0o644)
	if ev := wait("broken write"); ev.Err == nil {
		t.Fatalf("broken file accepted: %+v", ev)
	}
	if !in("198.51.100.1") || h.Err() == nil {
		t.Fatal("the broken file replaced the set in force")
	}
	// The missing file appears.
	os.WriteFile(missing.Path, []byte("example.com\n"), 0o644)
	if ev := wait("create"); ev.Err != nil || ev.Name != "later" || !r.Handles()["later"].Domains().Match("a.example.com") {
		t.Fatalf("event %+v", ev)
	}
	st := map[string]SetStats{}
	for _, s := range r.Stats() {
		st[s.Name] = s
	}
	if st["s"].LoadErrors != 1 || st["s"].Entries != 1 || st["later"].LoadErrors != 1 || st["later"].Err != nil || st["later"].LastLoad.IsZero() {
		t.Errorf("stats %+v", st)
	}
	// Apply keeps a set configured as it was, Prune forgets the rest.
	if evs := r.Apply(rs[:1]); len(evs) != 0 {
		t.Errorf("an unchanged set was loaded again: %+v", evs)
	}
	r.Prune(rs[:1])
	if _, ok := r.Handles()["later"]; ok {
		t.Error("pruned set still there")
	}
}

func TestPollFindsChangesTheWatchMisses(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "not-yet")
	rs := []configs.RuleSet{{Name: "s", Kind: configs.SetDomain, Path: filepath.Join(sub, "l.txt")}}
	r := NewRegistry()
	r.Poll, r.Settle = 50*time.Millisecond, 10*time.Millisecond
	r.Apply(rs)
	r.Start()
	defer r.Close()
	os.Mkdir(sub, 0o755)
	os.WriteFile(rs[0].Path, []byte("example.org\n"), 0o644)
	select {
	case ev := <-r.Events():
		if ev.Err != nil || !r.Handles()["s"].Domains().Match("example.org") {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a file in a directory created later was not found")
	}
}

// A file saved by a Windows editor starts with a byte order mark and ends its lines with CRLF:
// the mark is no part of the first entry, and does not hide a payload: line from auto.
func TestByteOrderMarkAndCRLF(t *testing.T) {
	clash := parse(t, configs.SetDomain, configs.SetFormatAuto, "\ufeffpayload:\r\n  - '+.google.com'\r\n  - DOMAIN,one.example\r\n")
	if clash.Stats.Format != configs.SetFormatClash || clash.Stats.Bad != 0 || clash.Stats.Entries != 2 {
		t.Fatalf("clash stats %+v", clash.Stats)
	}
	if !clash.Domains.Match("mail.google.com") || !clash.Domains.Match("one.example") {
		t.Error("clash entries not matched")
	}
	list := parse(t, configs.SetCIDR, configs.SetFormatAuto, "\ufeff192.0.2.0/24\r\n2001:db8::/32\r\n")
	if list.Stats.Bad != 0 || list.Stats.Entries != 2 || !list.CIDRs.Contains(netip.MustParseAddr("192.0.2.1")) {
		t.Errorf("list stats %+v", list.Stats)
	}
	dom := parse(t, configs.SetDomain, configs.SetFormatAuto, "\ufeffexample.com\r\n")
	if dom.Stats.Bad != 0 || !dom.Domains.Match("example.com") {
		t.Errorf("domain list stats %+v", dom.Stats)
	}
}

// Clash's text format for an ipcidr provider is one prefix a line: an IPv6 one is an entry,
// not a YAML key because it has colons.
func TestClashTextFormatIPv6(t *testing.T) {
	s := parse(t, configs.SetCIDR, configs.SetFormatClash, "192.0.2.0/24\n2001:db8::/32\n::ffff:198.51.100.0/120\n")
	if s.Stats.Entries != 3 || s.Stats.Bad != 0 {
		t.Fatalf("stats %+v", s.Stats)
	}
	for _, a := range []string{"192.0.2.1", "2001:db8::1", "198.51.100.9"} {
		if !s.CIDRs.Contains(netip.MustParseAddr(a)) {
			t.Errorf("%s not in the set", a)
		}
	}
	// A YAML key is still one: before the payload, and after it.
	y := parse(t, configs.SetCIDR, configs.SetFormatClash, "behavior: ipcidr\npayload:\n  - 2001:db8::/32\nother: x\n")
	if y.Stats.Entries != 1 || y.Stats.Bad != 0 {
		t.Errorf("yaml stats %+v", y.Stats)
	}
}

// A reload of the config that is refused after its sets were applied puts back the handles
// the running router holds: they, not the refused config's, are the ones reloaded.
func TestRestoreAfterARefusedApply(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "one.txt"), filepath.Join(dir, "two.txt")
	os.WriteFile(p1, []byte("192.0.2.0/24\n"), 0o644)
	os.WriteFile(p2, []byte("198.51.100.0/24\n"), 0o644)
	running := []configs.RuleSet{{Name: "s", Kind: configs.SetCIDR, Path: p1}}
	refused := []configs.RuleSet{{Name: "s", Kind: configs.SetCIDR, Path: p2}, {Name: "added", Kind: configs.SetCIDR, Path: p2}}
	r := NewRegistry()
	r.Poll, r.Settle = time.Hour, 20*time.Millisecond
	r.Apply(running)
	r.Start()
	defer r.Close()
	h := r.Handles()["s"]
	before := r.Handles()
	r.Apply(refused)
	r.Restore(before)
	if hs := r.Handles(); len(hs) != 1 || hs["s"] != h {
		t.Fatalf("handles after Restore: %v", hs)
	}
	os.WriteFile(p1, []byte("203.0.113.0/24\n"), 0o644)
	select {
	case ev := <-r.Events():
		if ev.Err != nil || ev.Name != "s" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the running set's file is no longer followed")
	}
	if !h.CIDRs().Contains(netip.MustParseAddr("203.0.113.1")) {
		t.Error("the running router's set was not reloaded")
	}
}

// v2fly's attributes follow a regexp: entry as they follow the others (domain-list-community
// writes "regexp:^ad[0-9]+\.example$ @ads"): they are not part of the expression.
func TestRegexpEntryAttributes(t *testing.T) {
	s := parse(t, configs.SetDomain, configs.SetFormatList, "regexp:^ad[0-9]+\\.example$ @ads @!cn\n")
	if !s.Domains.Match("ad12.example") || s.Domains.Match("ad12.example.org") {
		t.Errorf("regexp with attributes: %+v", s.Stats)
	}
}
