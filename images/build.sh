#!/usr/bin/env bash
# Build the guest images the demo, the tests and the benchmarks boot, into
# images/out/ (git-ignored, cached: each step rebuilds only what changed).
#
#   bash images/build.sh            tiny guests + minimal Linux + initramfs
#   bash images/build.sh tiny       only the tiny test guests (seconds)
#   bash images/build.sh linux initramfs cloud
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tiny linux initramfs)
declare -A about=([tiny]="the tiny test guests" [initramfs]="the busybox initramfs"
                 [linux]="pyvmm's minimal kernel (compiled when its config changed: ~5 min on 2 cores)"
                 [cloud]="Debian's cloud kernel and its initramfs")
for target in "${targets[@]}"; do
    if [ -z "${about[$target]:-}" ]; then
        echo "images/build.sh: unknown target '$target' (tiny, linux, initramfs, cloud)" >&2
        exit 2
    fi
    echo "build: $target: ${about[$target]} ..." >&2
    started=$(date +%s%N)
    case "$target" in
        tiny)      bash "$here/build-tiny.sh" ;;
        linux)     bash "$here/build-linux.sh" ;;
        initramfs) bash "$here/build-initramfs.sh" ;;
        cloud)     bash "$here/build-cloud.sh" ;;
    esac
    tenths=$(( ($(date +%s%N) - started) / 100000000 ))
    echo "build: $target: done in $((tenths / 10)).$((tenths % 10)) s" >&2
done
