#!/usr/bin/env bash
# Build pyvmm's minimal Linux guest kernel from Debian's linux-source-6.1:
# tinyconfig + images/linux/pyvmm.config.  Output: images/out/linux/{bzImage,vmlinux,System.map}.
# Cached: rebuilt only when the fragment, this script or the source changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/linux"
build="$here/out/linux-build"
tarball=/usr/src/linux-source-6.1.tar.xz
fragment="$here/linux/pyvmm.config"

if [ ! -f "$tarball" ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-source-6.1 \
        bc flex bison libelf-dev libssl-dev >/dev/null
fi

stamp="$(cat "$fragment" "$0" | sha256sum | cut -c1-16)-$(stat -c %s "$tarball")"
if [ -f "$out/bzImage" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi

if [ ! -f "$build/Makefile" ]; then
    rm -rf "$build"
    mkdir -p "$build"
    echo "build-linux: unpacking $tarball" >&2
    tar -xJf "$tarball" -C "$build" --strip-components=1
fi

cd "$build"
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >/dev/null
missing=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    name="${line%%=*}"; want="${line#*=}"
    if [ "$want" = n ]; then
        grep -q "^$name=" .config && { echo "build-linux: $name is set, wanted off" >&2; missing=1; }
    else
        grep -qx "$line" .config || { echo "build-linux: $name is not $want" >&2; missing=1; }
    fi
done < "$fragment"
[ "$missing" -eq 0 ] || exit 1

echo "build-linux: building bzImage with $(nproc) jobs" >&2
start=$(date +%s)
make -s -j"$(nproc)" bzImage >/dev/null
echo "build-linux: built in $(( $(date +%s) - start )) s" >&2
mkdir -p "$out"
cp arch/x86/boot/bzImage vmlinux System.map "$out/"
echo "$stamp" > "$out/stamp"
