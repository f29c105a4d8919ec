package route

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
)

// testNames is the only DNS the route tests have: they never ask a real resolver.
var testNames = map[string][]netip.Addr{
	"localhost":        {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
	"two.test":         {netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.7")},
	"blocked-one.test": {netip.MustParseAddr("198.51.100.8"), netip.MustParseAddr("10.99.0.1")},
}

func TestMain(m *testing.M) {
	defaultResolve = func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := testNames[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host (route tests resolve only testNames)")
	}
	os.Exit(m.Run())
}
