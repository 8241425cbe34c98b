#!/bin/busybox sh
# pyvmm command mode's /init (busybox sh; needs nothing from the guest but the kernel).
# 1. load the modules we carry (/modules/order), 2. find our virtio-console ports by
# name, 3. mount the host's / over virtio-fs (read-only with a tmpfs overlay, or
# read-write with --rw) and the --share directories at their host paths, 4. run the
# command of /job.sh as the calling user in the calling directory with its stdin,
# stdout and stderr on the ports, 5. write "status N" on the status port and stop
# the machine.  Anything going wrong before the command runs is one line:
# "error MESSAGE" on the status port and "pyvmm-init: error: MESSAGE" on the console.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot /lower /rw
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

stop() {
    sync
    # debug-exit (port 0xf4) stops pyvmm at once; poweroff if /dev/port is missing.
    printf '\000' | dd of=/dev/port bs=1 seek=244 2>/dev/null
    poweroff -f
}
fail() {
    echo "pyvmm-init: error: $*" >/dev/console
    [ -n "$status_open" ] && echo "error $*" >&3
    stop
}

if [ -f /modules/order ]; then
    while read -r module; do
        insmod "/modules/$module" 2>/dev/console || fail "cannot load the kernel module $module"
    done </modules/order
fi

port() {
    for dir in /sys/class/virtio-ports/*; do
        [ "$(cat "$dir/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${dir##*/}"; return 0; }
    done
    return 1
}
waited=0
until port pyvmm.status >/dev/null && port pyvmm.stderr >/dev/null; do
    [ -d /sys/bus/virtio/drivers/virtio_console ] || [ $waited -lt 100 ] ||
        fail "the kernel has no virtio console (CONFIG_VIRTIO_CONSOLE) and no module for it was found (give --modules DIR)"
    [ $waited -lt 600 ] || fail "the virtio console ports did not appear"
    waited=$((waited + 1))
    usleep 50000
done
exec 3>"$(port pyvmm.status)"
status_open=1

grep -qw virtiofs /proc/filesystems ||
    fail "the kernel has no virtio-fs (CONFIG_VIRTIO_FS) and no module for it was found (give --modules DIR)"

. /job.sh

if [ "$PYVMM_RW" = 1 ]; then
    mount -t virtiofs pyvmm.root /newroot || fail "cannot mount the host's / over virtio-fs"
else
    mount -t virtiofs -o ro pyvmm.root /lower || fail "cannot mount the host's / over virtio-fs"
    mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work || fail "cannot mount a tmpfs"
    mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
        fail "cannot mount an overlay on the host's / (CONFIG_OVERLAY_FS?)"
fi
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "cannot mount a tmpfs on /run"
mkdir -p /newroot/run/pyvmm && cp /bin/busybox /newroot/run/pyvmm/busybox ||
    fail "cannot copy busybox into the guest's /run"
pyvmm_mount_shares
[ -d "/newroot$PYVMM_CWD" ] || fail "the current directory $PYVMM_CWD is not there in the guest"

stdin=$(port pyvmm.stdin) && stdout=$(port pyvmm.stdout) && stderr=$(port pyvmm.stderr) ||
    fail "the stdin/stdout/stderr ports are missing"
pyvmm_run <"$stdin" >"$stdout" 2>"$stderr"
echo "status $?" >&3
stop
