#!/usr/bin/env bash
# Runs one command under Debian 12's own kernel (issue 18, first step): a
# qemu VM (TCG: KVM does not work on this machine kind) boots the stock
# `linux-image-amd64` kernel with a small initramfs, mounts this host's root
# file system read-only over 9p with a tmpfs overlay on top, makes Debian's
# modules for that kernel loadable (modprobe on demand, as on a Debian host),
# runs the command as root and powers off. The command's exit status
# becomes this script's.
#
#   scripts/vm/debian-kernel-run.sh [--mem MiB] [--cpus N] -- COMMAND [ARGS...]
#
# What it is for: everything tandem has run so far ran on this machine's
# kernel (6.18); a Debian 12 host runs 6.1, whose nftables has `queue`, so
# tandem's nftables capture path is taken there. Inside the VM the usual
# namespace lab runs unchanged (`tandem lab ...`, `tandem demo`), on 6.1.
#
# Needs: qemu-system-x86 (installed here if missing), apt-get download of
# linux-image-amd64 and busybox-static (cached under /var/cache/tandem-vm).
set -euo pipefail

mem=3072
cpus=2
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mem="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "no command: $0 -- COMMAND [ARGS...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (9p export of / and apt-get)" >&2; exit 1; }

cache=/var/cache/tandem-vm
mkdir -p "$cache"
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "installing qemu-system-x86"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi

# The kernel package the `linux-image-amd64` metapackage points at today.
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$pkg" ] || { echo "cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver=${pkg#linux-image-}
tree="$cache/$kver"
if [ ! -e "$tree/boot/vmlinuz-$kver" ]; then
    echo "fetching $pkg"
    rm -rf "$tree" "$cache/dl" && mkdir -p "$cache/dl"
    (cd "$cache/dl" && apt-get download "$pkg" busybox-static 2>/dev/null)
    dpkg-deb -x "$cache"/dl/linux-image-*.deb "$tree"
    dpkg-deb -x "$cache"/dl/busybox-static*.deb "$tree/bb"
    # modprobe's index, built here: inside the VM, under TCG and over 9p,
    # it takes minutes.
    "$tree/bb/bin/busybox" depmod -b "$tree" "$kver"
    rm -rf "$cache/dl"
fi

# The initramfs: busybox, the modules that reach the 9p root, and /init.
initrd="$cache/initrd-$kver.cpio.gz"
if [ ! -e "$initrd" ] || [ "$0" -nt "$initrd" ]; then
    work=$(mktemp -d)
    mkdir -p "$work"/{bin,dev,proc,sys,mods,newroot,lower,upper}
    cp "$tree/bb/bin/busybox" "$work/bin/busybox"
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
             netfs fscache 9pnet 9pnet_virtio 9p overlay; do
        f=$(find "$tree/lib/modules/$kver" -name "$m.ko" | head -1)
        [ -n "$f" ] && cp "$f" "$work/mods/"
    done
    cat > "$work/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         netfs fscache 9pnet 9pnet_virtio 9p overlay; do
    [ -e /mods/$m.ko ] && /bin/busybox insmod /mods/$m.ko 2>/dev/null
done
echo "initramfs: mounting the host's root"
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /lower
/bin/busybox mount -t tmpfs tmpfs /upper
/bin/busybox mkdir -p /upper/u /upper/w
/bin/busybox mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
inner=
for word in $(/bin/busybox cat /proc/cmdline); do
    case "$word" in tandem.inner=*) inner="${word#tandem.inner=}" ;; esac
done
echo "initramfs: switching to $inner"
exec /bin/busybox switch_root /newroot /bin/bash "$inner"
INIT
    chmod +x "$work/init"
    (cd "$work" && find . | "$tree/bb/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$initrd"
    rm -rf "$work"
fi

# What runs inside: written where the 9p root shows it.
inner="$cache/inner.sh"
cmdfile="$cache/command"
printf '%q ' "$@" > "$cmdfile"
cat > "$inner" <<INNER
#!/bin/bash
# Runs inside the VM as PID 1 (after switch_root).
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
# Debian's modules for this kernel, where modprobe looks (the overlay makes
# the 9p tree writable for depmod's index).
ln -sfn "$tree/lib/modules" /lib/modules
cp "$tree/bb/bin/busybox" /bin/busybox-vm
printf '#!/bin/sh\nexec /bin/busybox-vm modprobe "\$@"\n' > /sbin/modprobe; chmod +x /sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
echo "== vm: kernel \$(uname -r); running: \$(cat $cmdfile)"
cd "$PWD"
bash -c "\$(cat $cmdfile)"
rc=\$?
echo "== vm: exit status \$rc"
echo o > /proc/sysrq-trigger
INNER
chmod +x "$inner"

log="$cache/console.log"
qemu-system-x86_64 -accel tcg -m "$mem" -smp "$cpus" -nographic -no-reboot \
    -kernel "$tree/boot/vmlinuz-$kver" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 rdinit=/init tandem.inner=$inner" \
    -virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap \
    -monitor none -serial stdio | tee "$log"
rc=$(awk '/== vm: exit status/ {print $NF}' "$log" | tr -d '\r' | tail -1)
[ -n "$rc" ] || { echo "the VM did not report an exit status (see $log)" >&2; exit 1; }
exit "$rc"
