#!/bin/busybox sh
# pyvmm command mode's /init (busybox sh; needs nothing from the guest but the kernel).
# 1. load the modules we carry (/modules/order), 2. find our virtio-console ports by
# name, 3. mount the host's / over virtio-fs (read-only with a tmpfs overlay, or
# read-write with --rw) and the --share directories at their host paths, 4. give it
# what a normal Linux has (ptys, /dev/shm, the /dev/fd links, the kernel's own
# filesystems, loopback, the host's name, the NICs of --net), 5. with a vsock, start the exec
# agent (agent.py: `pyvmm exec` runs more commands through it), 6. run the command of /job.sh as the
# calling user in the calling directory, in a session of its own, its stdin, stdout
# and stderr pipes that three relays copy to and from the ports (streams.sh), 7. once
# it and what it left running have ended and its output is out, write "status N" on
# the status port and stop the machine.  Anything going wrong before the command runs is one
# line: "error MESSAGE" on the status port and "pyvmm-init: error: MESSAGE" on the
# console.
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
mkdir -p /newroot/run/pyvmm && cp /bin/busybox /agent.py /newroot/run/pyvmm/ ||
    fail "cannot copy busybox into the guest's /run"

# What a normal Linux has besides, where this kernel has it (quietly not, where not).
has() { grep -q "[[:space:]]$1\$" /proc/filesystems; }
kernel_fs() {  # TYPE DIR: sysfs makes DIR when the kernel has TYPE
    has "$1" && [ -d "/newroot$2" ] && mount -t "$1" -o nosuid,nodev,noexec "$1" "/newroot$2"
}
mkdir -p /newroot/dev/pts /newroot/dev/shm
if has devpts; then
    tty_gid=$(sed -n 's/^tty:[^:]*:\([0-9][0-9]*\):.*/\1/p' /newroot/etc/group 2>/dev/null)
    mount -t devpts -o "nosuid,noexec,mode=0620,ptmxmode=0666${tty_gid:+,gid=$tty_gid}" \
        devpts /newroot/dev/pts || fail "cannot mount devpts on /dev/pts"
fi
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /newroot/dev/shm ||
    fail "cannot mount a tmpfs on /dev/shm"
has mqueue && mkdir -p /newroot/dev/mqueue &&
    mount -t mqueue -o nosuid,nodev,noexec mqueue /newroot/dev/mqueue
ln -sfn /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
kernel_fs cgroup2 /sys/fs/cgroup
kernel_fs debugfs /sys/kernel/debug
kernel_fs tracefs /sys/kernel/tracing
kernel_fs securityfs /sys/kernel/security
kernel_fs bpf /sys/fs/bpf
kernel_fs configfs /sys/kernel/config
if [ -e /sys/class/net/lo ]; then
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || fail "cannot bring up lo"
fi
[ -z "$PYVMM_HOSTNAME" ] || hostname -- "$PYVMM_HOSTNAME" ||
    fail "cannot set the hostname $PYVMM_HOSTNAME"
# The NICs (--net): a DHCP lease from passt each, the route, DNS (network.sh).
network_error=$(/network.sh /newroot 2>&1) || fail "${network_error#pyvmm: }"

pyvmm_mount_shares
[ -d "/newroot$PYVMM_CWD" ] || fail "the current directory $PYVMM_CWD is not there in the guest"

# The exec agent (a guest with a vsock): its complaints go to the kernel's console.
pyvmm_agent </dev/null >/dev/console 2>&1 &

stdin=$(port pyvmm.stdin) && stdout=$(port pyvmm.stdout) && stderr=$(port pyvmm.stderr) ||
    fail "the stdin/stdout/stderr ports are missing"
. /streams.sh
run_relayed "$stdin" "$stdout" "$stderr"
echo "status $?" >&3
stop
