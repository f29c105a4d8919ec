#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a fixed time each (default 10s): `make fuzz`.
# A crash is written by `go test` under the package's testdata/fuzz/ and fails the run; commit it
# as a regression seed once fixed.
set -euo pipefail
t=${1:-10s}
cd "$(dirname "$0")/.."
fail=0
n=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u || true)
	for f in $targets; do
		n=$((n+1))
		echo "fuzz: $pkg $f ($t)"
		# Go 1.26's fuzz coordinator can report the end of -fuzztime itself as a failure,
		# "context deadline exceeded" with no failing input written (go.dev/issue/75804, fixed
		# in Go 1.27). Such a run is retried once; a run that writes a failing input never is.
		for try in 1 2; do
			before=$(find "$dir/testdata/fuzz/$f" -type f 2>/dev/null | wc -l || true)
			if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/fuzz.$$.log 2>&1; then
				grep -E 'elapsed|new interesting|execs' /tmp/fuzz.$$.log | tail -1 || true
				break
			fi
			after=$(find "$dir/testdata/fuzz/$f" -type f 2>/dev/null | wc -l || true)
			if [ "$try" = 1 ] && [ "$after" = "$before" ] && grep -q '^    context deadline exceeded$' /tmp/fuzz.$$.log; then
				echo "fuzz: $f: the coordinator's deadline race (go.dev/issue/75804), no failing input: once more"
				continue
			fi
			cat /tmp/fuzz.$$.log
			fail=1
			break
		done
	done
done
rm -f /tmp/fuzz.$$.log
echo "fuzz: $n targets, $([ $fail = 0 ] && echo all passed || echo FAILURES)"
exit $fail
