# `make cross`: static, stripped socksgate binaries for router CPUs, each checked against a size
# budget. Included by the top-level Makefile (`include cross.mk`); also usable on its own:
# `make -f cross.mk cross`.
#
#   linux/amd64, linux/arm64, linux/arm (GOARM=7), linux/mipsle and linux/mips (GOMIPS=softfloat)
#
# CGO is off (static, no libc), -trimpath, -ldflags "-s -w" (no symbol table, no DWARF), and no
# inlining outside the packages a flow goes through (CROSS_HOT).
#
# Sizes now (bytes; xz -9), docs/performance.md "Binary size" has where they go:
#   amd64 11,272,354 (3,376,656)  arm64 10,420,386 (2,900,740)  armv7 10,551,458 (2,948,348)
#   mipsle-softfloat 11,927,745 (2,696,668)  mips-softfloat 11,927,745 (2,643,776), both nogeoip
# mips files grow in 64 KiB steps (segment alignment): measure a change by the loaded sections.
GO              ?= go
VERSION         ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CROSS_DIR       ?= bin/cross
CROSS_MAX_BYTES ?= 12000000
# A router's flash holds the compressed image: each binary's xz -9 size is checked too.
CROSS_MAX_XZ    ?= 4500000
CROSS_LDFLAGS   ?= -s -w -X main.version=$(VERSION)
# Build tags: nogeoip leaves out the GeoIP database reader (geoip.path, dst_geoip and
# src_geoip then fail validation, naming the tag). The 32-bit MIPS builds have it: with the
# reader (maxminddb and its reflection decoder) a mips binary is 12,124,353 bytes, over, and
# the routers they are for (ath79, ramips: 8-32 MB of flash) have no room for a 4-9 MB country
# database beside the image either; a country's prefix list as a cidr rule set (dst_set,
# hoisted into the kernel like dst_geoip) does the same job there in about 100 KB.
CROSS_TAGS      ?=
CROSS_MIPS_TAGS ?= nogeoip
# Inlining is kept only where a flow's bytes, its handshake and routing, or a DNS query go:
# the runtime and its internal packages, sync, syscall, x/sys/unix, net, the small standard
# packages whose functions inline into those callers (time, context, errors, bytes, strings,
# strconv, bufio, io, encoding/binary, math, unicode/utf8, hash/maphash, net/netip), x/net,
# logrus, and socksgate's own packages but the cold ones below. Everything else
# (CROSS_COLD_ALL) is compiled without inlining: config and YAML parsing, nftables and netlink
# setup, JSON, certificates and crypto (TLS handshakes: DoT/DoH; dns's BenchmarkExchangeDoT/DoH
# show no difference), net/http (the admin endpoint, DoH, and an explicit HTTP proxy's request
# head; not its bytes), fmt, sort, compress, the WebSocket library. Without inlining a
# package's functions are not inlined into other packages either, which is why the small
# standard packages a flow calls into stay in CROSS_HOT. Turning inlining off this way took
# the mips binary from 12,386,497 to 11,927,745 bytes; turning it off everywhere would reach
# about 10.8 MB and slow every flow. miekg/dns is cold too (-101 KB on mips): a DNS query is
# not a flow's bytes, and its cache-hit handler stays near 1 us either way (0.93-1.36 hot,
# 1.05-1.36 cold, dns BenchmarkHandlerCacheHit alternating on a loaded 2-core VM): a router
# asks tens of queries a second.
CROSS_HOT       ?= runtime internal/... sync sync/atomic syscall net net/netip golang.org/x/sys/unix \
                   time context errors bytes strings io encoding/binary unicode/utf8 strconv bufio \
                   math math/bits hash/maphash golang.org/x/net/... \
                   github.com/sirupsen/logrus github.com/socksgate/socksgate/...
# socksgate's own packages that run once at start, on a command, or every few seconds, and
# the two that answer requests rather than carry flows: admin (the control API, the dashboard)
# and dns (socksgate's resolver; a flow's name from the fake-ip or real-IP map is one map read
# either way). Cold, they save 31 KB on mips; dns BenchmarkHandlerCacheHit (1.00-1.20 us) and
# BenchmarkNamesLookup (83-170 ns) did not tell hot from cold, alternating on the 2-core VM.
CROSS_COLD      ?= github.com/socksgate/socksgate/configs github.com/socksgate/socksgate/internal/doctor \
                   github.com/socksgate/socksgate/cmd/socksgate github.com/socksgate/socksgate/redirect \
                   github.com/socksgate/socksgate/device github.com/socksgate/socksgate/admin \
                   github.com/socksgate/socksgate/dns
# The last pattern that matches a package gives its flags: all cold, then the hot ones, then ours.
CROSS_GCFLAGS   ?= -gcflags=all=-l $(foreach p,$(CROSS_HOT),-gcflags=$(p)=) $(foreach p,$(CROSS_COLD),-gcflags=$(p)=-l)
# os/arch/variant: the variant is GOARM for arm and GOMIPS for mips*.
CROSS_TARGETS   ?= linux/amd64/- linux/arm64/- linux/arm/7 linux/mipsle/softfloat linux/mips/softfloat

.PHONY: cross
cross:
	@mkdir -p $(CROSS_DIR)
	@set -e; fail=0; \
	for t in $(CROSS_TARGETS); do \
	  os=$${t%%/*}; rest=$${t#*/}; arch=$${rest%%/*}; variant=$${rest#*/}; \
	  name=socksgate-$$os-$$arch; goarm=; gomips=; tags="$(CROSS_TAGS)"; \
	  case $$arch in \
	    arm) goarm=$$variant; name=$$name"v"$$variant ;; \
	    mips|mipsle) gomips=$$variant; name=$$name-$$variant; tags="$$tags $(CROSS_MIPS_TAGS)" ;; \
	    mips64|mips64le) gomips=$$variant; name=$$name-$$variant ;; \
	  esac; \
	  out=$(CROSS_DIR)/$$name; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$goarm GOMIPS=$$gomips \
	    $(GO) build -trimpath -tags "$$tags" -ldflags '$(CROSS_LDFLAGS)' $(CROSS_GCFLAGS) -o $$out ./cmd/socksgate; \
	  size=$$(stat -c %s $$out); xzsize=$$(xz -9 -T1 -c $$out | wc -c); \
	  verdict=ok; \
	  if [ $$size -gt $(CROSS_MAX_BYTES) ]; then verdict="TOO BIG (limit $(CROSS_MAX_BYTES))"; fail=1; fi; \
	  if [ $$xzsize -gt $(CROSS_MAX_XZ) ]; then verdict="XZ TOO BIG (limit $(CROSS_MAX_XZ))"; fail=1; fi; \
	  awk -v f=$$out -v s=$$size -v x=$$xzsize -v v="$$verdict" 'BEGIN { printf "%-42s %9d bytes  %6.2f MiB  xz %8d bytes  %5.2f MiB  %s\n", f, s, s/1048576, x, x/1048576, v }'; \
	  case "$$tags" in *[a-z]*) echo "    (built with -tags$$tags)" | tr -s ' ' ;; esac; \
	done; \
	if [ $$fail -ne 0 ]; then echo "cross: a binary is over the size budget"; exit 1; fi
