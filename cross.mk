# `make cross`: static, stripped socksgate binaries for router CPUs, each checked against a size
# budget. Included by the top-level Makefile (`include cross.mk`); also usable on its own:
# `make -f cross.mk cross`.
#
#   linux/amd64, linux/arm64, linux/arm (GOARM=7), linux/mipsle and linux/mips (GOMIPS=softfloat)
#
# CGO is off (static, no libc), -trimpath, -ldflags "-s -w" (no symbol table, no DWARF), and no
# inlining in the cold packages (CROSS_COLD).
#
# Sizes now (bytes; xz -9), docs/performance.md "Binary size" has where they go:
#   amd64 10,563,746 (3,255,596)  arm64 9,830,562 (2,782,832)  armv7 10,027,170 (2,869,268)
#   mipsle-softfloat 11,534,529 (2,698,560)  mips-softfloat 11,534,529 (2,645,604)
# mips files grow in 64 KiB steps (segment alignment): measure a change by the loaded sections.
GO              ?= go
VERSION         ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CROSS_DIR       ?= bin/cross
CROSS_MAX_BYTES ?= 12000000
# A router's flash holds the compressed image: each binary's xz -9 size is checked too.
CROSS_MAX_XZ    ?= 4500000
CROSS_LDFLAGS   ?= -s -w -X main.version=$(VERSION)
# Packages that run once at start or on a command (config parsing, YAML and the regexps it
# compiles, the kernel rules' netlink setup and watcher, JSON, certificates, doctor, the CLI's
# flags and tables, net/http's error log, panics' stacks; the device table and its store, which
# run at a flow's end and every few seconds), and crypto/tls, which only the DNS-over-TLS/HTTPS
# clients use (a DoT query's cost is its handshake; dns's BenchmarkExchangeDoT/DoH show no
# difference), are compiled without inlining: it makes the binary smaller and costs nothing on
# a flow's path, which keeps inlining everywhere else (relay, gateway, socks, dns, nat, route,
# net, net/http for the explicit proxy, miekg/dns, logrus, fmt...). Without inlining a
# package's functions are not inlined into other packages either: a package a flow calls into,
# even for one small function, stays out of this list (unicode, strings, time; admin, whose log
# feed is asked about every log line).
CROSS_COLD      ?= github.com/socksgate/socksgate/configs github.com/socksgate/socksgate/internal/doctor \
                   github.com/socksgate/socksgate/cmd/socksgate go.yaml.in/yaml/v3 github.com/google/nftables/... \
                   github.com/vishvananda/netlink/... github.com/mdlayher/... github.com/socksgate/socksgate/redirect \
                   encoding/json crypto/x509 crypto/x509/pkix encoding/asn1 encoding/pem math/big regexp \
                   regexp/syntax flag text/tabwriter os/signal log runtime/debug internal/fmtsort crypto/tls \
                   github.com/socksgate/socksgate/device go.etcd.io/bbolt/...
CROSS_GCFLAGS   ?= $(foreach p,$(CROSS_COLD),-gcflags=$(p)=-l)
# os/arch/variant: the variant is GOARM for arm and GOMIPS for mips*.
CROSS_TARGETS   ?= linux/amd64/- linux/arm64/- linux/arm/7 linux/mipsle/softfloat linux/mips/softfloat

.PHONY: cross
cross:
	@mkdir -p $(CROSS_DIR)
	@set -e; fail=0; \
	for t in $(CROSS_TARGETS); do \
	  os=$${t%%/*}; rest=$${t#*/}; arch=$${rest%%/*}; variant=$${rest#*/}; \
	  name=socksgate-$$os-$$arch; goarm=; gomips=; \
	  case $$arch in \
	    arm) goarm=$$variant; name=$$name"v"$$variant ;; \
	    mips|mipsle|mips64|mips64le) gomips=$$variant; name=$$name-$$variant ;; \
	  esac; \
	  out=$(CROSS_DIR)/$$name; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$goarm GOMIPS=$$gomips \
	    $(GO) build -trimpath -ldflags '$(CROSS_LDFLAGS)' $(CROSS_GCFLAGS) -o $$out ./cmd/socksgate; \
	  size=$$(stat -c %s $$out); xzsize=$$(xz -9 -T1 -c $$out | wc -c); \
	  verdict=ok; \
	  if [ $$size -gt $(CROSS_MAX_BYTES) ]; then verdict="TOO BIG (limit $(CROSS_MAX_BYTES))"; fail=1; fi; \
	  if [ $$xzsize -gt $(CROSS_MAX_XZ) ]; then verdict="XZ TOO BIG (limit $(CROSS_MAX_XZ))"; fail=1; fi; \
	  awk -v f=$$out -v s=$$size -v x=$$xzsize -v v="$$verdict" 'BEGIN { printf "%-42s %9d bytes  %6.2f MiB  xz %8d bytes  %5.2f MiB  %s\n", f, s, s/1048576, x, x/1048576, v }'; \
	done; \
	if [ $$fail -ne 0 ]; then echo "cross: a binary is over the size budget"; exit 1; fi
