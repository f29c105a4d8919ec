#!/usr/bin/env bash
# tests/vm/run.sh CMD...: runs CMD as root in a qemu guest that boots Debian's own kernel
# (linux-image-amd64, its netfilter built as modules, nf_flow_table among them) with this
# machine's root filesystem as the guest's (9p, read-write), so the guest has every binary and
# peer the host has and writes its results where the host reads them. For what the host's
# kernel lacks: the lab machine's kernel has no CONFIG_NF_FLOW_TABLE and no modules. Prints
# CMD's output and exits with its status. Needs qemu-system-x86, busybox-static, kmod and cpio.
# The guest is emulated (TCG) unless VM_ACCEL says otherwise ("-enable-kvm"): under this lab's
# nested virtualisation a KVM guest hangs before its kernel prints a line. Emulated, it is
# slow (a boot takes about 20 s) but exact: what it is for is what the kernel does, not how fast.
# VM_CPUS (2) and VM_MEM (2G) size the guest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VM_CACHE:-/var/cache/socksgate-vm}
[ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }
mkdir -p "$cache"
if [ ! -f "$cache/vmlinuz" ]; then
	pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
	(cd "$cache" && rm -rf root ./*.deb && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
	kver=$(ls "$cache/root/lib/modules")
	depmod -b "$cache/root" "$kver"
	cp "$cache/root/boot/vmlinuz-$kver" "$cache/vmlinuz.tmp" && mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
fi
kver=$(ls "$cache/root/lib/modules")
if [ ! -f "$cache/initrd" ]; then
	rd=$(mktemp -d)
	mkdir -p "$rd"/{bin,proc,sys,dev,newroot,mod}
	cp /bin/busybox "$rd/bin/busybox"
	mods=""
	for m in 9p 9pnet_virtio virtio_pci; do
		for f in $(modprobe -d "$cache/root" -S "$kver" --show-depends "$m" | awk '{print $2}'); do
			b=$(basename "$f" .ko)
			case " $mods " in *" $b "*) ;; *) cp "$f" "$rd/mod/"; mods="$mods $b" ;; esac
		done
	done
	cat > "$rd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in$mods; do insmod /mod/\$m.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap,access=any hostroot /newroot || { echo vm: no root; poweroff -f; }
guest=\$(sed -n 's/.*vmguest=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot \$guest
INIT
	chmod +x "$rd/init"
	(cd "$rd" && find . | cpio -o -H newc 2>/dev/null | gzip) > "$cache/initrd.tmp" && mv "$cache/initrd.tmp" "$cache/initrd"
	rm -rf "$rd"
fi
# The command, the directory it runs in and its environment reach the guest in files.
mkdir -p /usr/lib/modules "$cache/jobs" # the guest mounts its modules there; the host has none
job=$(mktemp -d "$cache/jobs/XXXXXX")
{
	echo "export PATH=$(printf %q "$PATH") VM_MODULES=$(printf %q "$cache/root/lib/modules") VM_PWD=$(printf %q "$PWD")"
	for v in CI GOFLAGS HOME $(env | sed -n 's/^\(BENCH[A-Z_]*\|SOAK[A-Z_]*\|SOCKSGATE[A-Z_]*\)=.*/\1/p'); do
		[ -n "${!v+x}" ] && echo "export $v=$(printf %q "${!v}")"
	done
} > "$job/env"
{ echo "cd $(printf %q "$PWD")"; printf '%q ' "$@"; echo; } > "$job/cmd"
: > "$job/out"
tail -q -n +1 -F "$job/out" 2>/dev/null & tailer=$!
trap 'kill $tailer 2>/dev/null || true' EXIT
qemu-system-x86_64 ${VM_ACCEL:--accel tcg,thread=multi} -cpu "${VM_CPU:-max}" -smp "${VM_CPUS:-2}" -m "${VM_MEM:-2G}" -nographic -no-reboot \
	-kernel "$cache/vmlinuz" -initrd "$cache/initrd" \
	-append "console=ttyS0 ${VM_QUIET-quiet} ${VM_APPEND-} panic=-1 vmjob=$job vmguest=$here/guest.sh" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap \
	-nic none -serial file:"$job/console" -monitor none || true
sleep 0.5
rc=$(cat "$job/rc" 2>/dev/null || echo 99)
[ "$rc" = 99 ] && { echo "vm: the guest ended without a status; its console:" >&2; tail -30 "$job/console" >&2; }
rm -rf "$job"
exit "$rc"
