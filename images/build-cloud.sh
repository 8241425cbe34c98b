#!/usr/bin/env bash
# The demo guest for hardware-KVM hosts: Debian's stock cloud kernel and an
# initramfs that carries and loads its virtio modules (they are modules in
# that kernel, not built in).  Output in images/out/cloud/:
#   vmlinuz              the distribution bzImage
#   initramfs.cpio.gz    busybox + images/initramfs/init + virtio modules
# Cached: rebuilt only when the kernel package version changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/cloud"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    $sudo apt-get update -qq
fi
package="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$package" ] || { echo "build-cloud: no linux-image-*-cloud-amd64 package found" >&2; exit 1; }
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$package" ] \
        && [ "$out/stamp" -nt "$here/initramfs/init" ] && [ "$out/stamp" -nt "$0" ]; then
    exit 0
fi
work="$(mktemp -d)"
chmod 755 "$work"  # apt-get download runs as _apt
trap 'rm -rf "$work"' EXIT
echo "build-cloud: fetching $package" >&2
(cd "$work" && apt-get download -qq "$package" 2>&1 >/dev/null | grep -v unsandboxed >&2 || true)
dpkg-deb -x "$work"/*.deb "$work/pkg"
release="${package#linux-image-}"
moddir="$work/pkg/lib/modules/$release"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc} "$root/lib/modules"
cp /bin/busybox "$root/bin/busybox"
cp "$here/initramfs/init" "$root/init"
# The virtio modules a pyvmm machine needs, with what they depend on (the
# "depends=" of each module's .modinfo), in load order.
wanted="virtio_mmio virtio_blk virtio_console"
order=()
add_module() {
    local name="$1" path deps dep seen
    path="$(cd "$moddir" && find kernel -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)"
    [ -n "$path" ] || return 0   # built into this kernel
    for seen in "${order[@]:-}"; do [ "$seen" = "$path" ] && return 0; done
    deps="$(strings -a "$moddir/$path" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' ')"
    for dep in $deps; do add_module "$dep"; done
    order+=("$path")
}
for name in $wanted; do add_module "$name"; done
: > "$root/lib/modules/load-order"
for path in "${order[@]:-}"; do
    file="$(basename "$path")"
    case "$file" in
        *.xz)  xz -dc "$moddir/$path" > "$root/lib/modules/${file%.xz}"; file="${file%.xz}" ;;
        *.zst) zstd -qdc "$moddir/$path" > "$root/lib/modules/${file%.zst}"; file="${file%.zst}" ;;
        *)     cp "$moddir/$path" "$root/lib/modules/$file" ;;
    esac
    echo "$file" >> "$root/lib/modules/load-order"
done
mkdir -p "$out"
cp "$work/pkg/boot/vmlinuz-$release" "$out/vmlinuz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"
echo "$package" > "$out/stamp"
echo "build-cloud: $out/vmlinuz with modules: $(tr '\n' ' ' < "$root/lib/modules/load-order")" >&2
