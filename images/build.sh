#!/usr/bin/env bash
# Build the guest images the demo, the tests and the benchmarks boot, into
# images/out/ (git-ignored, cached: each step rebuilds only what changed).
#
#   bash images/build.sh            tiny guests + minimal Linux + initramfs
#   bash images/build.sh tiny       only the tiny test guests (seconds)
#   bash images/build.sh linux initramfs cloud
#   bash images/build.sh linux-debug  the minimal kernel with debug info and its gdb scripts
#   bash images/build.sh systemd  a Debian system on a disk image (benchmarks only)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/progress.sh
. "$here/../scripts/progress.sh"
PROGRESS_NAME=build
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tiny linux initramfs)
declare -A about=([tiny]="the tiny test guests" [initramfs]="the busybox initramfs"
                 [linux]="pyvmm's minimal kernel (compiled when its config changed: ~5 min on 2 cores)"
                 [linux-debug]="the minimal kernel with DWARF and scripts/gdb (9 min of CPU, niced)"
                 [cloud]="Debian's cloud kernel and its initramfs"
                 [systemd]="a Debian bookworm system with systemd on a disk image (~3 min)")
for target in "${targets[@]}"; do
    if [ -z "${about[$target]:-}" ]; then
        echo "images/build.sh: unknown target '$target' (tiny, linux, linux-debug, initramfs, cloud, systemd)" >&2
        exit 2
    fi
    step "$target: ${about[$target]}" bash "$here/build-$target.sh"
done
