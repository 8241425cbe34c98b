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
for target in "${targets[@]}"; do
    case "$target" in
        tiny)      bash "$here/build-tiny.sh" ;;
        linux)     bash "$here/build-linux.sh" ;;
        initramfs) bash "$here/build-initramfs.sh" ;;
        cloud)     bash "$here/build-cloud.sh" ;;
        *) echo "images/build.sh: unknown target '$target' (tiny, linux, initramfs, cloud)" >&2; exit 2 ;;
    esac
done
