#!/bin/sh
# The guest's init after switch_root (tests/vm/run.sh): a private /tmp and /run, Debian's
# modules where modprobe looks, the job (its output and status in the job's directory on the
# shared root), then power off.
job=$(sed -n 's/.*vmjob=\([^ ]*\).*/\1/p' /proc/cmdline)
. "$job/env"
# The host's /tmp stays reachable where the job's directory lies under it (a checkout in
# /tmp): that tree is bound back into the guest's own /tmp.
mount --bind /tmp /mnt # the guest's own: /mnt is only a mount point here
mount -t tmpfs tmpfs /tmp
case "$VM_PWD" in /tmp/?*)
	top=${VM_PWD#/tmp/}; top=${top%%/*}
	mkdir -p "/tmp/$top" && mount --bind "/mnt/$top" "/tmp/$top" ;;
esac
mount -t tmpfs tmpfs /run; mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount --bind "$VM_MODULES" /usr/lib/modules
ip link set lo up
# What socksgate's table and the labs use, loaded now: emulated, the kernel's own loading of a
# module in the middle of an nftables batch can take longer than socksgate waits for its acks.
modprobe -a veth nf_tables nf_conntrack nft_ct nft_nat nft_chain_nat nft_redir nft_masq nft_fib_inet \
	nft_fib_ipv4 nft_fib_ipv6 nft_socket nft_tproxy nft_reject_inet nf_flow_table_inet nft_flow_offload \
	nft_counter nft_limit nft_compat xt_conntrack sch_netem 2>/dev/null
sh -c ". $job/cmd" > "$job/out" 2>&1 </dev/null
echo $? > "$job/rc"
sync
echo o > /proc/sysrq-trigger
sleep 10
