#!/usr/bin/env bash
# The debug variant of pyvmm's minimal kernel (`bash images/build.sh linux-debug`,
# not built by default): images/linux/pyvmm.config + images/linux/debug.config
# (DWARF debug info, the kernel's gdb scripts) in its own build tree, so the
# normal image and its cache stay untouched.  Output: images/out/linux-debug/
# {bzImage,vmlinux,System.map,vmlinux-gdb.py,scripts/gdb/}, what
# tests/linux/test_gdb.py's lx-dmesg and lx-ps need.  Cached like build-linux.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/out/linux-debug"
build="$here/out/linux-debug-build"
tarball=/usr/src/linux-source-6.1.tar.xz
fragments=("$here/linux/pyvmm.config" "$here/linux/debug.config")
# A debug build is long and the hosts that build it are small and shared.
nice=(nice -n 10)

[ -f "$tarball" ] || bash "$here/build-linux.sh"   # installs linux-source-6.1 and the tools
stamp="$(cat "${fragments[@]}" "$0" | sha256sum | cut -c1-16)-$(stat -c %s "$tarball")"
if [ -f "$out/vmlinux-gdb.py" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
if [ ! -f "$build/Makefile" ]; then
    rm -rf "$build"
    mkdir -p "$build"
    echo "build-linux-debug: unpacking $tarball" >&2
    tar -xJf "$tarball" -C "$build" --strip-components=1
fi

cd "$build"
cat "${fragments[@]}" > pyvmm-fragment.config
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config pyvmm-fragment.config >/dev/null
make -s olddefconfig >/dev/null
missing=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    name="${line%%=*}"; want="${line#*=}"
    if [ "$want" = n ]; then
        grep -q "^$name=" .config && { echo "build-linux-debug: $name is set, wanted off" >&2; missing=1; }
    else
        grep -qx "$line" .config || { echo "build-linux-debug: $name is not $want" >&2; missing=1; }
    fi
done < pyvmm-fragment.config
[ "$missing" -eq 0 ] || exit 1

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
