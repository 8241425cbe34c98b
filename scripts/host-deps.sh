#!/usr/bin/env bash
# Install the Debian packages pyvmm uses, if any is missing.  Needs root (or sudo).
#
#   bash scripts/host-deps.sh        everything: building pyvmm, the demo, the tests
#   bash scripts/host-deps.sh run    only what installing pyvmm and its demo need
set -euo pipefail
# Building and running pyvmm: a C compiler, the C library's and Python's headers
# (cffi compiles the KVM binding), venv (Debian's Python installs nothing outside
# one), busybox for the initramfs pyvmm builds, Debian's kernel for the demo,
# qemu-system-common for /usr/lib/qemu/virtiofsd (--share, command mode; bookworm
# has no standalone virtiofsd package, and where there is one on PATH, pyvmm
# prefers it), QEMU for the rig (scripts/rig.py: Linux where KVM is not hardware),
# and passt for --net user (user-mode networking without root: pyvmm starts one
# per NIC on a socketpair, QEMU's stream protocol, and passt does DHCP, DNS and
# TCP/UDP through host sockets, so pyvmm needs no TCP/IP stack of its own).
run=(gcc libc6-dev python3-venv python3-dev busybox-static linux-image-amd64
     qemu-system-common qemu-system-x86 passt)
# The tests and benchmarks: the minimal kernel's and the tiny guests' builds, gdb, mkfs,
# qemu-img (qcow2 images and their allocation map in the disk tests), fio (bench/virtio_io.py),
# iperf3 (bench/net_throughput.py).
tests=(binutils make cpio xz-utils bc flex bison libelf-dev libssl-dev linux-source-6.1
       acpica-tools gdb e2fsprogs qemu-utils fio iperf3)
case "${1:-all}" in
    run) packages=("${run[@]}") ;;
    all) packages=("${run[@]}" "${tests[@]}") ;;
    *) echo "host-deps.sh: unknown set '$1' (run, all)" >&2; exit 2 ;;
esac
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
