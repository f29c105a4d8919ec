package ruleset

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/socksgate/socksgate/configs"
)

// fuzzParse checks that no file makes Parse panic or loop, that what it accepts counts its
// entries right, and that looking up every field of the file in the set is safe.
func fuzzParse(f *testing.F, format configs.SetFormat, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, domains bool) {
		kind := configs.SetCIDR
		if domains {
			kind = configs.SetDomain
		}
		s, err := Parse(bytes.NewReader(data), kind, format, int64(len(data)))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if s.Stats.Bad < len(s.Stats.BadLines) || len(s.Stats.BadLines) > MaxBadLines {
			t.Fatalf("stats %+v", s.Stats)
		}
		if kind == configs.SetCIDR && s.Len() != s.Stats.Entries || s.Len() > s.Stats.Entries {
			t.Fatalf("%d entries in the set, %d read", s.Len(), s.Stats.Entries)
		}
		for _, field := range bytes.FieldsFunc(data, func(r rune) bool { return r == '\n' || r == ' ' || r == ',' || r == '/' || r == '\'' }) {
			s.Domains.Match(string(field))
			if a, err := netip.ParseAddr(string(field)); err == nil {
				s.CIDRs.Contains(a)
			}
		}
		if kind == configs.SetCIDR {
			for _, p := range s.CIDRs.Prefixes() {
				if !s.CIDRs.Contains(p.Addr()) {
					t.Fatalf("%v from Prefixes is not in the set", p)
				}
			}
		}
	})
}

func FuzzParseList(f *testing.F) {
	fuzzParse(f, configs.SetFormatList,
		"example.com\nfull:a.example\ndomain:B.example @cn\nkeyword:ads\nregexp:^x[0-9]+\\.\n+.c.example\n.d.example\n*.e.example\n",
		"# comment\n0.0.0.0 ads.example tracker.example # hosts\ninclude:other\n",
		"192.0.2.0/24\n198.51.100.7\n2001:db8::/32 # comment\n::ffff:1.2.3.0/120\n0.0.0.0/0\n::/0\n",
		"IP-CIDR,192.0.2.0/24,no-resolve\nDOMAIN-SUFFIX,example.com\nDOMAIN-REGEX,(\n",
		"a..b\n-\n.\n"+"x\r\n",
		"\ufeffexample.com\r\nregexp:^ad[0-9]+\\.example$ @ads\r\n")
}

func FuzzParseDnsmasq(f *testing.F) {
	fuzzParse(f, configs.SetFormatDnsmasq,
		"server=/example.com/114.114.114.114\nipset=/a.example/b.example/set\nnftset=/c.example/4#inet#fw4#s\n",
		"server=/#/1.1.1.1\naddress=/ads.example/0.0.0.0\nlocal=/lan/\nconf-dir=/etc\nserver=/\nserver=//\n")
}

func FuzzParseClash(f *testing.F) {
	fuzzParse(f, configs.SetFormatClash,
		"payload:\n  - '+.google.com'\n  - \"exact.example\"  # c\n  - .under.example\n  - 'it''s'\n",
		"payload: ['192.0.2.0/24', \"2001:db8::/32\"]\n",
		"payload:\n  - DOMAIN-SUFFIX,x.example\n  - IP-CIDR,10.0.0.0/8,no-resolve\n  - PROCESS-NAME,curl\nrules: []\n",
		"+.text.example\nexact.example\n",
		"\ufeffpayload:\r\n  - '+.bom.example'\r\n",
		"behavior: ipcidr\n2001:db8::/32\n::ffff:192.0.2.0/120\n")
}
