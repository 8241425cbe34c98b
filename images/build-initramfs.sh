#!/usr/bin/env bash
# Build images/out/initramfs.cpio.gz: busybox-static and images/initramfs/init.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/initramfs.cpio.gz"
busybox=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1 || ! command -v cpio >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq busybox-static cpio >/dev/null
fi
if [ -f "$out" ] && [ "$out" -nt "$here/initramfs/init" ] && [ "$out" -nt "$0" ] \
        && [ "$out" -nt "$busybox" ]; then
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc}
cp "$busybox" "$root/bin/busybox"
cp "$here/initramfs/init" "$root/init"
mkdir -p "$(dirname "$out")"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out.tmp"
mv "$out.tmp" "$out"
