#!/usr/bin/env bash
# Builds the rig's QEMU: Debian's own qemu source package (the version the rig's
# system QEMU is built from) with svm-breakpoints.patch, which makes TCG's nested
# SVM deliver a nested guest's breakpoint traps (int3, DR0-DR3) to the KVM inside
# the rig as hardware does.  Only qemu-system-x86_64, TCG only, with what
# scripts/rig.py uses (virtio-9p, serial, monitor socket, q35's default devices).
#
#   bash scripts/rig-qemu/build.sh [--print-path]
#
# Installs into /var/tmp/pyvmm-rig/qemu-KEY/bin/qemu-system-x86_64, KEY a hash
# of this script and the patch: rebuilt only when they change; scripts/rig.py
# computes the same path (rig_qemu_build()).  Firmware comes from Debian's
# packages (/usr/share/qemu, as the system QEMU finds it).  The source comes
# through apt-get with a private deb-src list: the host's apt configuration is
# not touched.  The build dependencies are installed with apt-get if missing
# (as root; else it says what to install).  The compile runs under nice.
# --print-path: print the binary's path if built (exit 1 if not), build nothing;
# --print-key: print KEY.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PROGRESS_NAME=rig-qemu
. "$here/../progress.sh"

VERSION=1:7.2+dfsg-7+deb12u18
PATCH="$here/svm-breakpoints.patch"
CACHE=/var/tmp/pyvmm-rig
KEY=$(cat "$here/build.sh" "$PATCH" | sha256sum | cut -c1-16)
DEST="$CACHE/qemu-$KEY"
BINARY="$DEST/bin/qemu-system-x86_64"
DEPS="dpkg-dev meson ninja-build pkg-config gcc libglib2.0-dev libpixman-1-dev
      libcap-ng-dev libfdt-dev libslirp-dev xz-utils patch"

if [ "${1:-}" = "--print-key" ]; then
    echo "$KEY"
    exit 0
fi
if [ "${1:-}" = "--print-path" ]; then
    [ -x "$BINARY" ] && echo "$BINARY" && exit 0
    exit 1
fi
if [ -x "$BINARY" ]; then
    echo "rig-qemu: already built: $BINARY" >&2
    echo "$BINARY"
    exit 0
fi

missing=$(dpkg-query -W -f='${Package} ${Status}\n' $DEPS 2>/dev/null \
          | awk '$NF != "installed" {print $1}'; \
          for p in $DEPS; do dpkg-query -W "$p" >/dev/null 2>&1 || echo "$p"; done)
missing=$(echo "$missing" | sort -u | xargs)
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "rig-qemu: missing build dependencies: apt-get install $missing" >&2
        exit 2
    fi
    step "installing the build dependencies ($missing)" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        $missing >/dev/null
fi

work=$(mktemp -d /var/tmp/pyvmm-rig-qemu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
# A private apt state with deb-src lines for bookworm, its updates and security
# (where Debian's newest 7.2 is): the host's sources and lists stay as they are.
cat > sources.list <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
mkdir -p lists/partial
apt_private=(-q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=-
             -o Dir::State::Lists="$work/lists" -o Dir::Cache::pkgcache=
             -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
step "fetching the source lists (deb-src bookworm)" apt-get "${apt_private[@]}" update >/dev/null
step "fetching Debian's qemu $VERSION source" \
    apt-get "${apt_private[@]}" source "qemu=$VERSION" >/dev/null
src=$(find . -maxdepth 1 -type d -name 'qemu-*' | head -1)
[ -n "$src" ] || { echo "rig-qemu: no source tree unpacked" >&2; exit 1; }
step "applying $(basename "$PATCH")" patch -d "$src" -p1 -s -i "$PATCH"
mkdir "$src/build"
step "configuring (x86_64-softmmu, TCG, virtfs, slirp)" \
    bash -c 'cd "$1/build" && ../configure --target-list=x86_64-softmmu \
        --without-default-features --enable-virtfs --enable-attr --enable-cap-ng \
        --enable-slirp --enable-fdt=system --disable-debug-info --disable-install-blobs \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
        --with-git-submodules=ignore --with-pkgversion="Debian $2 + pyvmm rig-qemu $3" \
        > configure.log 2>&1 || { tail -20 configure.log; exit 1; }' _ "$src" "$VERSION" "$KEY"
step "compiling qemu-system-x86_64 ($(nproc) jobs, nice 10)" \
    bash -c 'nice -n 10 ninja -C "$1/build" -j "$(nproc)" qemu-system-x86_64 > "$1/build/ninja.log" 2>&1 \
        || { grep -B2 -A10 -m3 "error" "$1/build/ninja.log"; tail -5 "$1/build/ninja.log"; exit 1; }' \
    _ "$src"
[ -d "$CACHE" ] || mkdir -p -m 0700 "$CACHE"
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/bin"
install -m 0755 "$src/build/qemu-system-x86_64" "$DEST.tmp/bin/"
cp "$PATCH" "$DEST.tmp/"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
"$BINARY" --version | head -1 >&2
echo "rig-qemu: installed $BINARY" >&2
echo "$BINARY"
