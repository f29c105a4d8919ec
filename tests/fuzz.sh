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
		if ! go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/fuzz.$$.log 2>&1; then
			cat /tmp/fuzz.$$.log
			fail=1
		else
			grep -E 'elapsed|new interesting|execs' /tmp/fuzz.$$.log | tail -1 || true
		fi
	done
done
rm -f /tmp/fuzz.$$.log
echo "fuzz: $n targets, $([ $fail = 0 ] && echo all passed || echo FAILURES)"
exit $fail
