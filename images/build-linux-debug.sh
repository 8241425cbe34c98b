#!/usr/bin/env bash
# The debug variant of pyvmm's minimal kernel (`bash images/build.sh linux-debug`,
# not built by default): images/linux/pyvmm.config + images/linux/debug.config
# (DWARF debug info, the kernel's gdb scripts) in its own build tree, so the
# normal image and its cache stay untouched.  Output: images/out/linux-debug/
# {bzImage,vmlinux,System.map,vmlinux-gdb.py,scripts/gdb/}, what
# tests/linux/test_gdb.py's lx-dmesg and lx-ps need.  Cached like build-linux.sh;
# the steps both share are images/linux/kernel-tree.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/linux-debug"
build="$here/out/linux-debug-build"
fragments=("$here/linux/pyvmm.config" "$here/linux/debug.config")
# A debug build is long and the hosts that build it are small and shared.
nice=(nice -n 10)
# shellcheck source=images/linux/kernel-tree.sh
. "$here/linux/kernel-tree.sh"

kernel_source_install
stamp="$(kernel_stamp "${fragments[@]}" "$0")"
if [ -f "$out/vmlinux-gdb.py" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
kernel_cache_fetch linux-debug "$stamp" "$out" && exit 0
kernel_tree_configure build-linux-debug "$build" "${fragments[@]}"

cd "$build"
echo "build-linux-debug: building bzImage and scripts_gdb with $(nproc) jobs" >&2
start=$(date +%s)
"${nice[@]}" make -s -j"$(nproc)" bzImage scripts_gdb >/dev/null
rm -rf "$out"
mkdir -p "$out/scripts"
cp arch/x86/boot/bzImage vmlinux System.map "$out/"
# vmlinux-gdb.py (a link into scripts/gdb/) finds its modules in scripts/gdb next to itself.
cp -L vmlinux-gdb.py "$out/"
cp -rL scripts/gdb "$out/scripts/gdb"
echo "build-linux-debug: built in $(( $(date +%s) - start )) s" >&2
echo "$stamp" > "$out/stamp"
kernel_cache_store linux-debug "$stamp" "$out"
