#!/usr/bin/env bash
# A Debian bookworm system with systemd, udev and dbus on a disk image, for
# the benchmarks that boot a whole distribution (bench/systemd_boot.py): not
# built by default (`bash images/build.sh systemd`; ~1 GB of downloads and
# disk).  Output in images/out/systemd/:
#   rootfs.img           raw ext4 (sparse, 2 GiB): the system, root=/dev/vda
#   rootfs.qcow2         the same system as qcow2 (qemu-img convert)
#   vmlinuz, initrd.img  the system's own kernel and initramfs-tools initramfs
# The system powers itself off once multi-user.target is reached
# (pyvmm-poweroff.service), so a boot is timed from start to exit 0.
# Cached: rebuilt only when this script changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/systemd"
if [ -f "$out/stamp" ] && [ "$out/stamp" -nt "$0" ]; then
    exit 0
fi
for tool in mmdebstrap mke2fs qemu-img; do
    command -v "$tool" >/dev/null || {
        echo "build-systemd: needs $tool (apt-get install mmdebstrap e2fsprogs qemu-utils)" >&2
        exit 1; }
done
work="$(mktemp -d /var/tmp/pyvmm-systemd.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
# initramfs-tools loads what finds the root disk on pyvmm's and QEMU microvm's
# virtio-mmio transport; the unit powers off once the boot is done.
mmdebstrap --quiet --variant=minbase \
    --include=systemd-sysv,udev,dbus,kmod,initramfs-tools,linux-image-amd64 \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools" && printf "virtio_mmio\nvirtio_blk\next4\n" >> "$1/etc/initramfs-tools/modules"' \
    --customize-hook='echo pyvmm-systemd > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 rw,relatime 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='cat > "$1/etc/systemd/system/pyvmm-poweroff.service" <<EOF
[Unit]
Description=Power off once multi-user.target is reached (pyvmm benchmarks)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c "echo pyvmm-systemd: multi-user.target reached > /dev/console; systemctl poweroff --no-block"

[Install]
WantedBy=multi-user.target
EOF
chroot "$1" systemctl enable pyvmm-poweroff.service' \
    bookworm "$root"
mkdir -p "$out"
cp "$(ls "$root"/boot/vmlinuz-* | tail -n1)" "$out/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | tail -n1)" "$out/initrd.img"
rm -f "$out/rootfs.img" "$out/rootfs.qcow2"
mke2fs -q -t ext4 -L pyvmm-systemd -d "$root" "$out/rootfs.img" 2G
qemu-img convert -f raw -O qcow2 "$out/rootfs.img" "$out/rootfs.qcow2"
date -u +%FT%TZ > "$out/stamp"
echo "build-systemd: $(du -sh --apparent-size "$out/rootfs.img" | cut -f1) image in $out" >&2
