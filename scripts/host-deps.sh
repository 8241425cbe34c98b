#!/usr/bin/env bash
# Install the Debian packages pyvmm's builds and tests use, if any is missing.
# Needs root (or sudo).  QEMU and Debian's kernel are for the hardware-KVM rig
# (scripts/rig.py) and the side-by-side checks and benchmarks.
set -euo pipefail
# qemu-system-common: /usr/lib/qemu/virtiofsd, for --share and command mode (bookworm has
# no standalone virtiofsd package; where there is one on PATH, pyvmm prefers it).
packages=(gcc binutils make python3-venv busybox-static cpio xz-utils bc flex bison
          libelf-dev libssl-dev linux-source-6.1 acpica-tools gdb e2fsprogs
          qemu-system-common
          qemu-system-x86 linux-image-amd64)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "host-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
