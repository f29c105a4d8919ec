package admin

import (
	"fmt"
	"os"
	"testing"
)

func TestParseStatm(t *testing.T) {
	for _, c := range []struct {
		in             string
		size, resident uint64
		ok             bool
	}{
		{"391406 2597 1510 330 0 31893 0\n", 391406, 2597, true},
		{"1 2", 1, 2, true},
		{"18446744073709551615 0 0 0 0 0 0\n", 1<<64 - 1, 0, true},
		{"", 0, 0, false},
		{"12\n", 0, 0, false},
		{"x 2 3", 0, 0, false},
		{"1 -2 3", 0, 0, false},
		{"18446744073709551616 1", 0, 0, false},
	} {
		size, resident, err := parseStatm([]byte(c.in))
		if (err == nil) != c.ok || size != c.size || resident != c.resident {
			t.Errorf("parseStatm(%q) = %d, %d, %v", c.in, size, resident, err)
		}
	}
	// This process's own statm parses.
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	if size, resident, err := parseStatm(b); err != nil || resident == 0 || size < resident {
		t.Errorf("own statm %q: %d, %d, %v", b, size, resident, err)
	}
}

// countOpenFDs sees a descriptor opened and closed.
func TestCountOpenFDsFollowsOpenFiles(t *testing.T) {
	before, err := countOpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	during, err := countOpenFDs()
	f.Close()
	if err != nil || during < before+1 || before < 3 {
		t.Errorf("open fds %d, then %d with one more open (err %v)", before, during, err)
	}
}

// FuzzParseStatm: any statm text parses or is refused without panicking, and what parses
// formats back to the same two numbers.
func FuzzParseStatm(f *testing.F) {
	f.Add("391406 2597 1510 330 0 31893 0\n")
	f.Add("1 2")
	f.Add("")
	f.Add("\t\n 5 \t 6")
	f.Add("99999999999999999999 1")
	f.Fuzz(func(t *testing.T, s string) {
		size, resident, err := parseStatm([]byte(s))
		if err != nil {
			return
		}
		s2, r2, err := parseStatm(fmt.Appendf(nil, "%d %d", size, resident))
		if err != nil || s2 != size || r2 != resident {
			t.Fatalf("%q: %d %d, again %d %d %v", s, size, resident, s2, r2, err)
		}
	})
}
