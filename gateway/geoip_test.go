//go:build !nogeoip

package gateway

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/socksgate/socksgate/configs"
	"github.com/socksgate/socksgate/geoip"
	"github.com/socksgate/socksgate/geoip/geoiptest"
	"github.com/socksgate/socksgate/internal/testutil"
)

// The database of the run: loaded at start, reloaded when the file is replaced by a rename or
// rewritten, kept when the new file is broken (the error in the stats), replaced when a
// reload of the config names another path, and dropped when it names none.
func TestGeoDBFollowsTheFile(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	rt := &running{log: logger}
	dir := t.TempDir()
	path := filepath.Join(dir, "country.mmdb")
	a := netip.MustParseAddr("203.0.113.10")
	write := func(cc string) {
		t.Helper()
		if err := geoiptest.WriteFile(path, geoiptest.Network{Prefix: "203.0.113.0/24", Country: cc}); err != nil {
			t.Fatal(err)
		}
	}
	country := func() string { return rt.geo.Country(a).String() }

	if _, _, err := rt.prepareGeoIP(configs.GeoIP{Path: path}); err == nil || !strings.Contains(err.Error(), "geoip.path") {
		t.Fatalf("a missing database at start: %v", err)
	}
	write("US")
	commit, _, err := rt.prepareGeoIP(configs.GeoIP{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if country() != "" {
		t.Fatal("in force before commit")
	}
	commit()
	defer rt.closeGeoIP()
	if country() != "US" {
		t.Fatalf("after commit: %q", country())
	}

	write("JP") // a rename into place
	testutil.WaitUntil(t, "the renamed file is loaded", func() bool { return country() == "JP" })

	if err := os.WriteFile(path, []byte("half a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, "the broken file is reported", func() bool {
		st := rt.geo.stats()
		return st != nil && st.Err != "" && st.Failures > 0
	})
	if country() != "JP" {
		t.Fatalf("a broken file replaced the database in force: %q", country())
	}
	found := false
	for _, e := range hook.AllEntries() {
		found = found || strings.Contains(e.Message, "did not load")
	}
	if !found {
		t.Error("no log line for the broken file")
	}

	write("DE")
	testutil.WaitUntil(t, "the good file is loaded again", func() bool { return country() == "DE" && rt.geo.stats().Err == "" })

	// A reload of the config with another path: opened first, in force at commit.
	other := filepath.Join(dir, "other.mmdb")
	if err := geoiptest.WriteFile(other, geoiptest.Network{Prefix: "203.0.113.0/24", Country: "FR"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rt.prepareGeoIP(configs.GeoIP{Path: filepath.Join(dir, "missing.mmdb")}); err == nil || country() != "DE" {
		t.Fatalf("a reload naming a missing database: %v, country %q", err, country())
	}
	commit, abort, err := rt.prepareGeoIP(configs.GeoIP{Path: other})
	if err != nil {
		t.Fatal(err)
	}
	abort() // a reload refused later: nothing changes
	if country() != "DE" {
		t.Fatalf("after abort: %q", country())
	}
	commit, _, _ = rt.prepareGeoIP(configs.GeoIP{Path: other})
	commit()
	if country() != "FR" || rt.geo.stats().Path != other {
		t.Fatalf("after the path changed: %q %+v", country(), rt.geo.stats())
	}
	commit, _, _ = rt.prepareGeoIP(configs.GeoIP{})
	commit()
	if country() != "" || rt.geo.stats() != nil {
		t.Fatal("a config without geoip kept the database")
	}
}

func TestClashRuleTypesOfMoreMatchers(t *testing.T) {
	us, _ := geoip.ParseCode("us")
	cn, _ := geoip.ParseCode("CN")
	for _, tc := range []struct {
		rule         configs.Rule
		typ, payload string
	}{
		{configs.Rule{User: []string{"alice"}}, "InUser", "alice"},
		{configs.Rule{DomainKeyword: []string{"ads"}}, "DomainKeyword", "ads"},
		{configs.Rule{DomainRegex: []configs.Regexp{configs.CompileRegexp(`^a\.`)}}, "DomainRegex", `^a\.`},
		{configs.Rule{DstGeoIP: []geoip.Code{us, cn}}, "OR", "((GeoIP,US) || (GeoIP,CN))"},
		{configs.Rule{SrcGeoIP: []geoip.Code{cn}, User: []string{"bob"}}, "AND", "((InUser,bob) && (SrcGeoIP,CN))"},
	} {
		if typ, payload := clashRule(tc.rule); typ != tc.typ || payload != tc.payload {
			t.Errorf("%+v: %s %q, want %s %q", tc.rule, typ, payload, tc.typ, tc.payload)
		}
	}
}
