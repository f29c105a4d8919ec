#!/usr/bin/env bash
# make demo: the transparent gateway in four network namespaces.
#
#   lan (10.0.1.2) ── gw: socksgate (10.0.1.1 | 10.0.2.1) ── proxy: microsocks (10.0.2.2) ── wan: web (203.0.113.10)
#
# lan has no proxy settings at all; gw's forwarding of lan traffic is dropped, so the page can
# only arrive through socksgate and the SOCKS5 upstream. Everything is torn down on exit,
# failure or Ctrl-C. Needs root.
set -euo pipefail
BIN=$(readlink -f "${1:-bin/socksgate}")
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces): sudo make demo" >&2; exit 1; }
for c in ip nft curl microsocks socat; do command -v $c >/dev/null || { echo "demo: $c missing (make deps)" >&2; exit 1; }; done

P=sgdemo$$
NS=(lan gw proxy wan)
WORK=$(mktemp -d)
cleanup() {
	set +e
	exec 2>/dev/null # the shell's own "Killed" notices for the lab's processes
	for n in "${NS[@]}"; do
		for pid in $(ip netns pids $P-$n 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
	done
	for n in "${NS[@]}"; do ip netns del $P-$n 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
x() { local n=$1; shift; ip netns exec $P-$n "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building the lab: ${NS[*]} (namespaces $P-*)"
for n in "${NS[@]}"; do
	ip netns add $P-$n
	x $n ip link set lo up
	x $n sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
x lan ip link add eth0 type veth peer name lan0 netns $P-gw
x gw ip link add up0 type veth peer name gw0 netns $P-proxy
x proxy ip link add wan0 type veth peer name eth0 netns $P-wan
x lan ip addr add 10.0.1.2/24 dev eth0;  x lan ip link set eth0 up
x gw ip addr add 10.0.1.1/24 dev lan0;   x gw ip link set lan0 up
x gw ip addr add 10.0.2.1/24 dev up0;    x gw ip link set up0 up
x proxy ip addr add 10.0.2.2/24 dev gw0; x proxy ip link set gw0 up
x proxy ip addr add 203.0.113.1/24 dev wan0; x proxy ip link set wan0 up
x wan ip addr add 203.0.113.10/24 dev eth0;  x wan ip link set eth0 up
x lan ip route add default via 10.0.1.1
x gw ip route add default via 10.0.2.2
x proxy ip route add 10.0.1.0/24 via 10.0.2.1
x wan ip route add default via 203.0.113.1
x gw sysctl -qw net.ipv4.ip_forward=1
x proxy sysctl -qw net.ipv4.ip_forward=1
# The lab's own filter (not socksgate's): gw may not forward lan traffic out.
x gw nft add table inet labfilter
x gw nft add chain inet labfilter forward '{ type filter hook forward priority 0; }'
x gw nft add rule inet labfilter forward iifname lan0 oifname up0 counter drop

say "wan: a web server on 203.0.113.10:80; proxy: microsocks on 10.0.2.2:1080"
cat > "$WORK/http.sh" <<'SH'
#!/bin/sh
# One HTTP/1.0 exchange: read the request head, answer a fixed page.
cr=$(printf '\r')
while IFS= read -r line; do
	case "$line" in "$cr"|"") break ;; esac
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nhello from wan\n'
SH
chmod +x "$WORK/http.sh"
x wan socat TCP-LISTEN:80,fork,reuseaddr EXEC:"$WORK/http.sh" &
x proxy microsocks -i 0.0.0.0 -p 1080 >/dev/null 2>&1 &
# Wait for both to listen (bash connects with /dev/tcp from inside their own namespaces).
for _ in $(seq 100); do
	x wan bash -c '</dev/tcp/127.0.0.1/80' 2>/dev/null && x proxy bash -c '</dev/tcp/127.0.0.1/1080' 2>/dev/null && break
	sleep 0.1
done

cat > "$WORK/socksgate.yaml" <<YAML
lan: {interfaces: [lan0]}
listen: {http: [], socks: []}
upstreams:
  - {name: main, url: "socks5://10.0.2.2:1080"}
rules:
  - {action: proxy, upstream: main}
YAML
say "gw: socksgate with this config"
cat "$WORK/socksgate.yaml"
x gw "$BIN" run -c "$WORK/socksgate.yaml" >"$WORK/socksgate.log" 2>&1 &
disown -a # cleanup kills them by namespace; no job notices
for _ in $(seq 100); do grep -q "socksgate ready" "$WORK/socksgate.log" && break; sleep 0.1; done
grep -q "socksgate ready" "$WORK/socksgate.log" || { cat "$WORK/socksgate.log"; exit 1; }

say "gw: the rules socksgate installed (nft list table inet socksgate)"
x gw nft list table inet socksgate

say "lan: curl http://203.0.113.10/   (no proxy settings)"
if ! x lan curl -sS --max-time 10 http://203.0.113.10/; then
	echo "demo: the request failed; socksgate's log:"; cat "$WORK/socksgate.log"; exit 1
fi

# The flow's line is written when the flow ends, just after curl has its answer.
for _ in $(seq 50); do grep -q 'msg=flow' "$WORK/socksgate.log" && break; sleep 0.1; done
say "gw: socksgate's log"
cat "$WORK/socksgate.log"
say "gw: packets the lab filter dropped trying to go direct (socksgate's own sockets are not forwarded)"
x gw nft list chain inet labfilter forward | grep counter

say "stopping socksgate (SIGTERM): rules are removed"
pkill -TERM -f "$BIN run -c $WORK" || true
for _ in $(seq 50); do x gw nft list tables | grep -q socksgate || break; sleep 0.1; done
x gw nft list tables | grep -q socksgate && { echo "table still present!"; exit 1; }
echo "no socksgate table left in gw"
say "demo done; tearing down the lab"
