#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, when they are missing and this is a
# Debian/Ubuntu machine where we are root. Says what it does; never starts their services.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
# make runs the tests; -race needs cgo, so a C compiler and libc's headers.
have make      || need+=(make)
{ have gcc && [ -e /usr/include/stdlib.h ]; } || need+=(gcc libc6-dev)
have ip        || need+=(iproute2)
have nft       || need+=(nftables)
have curl      || need+=(curl)
have microsocks|| need+=(microsocks)
have danted    || need+=(dante-server)
have tinyproxy || need+=(tinyproxy)
# squid-openssl: the same /usr/sbin/squid as package squid (which it replaces), built with
# OpenSSL, which its https_port needs (the TLS upstream tests).
{ have squid && squid -v | grep -q -- '--with-openssl'; } || need+=(squid-openssl)
have stunnel4  || need+=(stunnel4)     # TLS in front of dante (socks5+tls upstream tests)
have socat     || need+=(socat)
have dig       || need+=(bind9-dnsutils)
have proxychains4 || need+=(proxychains4)
have openssl   || need+=(openssl)
have xz        || need+=(xz-utils)    # make cross checks the compressed size
have dnsmasq   || need+=(dnsmasq-base) # the binary only: no system service
have dnsdist   || need+=(dnsdist)      # DoT and DoH in front of dnsmasq (DNS tests)
have kdig      || need+=(knot-dnsutils) # DNS client with +tls and +https
have sysctl    || need+=(procps)
have ping      || need+=(iputils-ping) # the leak test: ICMP is routed, not proxied
{ have setpriv && have prlimit && have unshare; } || need+=(util-linux)
have keepalived|| need+=(keepalived)   # the HA pair test: VRRP between two gateways
# make bench
have redsocks  || need+=(redsocks)
have iperf3    || need+=(iperf3)
have wrk       || need+=(wrk)
have dnsperf   || need+=(dnsperf)
have gnuplot   || need+=(gnuplot-nox)  # make soak draws its samples
# the dashboard tests drive a real browser
have chromium  || need+=(chromium)
# make test-vm: a qemu guest with Debian's kernel (tests/vm/run.sh), for what this kernel lacks
have qemu-system-x86_64 || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static) # static: the guest's init
have depmod    || need+=(kmod)
have cpio      || need+=(cpio)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! have apt-get; then
	echo "deps: missing ${need[*]}; install them (Debian package names) or run as root on Debian/Ubuntu." >&2
	echo "deps: tests that need them will skip, saying so." >&2
	exit 0
fi
echo "deps: installing Debian packages: ${need[*]}"
# Packages such as squid and dante-server would start system-wide services on install: forbid it.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
	trap 'rm -f "$policy"' EXIT # also when apt fails: left behind, it would stop every service start
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Nor start at the next boot: the services these packages enable are not wanted on this machine.
if have systemctl; then
	for unit in squid tinyproxy danted redsocks dnsdist keepalived stunnel4; do
		systemctl disable --quiet "$unit" >/dev/null 2>&1 || true
	done
fi
echo "deps: done"
