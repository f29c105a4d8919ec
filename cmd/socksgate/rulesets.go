package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/route"
	"github.com/socksgate/socksgate/ruleset"
	"github.com/socksgate/socksgate/upstream"
)

// loadSets reads cfg's rule sets once, for a command that routes without running; a set
// whose file cannot be read is empty, and said so on w.
func loadSets(cfg *configs.Config, w io.Writer) map[string]*ruleset.Handle {
	out := map[string]*ruleset.Handle{}
	for i, rs := range cfg.RuleSets {
		s, err := ruleset.Load(rs)
		if err != nil {
			fmt.Fprintf(w, "socksgate: rule_sets[%d] (%q): %v (taken as empty)\n", i, rs.Name, err)
		}
		out[rs.Name] = ruleset.NewHandle(rs, s)
	}
	return out
}

// checkSets reads every rule set of cfg for `socksgate check`: one line per set on stdout,
// bad lines as warnings, and a file that cannot be read or is refused on errOut, as an error
// (or a warning when lenient). It returns the number of such files.
func checkSets(cfg *configs.Config, stdout, errOut io.Writer, lenient bool) int {
	level := "error"
	if lenient {
		level = "warning"
	}
	errs := 0
	for i, rs := range cfg.RuleSets {
		s, err := ruleset.Load(rs)
		if err != nil {
			fmt.Fprintf(errOut, "%s: rule_sets[%d] (%q): %v\n", level, i, rs.Name, err)
			errs++
			continue
		}
		what := "names"
		if rs.Kind == configs.SetCIDR {
			what = "prefixes"
		}
		fmt.Fprintf(stdout, "rule set %q: %d %s (%s, format %s)\n", rs.Name, s.Stats.Entries, what, rs.Path, s.Stats.Format)
		if b := s.Stats.BadSummary(); b != "" {
			fmt.Fprintf(stdout, "warning: rule_sets[%d] (%q): %s: %s\n", i, rs.Name, rs.Path, b)
		}
	}
	return errs
}

// fakeIPAddr reports whether a is one of the fake-ip ranges (never routed by the kernel).
func fakeIPAddr(cfg *configs.Config, a netip.Addr) bool {
	f := cfg.DNS.FakeIP
	return f.Enabled && cfg.DNS.On() && (f.Range4.Contains(a) || f.Range6.IsValid() && f.Range6.Contains(a))
}

// hoistedNow is what the rules would put in the kernel's direct sets with the rule set files
// as they are now (the running gateway follows the files); problems are comments on w.
func hoistedNow(cfg *configs.Config, w io.Writer) []netip.Prefix {
	ups, err := upstream.NewUpstreamsIdle(cfg, upstream.Direct{})
	if err != nil {
		fmt.Fprintf(w, "# direct sets not computed: %v\n", err)
		return nil
	}
	var warn strings.Builder
	r, err := route.NewRouterSets(cfg, ups, loadSets(cfg, &warn))
	for _, l := range strings.Split(strings.TrimSpace(warn.String()), "\n") {
		if l != "" {
			fmt.Fprintln(w, "# "+l)
		}
	}
	if err != nil {
		fmt.Fprintf(w, "# direct sets not computed: %v\n", err)
		return nil
	}
	// The countries' networks, as the gateway hoists them (a proxy rule on one claims them).
	db, err := openGeoIP(cfg)
	if err != nil {
		fmt.Fprintf(w, "# direct sets not computed: %v\n", err)
		return nil
	} else if db != nil {
		r.GeoIP, r.GeoPrefixes = db.Country, db.Prefixes
	}
	ps, rules := r.HoistedPrefixes()
	if len(rules) > 0 {
		fmt.Fprintf(w, "# direct4/direct6: the destinations of rules %s, routed by the kernel\n", strings.Join(rules, ", "))
	}
	return ps
}
