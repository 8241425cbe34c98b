#!/usr/bin/env bash
# Build pyvmm's minimal Linux guest kernel from Debian's linux-source-6.1:
# tinyconfig + images/linux/pyvmm.config.  Output: images/out/linux/{bzImage,vmlinux,System.map}.
# Cached: rebuilt only when the fragment, these scripts or the source changes
# (and kept in /var/tmp/pyvmm-images for fresh clones: images/linux/kernel-tree.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/linux"
build="$here/out/linux-build"
fragment="$here/linux/pyvmm.config"
# shellcheck source=images/linux/kernel-tree.sh
. "$here/linux/kernel-tree.sh"

kernel_source_install
stamp="$(kernel_stamp "$fragment" "$0")"
if [ -f "$out/bzImage" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
kernel_cache_fetch linux "$stamp" "$out" && exit 0
kernel_tree_configure build-linux "$build" "$fragment"

cd "$build"
echo "build-linux: building bzImage with $(nproc) jobs" >&2
start=$(date +%s)
make -s -j"$(nproc)" bzImage >/dev/null
echo "build-linux: built in $(( $(date +%s) - start )) s" >&2
mkdir -p "$out"
cp arch/x86/boot/bzImage vmlinux System.map "$out/"
echo "$stamp" > "$out/stamp"
kernel_cache_store linux "$stamp" "$out"
