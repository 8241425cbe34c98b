#!/bin/busybox sh
# pyvmm command mode: configure the guest's NICs (--net) before the command runs.
#
#   network.sh ROOT    as root, once virtio_net is loaded; ROOT is the command's
#                      root (/newroot in /init), mounted, with its /run a tmpfs
#
# Brings lo up, then each virtio-net interface: link up; unless its MAC is in
# $PYVMM_NET_LINK_ONLY (a --net tap NIC, whose addresses CMD sets), a DHCP lease from passt
# (busybox udhcpc, with this script as its handler): address, default route, MTU;
# the DNS servers of the lease go to ROOT/etc/resolv.conf, over the host's file
# (a bind mount from ROOT/run/pyvmm: nothing is written to the host, --rw or not).
# A machine without a NIC costs nothing.  A NIC without a lease: one line on
# stderr and status 1.  Needs /bin/busybox (ip, udhcpc), nothing else of the guest's.
# busybox's own applets, by name: on a host root (a test's CMD) they are not on PATH.
bb=/bin/busybox

case "$1" in
deconfig)
    $bb ip addr flush dev "$interface"
    $bb ip link set "$interface" up
    exit 0 ;;
bound|renew)
    $bb ip addr flush dev "$interface"
    $bb ip addr add "$ip/${mask:-24}" dev "$interface" || exit 1
    [ -n "$mtu" ] && $bb ip link set "$interface" mtu "$mtu"
    for gateway in $router; do
        $bb ip route replace default via "$gateway" dev "$interface" && break
    done
    for server in $dns; do echo "nameserver $server"; done >>"$PYVMM_RESOLV"
    [ -n "$domain" ] && echo "search $domain" >>"$PYVMM_RESOLV"
    exit 0 ;;
leasefail|nak)
    exit 0 ;;
esac

root=${1:?usage: network.sh ROOT}
$bb ip link set lo up
# virtio-net devices (virtio device id 1) and the interfaces their driver made.
wanted=$(cat /sys/bus/virtio/devices/*/device 2>/dev/null | grep -c '^0x0001$')
[ "$wanted" -gt 0 ] || exit 0
interfaces() {
    for path in /sys/class/net/*; do
        [ "$(cat "$path/device/device" 2>/dev/null)" = 0x0001 ] && echo "${path##*/}"
    done
}
waited=0
while [ "$(interfaces | grep -c .)" -lt "$wanted" ]; do
    if [ $waited -ge 100 ]; then
        echo "pyvmm: the guest has $wanted virtio-net devices but no driver for them" \
             "(CONFIG_VIRTIO_NET or the virtio_net module)" >&2
        exit 1
    fi
    waited=$((waited + 1))
    $bb usleep 50000
done

$bb mkdir -p "$root/run/pyvmm" || exit 1
export PYVMM_RESOLV="$root/run/pyvmm/resolv.conf"
: >"$PYVMM_RESOLV"
for interface in $(interfaces); do
    $bb ip link set "$interface" up
    case " $PYVMM_NET_LINK_ONLY " in
    *" $(cat "/sys/class/net/$interface/address") "*) continue ;;
    esac
    $bb udhcpc -i "$interface" -f -q -n -t 5 -T 1 -s "$0" >/dev/null 2>&1 || {
        echo "pyvmm: no DHCP lease for $interface from the network back end" >&2
        exit 1
    }
done

# DNS: over the host's resolv.conf, or where its symlink points inside /run.
etc="$root/etc/resolv.conf"
[ -s "$PYVMM_RESOLV" ] || exit 0
if [ -L "$etc" ]; then
    target=$($bb readlink "$etc")
    case "$target" in
    /run/*|../run/*) target="/run/${target#*/run/}"
                     $bb mkdir -p "$root${target%/*}" && $bb cp "$PYVMM_RESOLV" "$root$target" ;;
    *) echo "pyvmm: $etc links outside /run; left as it is" >&2 ;;
    esac
elif [ -f "$etc" ]; then
    $bb mount --bind "$PYVMM_RESOLV" "$etc"
fi
exit 0
