//go:build nogeoip

package configs

import (
	"strings"
	"testing"
)

// In a build without GeoIP, geoip settings are refused with a reason, not ignored.
func TestGeoIPRefusedWithoutGeoIP(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"geoip: {path: /x.mmdb}", "geoip.path: socksgate was built without GeoIP"},
		{"geoip: {path: /x.mmdb}\nrules: [{dst_geoip: [cn], action: direct}]", "rules[0].dst_geoip: socksgate was built without GeoIP"},
		{"rules: [{src_geoip: [cn], action: direct}]", "rules[0].src_geoip: socksgate was built without GeoIP"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}
