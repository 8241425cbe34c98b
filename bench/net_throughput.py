"""Network throughput and latency: pyvmm's virtio-net beside QEMU's, same kernel, same tools.

    python3 scripts/rig.py -- python3 bench/net_throughput.py [KERNEL] [--seconds 5]
        [--pings 2000] [--modes pyvmm-user,qemu-slirp,...] [--rounds N] [--json PATH]
        [--baseline DIR]

As root on hardware KVM (the rig): Debian's kernel, one vCPU, 512 MiB, the guest
running the host's own iperf3 (Debian's ``iperf3``) and python3.  Per mode:
iperf3 TCP guest -> host and host -> guest (``-R``) for ``--seconds`` each, and
a 1-byte TCP ping-pong (``--pings`` round trips, TCP_NODELAY, Python both ends)
against an echo server on the host.  The modes, in pairs:

- ``pyvmm-user``: ``pyvmm run --net user`` (passt on a socketpair; frames moved
  by the NIC's C thread), ``qemu-slirp``: QEMU ``-netdev user`` (libslirp), ``qemu-passt``: QEMU
  ``-netdev stream`` to a passt of its own (passt's socket path);
- ``pyvmm-tap``: ``pyvmm run --net tap=NAME,vhost=on`` (the kernel's vhost-net),
  ``qemu-tap``: QEMU ``-netdev tap,ifname=NAME,vhost=on``; ``pyvmm-tap-novhost``:
  ``vhost=off``, pyvmm serving the tap itself.

pyvmm runs the workload in command mode (the host's / over virtio-fs); QEMU
(``-M microvm,acpi=on``, virtio-mmio like pyvmm) boots the same kernel with an
initramfs made here (busybox, the kernel's modules, pyvmm's own network.sh for
DHCP) that mounts the host's / over 9p read-only and runs the same workload.
In the user modes the guest reaches the host's loopback through its gateway
address; in the tap modes the guest is 10.0.3.2 and the host 10.0.3.1 on a tap
made here.  In the rig compare only the ratios of one run (the rig is TCG).

Over the timed round trips each mode also reports what one round trip cost:
the guest's interrupts, frames and context switches (``guest_per_round_trip``,
from its /proc) and the host's (``host_per_round_trip``: KVM's debugfs
counters summed over VMs, and the context switches, run time and wait to run
of pyvmm, QEMU, passt, the echo server, kworkers and ksoftirqd, by process and
busiest thread); pyvmm's ``--stats`` adds its NICs' counts (``devices``).
The round trip is timed twice: by the guest (``rtt_us``, the guest's clock,
which its VMM keeps) and by the echo server over the same round trips
(``host_rtt_us``, the host's clock, the same for every mode).
``--baseline CHECKOUT`` runs each pyvmm mode again from another checkout (its
cffi modules built), interleaved, as ``MODE@NAME``.  ``--rounds N`` runs the whole
list N times over, every other round in reverse (A B C, C B A, A B C, ...), so
that the rig's drift and noise fall on every mode alike, and reports each round
and the median of the rounds per mode, with each mode's round trip as a ratio
to the first mode's of the same round (and the median of those ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyvmm.command.initramfs.build import _busybox  # noqa: E402
from pyvmm.command.initramfs.cpio import CpioWriter  # noqa: E402
from pyvmm.command.initramfs.modules import find_modules, read_module  # noqa: E402
from pyvmm.vcpu.stats import read_json_stats  # noqa: E402

MODES = ("pyvmm-user", "qemu-slirp", "qemu-passt", "pyvmm-tap", "qemu-tap",
         "pyvmm-tap-novhost")
TAP = "pyvmmbench0"
TAP_HOST, TAP_GUEST = "10.0.3.1", "10.0.3.2"
IPERF_PORT, ECHO_PORT = 5201, 5299
QEMU_MODULES = ["virtio_mmio", "virtio_net", "9pnet_virtio", "9p"]

#: What the guest runs: python3 WORKLOAD SERVER SECONDS PINGS -> one "BENCH {...}" line.
WORKLOAD = r"""
import json, os, socket, subprocess, sys, time
server, seconds, pings = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = {}
for name, extra in (("up", []), ("down", ["-R"])) if seconds != "0" else ():
    out = subprocess.run(["iperf3", "-c", server, "-p", "5201", "-t", seconds, "-J"] + extra,
                         capture_output=True, text=True)
    try:
        report = json.loads(out.stdout)
        result[name] = report["end"]["sum_received"]["bits_per_second"]
        result[name + "_retransmits"] = report["end"]["sum_sent"].get("retransmits")
        result[name + "_each_second"] = [round(i["sum"]["bits_per_second"] / 1e6)
                                         for i in report["intervals"]]
    except (ValueError, KeyError):
        result[name] = None
        result[name + "_error"] = (out.stdout + out.stderr)[-300:]
def guest_counts():
    counts, proc = {}, "/proc"
    if not os.path.exists("/proc/interrupts"):  # QEMU's guest: the chroot's /proc is 9p's
        proc = "/tmp/guest-proc"
        os.makedirs(proc, exist_ok=True)
        if not os.path.exists(proc + "/interrupts"):
            subprocess.run(["mount", "-t", "proc", "proc", proc])
    if not os.path.exists(proc + "/interrupts"):
        return counts
    for line in open(proc + "/interrupts").read().splitlines()[1:]:
        fields = line.split()
        if "virtio" in line or fields[0] in ("LOC:", "RES:", "CAL:"):
            name = fields[0].rstrip(":") + ("/" + fields[-1] if "virtio" in line else "")
            counts["irq " + name] = int(fields[1])
    for line in open(proc + "/net/dev").read().splitlines()[2:]:
        name, values = line.split(":", 1)
        if name.strip() == "eth0":
            values = values.split()
            counts["eth0 rx packets"], counts["eth0 tx packets"] = int(values[1]), int(values[9])
    for line in open(proc + "/stat"):
        if line.startswith("ctxt "):
            counts["context switches"] = int(line.split()[1])
    return counts
sock = socket.create_connection((server, 5299))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(20):
    sock.sendall(b"x"); sock.recv(1)
before = guest_counts()
start = time.perf_counter()
for _ in range(pings):
    sock.sendall(b"x"); sock.recv(1)
result["rtt_us"] = (time.perf_counter() - start) / pings * 1e6
after = guest_counts()
result["guest_per_round_trip"] = {name: round((after[name] - before[name]) / pings, 2)
                                  for name in after if after[name] != before.get(name, 0)}
print("BENCH " + json.dumps(result), flush=True)
"""

#: The QEMU guest's /init: modules, the host's / over 9p, the network, the workload.
QEMU_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
while read -r module; do insmod "/modules/$module"; done </modules/order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /newroot || echo "BENCH-ERROR no 9p root"
mount -t proc proc /newroot/proc; mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs tmpfs /newroot/tmp; mount -t tmpfs tmpfs /newroot/run
ip link set lo up
. /job.sh
if [ "$NET" = dhcp ]; then
    /network.sh /newroot || echo "BENCH-ERROR no lease"
    SERVER=$(ip route | awk '/^default/ {print $3; exit}')
else
    ip link set eth0 up; ip addr add TAP_GUEST/24 dev eth0
    SERVER=TAP_HOST
fi
chroot /newroot /usr/bin/python3 -c "$WORKLOAD" "$SERVER" "$SECONDS" "$PINGS" </dev/console >/dev/console 2>&1
printf '\000' | dd of=/dev/port bs=1 seek=244 2>/dev/null
poweroff -f
""".replace("TAP_GUEST", TAP_GUEST).replace("TAP_HOST", TAP_HOST)


def sh(*args: str, check: bool = True) -> None:
    subprocess.run(args, check=check, capture_output=True)


def prepare_host() -> None:
    """The rig has no network: lo up, a dummy routable interface for passt, the tap."""
    for module in ("tun", "vhost_net", "dummy"):
        sh("modprobe", module, check=False)
    sh("ip", "link", "set", "lo", "up")
    if not os.path.isdir("/sys/kernel/debug/kvm"):
        sh("mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug", check=False)
    with open("/proc/net/route") as routes:
        has_default = any(line.split()[1] == "00000000" for line in routes.readlines()[1:])
    if not has_default:
        sh("ip", "link", "add", "dummy0", "type", "dummy", check=False)
        sh("ip", "addr", "add", "10.0.2.2/24", "dev", "dummy0", check=False)
        sh("ip", "link", "set", "dummy0", "up")
        sh("ip", "route", "add", "default", "via", "10.0.2.1")
    sh("ip", "link", "del", TAP, check=False)
    sh("ip", "tuntap", "add", TAP, "mode", "tap")
    sh("ip", "addr", "add", f"{TAP_HOST}/24", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")


#: The processes whose threads' context switches and run time the ping-pong counts (by comm;
#: "python" is a virtualenv's interpreter, "python3" the system's).
WATCHED = ("passt", "qemu-system-x86", "python", "vhost-", "ksoftirqd", "kworker")


def host_counts() -> dict[str, int]:
    """What the host did so far: KVM's counters summed over its VMs (debugfs), the
    host's context switches and interrupts, and each watched thread's context switches,
    time run and time waited to run (``schedstat``, ns)."""
    counts: dict[str, int] = {}
    kvm = Path("/sys/kernel/debug/kvm")
    if kvm.is_dir():
        for entry in kvm.iterdir():
            if entry.is_file():
                try:
                    counts["kvm " + entry.name] = int(entry.read_text())
                except (OSError, ValueError):
                    pass
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(("ctxt ", "intr ")):
            counts["host " + line.split()[0]] = int(line.split()[1])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if not comm.startswith(WATCHED):
                continue
            who = "bench" if int(proc.name) == os.getpid() else comm.split("/")[0]
            if comm.startswith("python") and who != "bench":
                who = "pyvmm" if b"pyvmm" in (proc / "cmdline").read_bytes() else comm
            for task in (proc / "task").iterdir():
                switches = 0
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
                thread = f"{who} {proc.name}/{task.name}"
                counts[f"switches {thread}"] = switches
                ran, waited = (task / "schedstat").read_text().split()[:2]
                counts[f"ran_us {thread}"] = int(ran) // 1000
                counts[f"waited_us {thread}"] = int(waited) // 1000
        except OSError:
            continue
    return counts


def per_round_trip(before: dict[str, int], after: dict[str, int], pings: int) -> dict:
    """The counters' growth per round trip: KVM's and the host's, and each process's
    context switches, run time and wait to run, and its busiest threads'."""
    result: dict[str, float] = {}
    processes: dict[str, int] = {}
    for name, value in after.items():
        delta = value - before.get(name, value)
        if not delta:
            continue
        if name.startswith(("switches ", "ran_us ", "waited_us ")):
            metric, who, thread = name.split(" ")
            processes[f"{metric} {who}"] = processes.get(f"{metric} {who}", 0) + delta
            if metric != "switches" or delta >= pings / 20:
                if metric == "switches" or delta >= pings * 20:
                    result[f"{metric} {who} thread {thread}"] = round(delta / pings, 2)
        else:
            result[name] = round(delta / pings, 2)
    for name, delta in processes.items():
        result[name] = round(delta / pings, 2)
    return dict(sorted(result.items()))


def echo_server(pings: int, measured: list[dict]) -> socket.socket:
    """Echoes each byte back, one connection at a time (the ping-pong's far end); over
    the guest's timed ``pings`` (after its 20 warm-up ones) it counts what the host did
    per round trip (``host_counts``) into ``measured``."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", ECHO_PORT))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            received, before, started = 0, None, 0.0
            with conn:
                while data := conn.recv(64):
                    received += len(data)
                    if received == 20:
                        before = host_counts()
                        started = time.monotonic()
                    elif received == 20 + pings and before is not None:
                        wall = time.monotonic() - started
                        counts = per_round_trip(before, host_counts(), pings)
                        # The round trip on the host's clock, the same for every mode
                        # (the guest's clock is the VMM's to keep, and can run slow).
                        counts["host_rtt_us"] = round(wall / pings * 1e6, 1)
                        measured.append(counts)
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def qemu_initrd(kernel: str, directory: str, net: str, seconds: int, pings: int) -> str:
    release = subprocess.run(["file", "-bL", kernel], capture_output=True, text=True).stdout
    release = release.split("version ", 1)[1].split()[0] if "version " in release else \
        os.path.basename(kernel).removeprefix("vmlinuz-")
    modules = find_modules(f"/lib/modules/{release}", QEMU_MODULES)
    writer = CpioWriter()
    for name in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        writer.directory(name)
    writer.char_device("dev/console", 5, 1)
    writer.file("init", QEMU_INIT.encode(), 0o755)
    network = (REPO / "pyvmm/command/initramfs/network.sh").read_bytes()
    writer.file("network.sh", network, 0o755)
    with open(_busybox(), "rb") as stream:
        writer.file("bin/busybox", stream.read(), 0o755)
    for name, host in modules.files:
        writer.file(f"modules/{name}", read_module(host))
    writer.file("modules/order", "".join(f"{name}\n" for name, _ in modules.files).encode())
    job = (f"NET={net}\nSECONDS={seconds}\nPINGS={pings}\n"
           f"WORKLOAD='{WORKLOAD.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'\n"
           "export PYVMM_NET_LINK_ONLY=\n")
    writer.file("job.sh", job.encode(), 0o644)
    path = os.path.join(directory, f"initrd-{net}.cpio")
    Path(path).write_bytes(writer.finish())
    return path


def run_mode(mode: str, kernel: str, seconds: int, pings: int, work: str,
             accel: str = "kvm", checkout: Path = REPO) -> dict:
    """One guest of ``mode``: the workload's figures, or {"error": ...}; pyvmm's modes
    run the pyvmm of ``checkout``."""
    timeout = 900
    passt = None
    if mode.startswith("pyvmm"):
        net = {"pyvmm-user": "user", "pyvmm-tap": f"tap={TAP},vhost=on",
               "pyvmm-tap-novhost": f"tap={TAP},vhost=off"}[mode]
        if net == "user":
            script = ('s=$(/run/pyvmm/busybox ip route | /run/pyvmm/busybox awk '
                      "'/^default/ {print $3; exit}'); exec python3 -c \"$0\" $s "
                      f"{seconds} {pings}")
        else:
            script = (f"/run/pyvmm/busybox ip addr add {TAP_GUEST}/24 dev eth0 && "
                      f"exec python3 -c \"$0\" {TAP_HOST} {seconds} {pings}")
        command = [sys.executable, "-m", "pyvmm", "run", "-k", kernel, "-m", "512M",
                   "-t", str(timeout), "--stats=json", "--net", net, "--", "sh", "-c", script,
                   WORKLOAD]
    else:
        net = "dhcp" if mode in ("qemu-slirp", "qemu-passt") else "static"
        initrd = qemu_initrd(kernel, work, net, seconds, pings)
        if mode == "qemu-slirp":
            netdev = "user,id=n0"
        elif mode == "qemu-passt":
            # passt started as root runs as nobody: its socket's directory must let it in.
            os.chmod(work, 0o711)
            directory = os.path.join(work, "passt")
            os.makedirs(directory, exist_ok=True)
            os.chmod(directory, 0o777)
            path = os.path.join(directory, "passt.socket")
            passt = subprocess.Popen(["passt", "--foreground", "--quiet", "--socket", path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            netdev = f"stream,id=n0,server=off,addr.type=unix,addr.path={path}"
        else:
            netdev = f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=on"
        command = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=on",
                   "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
                   "-m", "512M", "-smp", "1", "-nodefaults",
                   "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                   "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
                   "-kernel", kernel, "-initrd", initrd,
                   "-append", "console=ttyS0 quiet loglevel=2 rdinit=/init panic=-1",
                   "-fsdev", "local,id=fs0,path=/,security_model=none,readonly=on",
                   "-device", "virtio-9p-device,fsdev=fs0,mount_tag=hostroot",
                   "-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60,
                              cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    finally:
        if passt is not None:
            passt.terminate()
            passt.wait()
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            result: dict = json.loads(line[len("BENCH "):])
            stats = read_json_stats(proc.stderr) if mode.startswith("pyvmm") else None
            if stats is not None:
                result["interrupt_registers"] = interrupt_register_counts(stats)
                result["exits_to_python"] = stats["exits"]
                if stats.get("devices"):
                    result["devices"] = stats["devices"]
            return result
    return {"error": f"status {proc.returncode}: "
                     f"{(proc.stdout[-400:] + proc.stderr[-400:]).strip()}"}


def interrupt_register_counts(stats: dict) -> dict[str, dict[str, int]]:
    """The run's accesses to each virtio window's InterruptStatus (0x60) and InterruptACK
    (0x64), by window and kind: ``mmio-read``/``mmio-write`` reached Python,
    ``mmio-read-c`` the vCPU's C loop answered, ``mmio-write-kvm`` KVM absorbed."""
    counts: dict[str, dict[str, int]] = {}
    for row in stats["by_address"]:
        address = row["address"]
        if address is not None and row["kind"].startswith("mmio") \
                and address & 0xFFF in (0x60, 0x64):
            window = counts.setdefault(f"{address & ~0xFFF:#x}", {})
            name = f"{'status' if address & 0xFFF == 0x60 else 'ack'} {row['kind']}"
            window[name] = window.get(name, 0) + row["count"]
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", nargs="?")
    parser.add_argument("--seconds", type=int, default=5,
                        help="of each iperf3 run (0: no iperf3, the ping-pong alone)")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the modes this many times over, alternately; "
                        "each round and the medians are reported")
    parser.add_argument("--json", help="write every round's figures here "
                        "({MODE: [ROUND, ...]})")
    parser.add_argument("--baseline", action="append", default=[], metavar="CHECKOUT",
                        help="after each pyvmm mode, the same mode with this checkout's pyvmm "
                        "(its cffi modules built), reported as MODE@NAME; repeatable")
    parser.add_argument("--accel", default="kvm", help="QEMU's accelerator (tcg: to try the "
                        "QEMU modes where KVM runs no Linux user space)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("net_throughput: run as root (taps, modprobe), e.g. in the rig", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("net_throughput: --rounds must be at least 1", file=sys.stderr)
        return 2
    kernel = args.kernel or sorted(str(p) for p in Path("/boot").glob("vmlinuz-*"))[-1]
    prepare_host()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(IPERF_PORT)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measured: list[dict] = []
    listener = echo_server(args.pings, measured)
    results: dict[str, list[dict]] = {}
    work = tempfile.mkdtemp(prefix="pyvmm-netbench-")
    try:
        time.sleep(0.5)
        runs = []
        for mode in args.modes.split(","):
            runs.append((mode, mode, REPO))
            if mode.startswith("pyvmm"):
                runs += [(f"{mode}@{Path(base).name}", mode, Path(base).resolve())
                         for base in args.baseline]
        for round_number in range(1, args.rounds + 1):
            # Every other round in reverse (A B C, C B A, ...): the rig slows and speeds up
            # over a session, and a fixed order would hand its drift to the later modes.
            for name, mode, checkout in runs if round_number % 2 else runs[::-1]:
                started = time.monotonic()
                measured.clear()
                result = run_mode(mode, kernel, args.seconds, args.pings, work, args.accel,
                                  checkout)
                if measured:
                    result["host_per_round_trip"] = dict(measured[-1])
                    result["host_rtt_us"] = result["host_per_round_trip"].pop("host_rtt_us")
                result["round"] = round_number
                results.setdefault(name, []).append(result)
                print(f"{name} (round {round_number}): {result} "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        iperf.terminate()
        iperf.wait()
        listener.close()
        shutil.rmtree(work, ignore_errors=True)
        sh("ip", "link", "del", TAP, check=False)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def median_of(rounds: list[dict], key: str) -> float | None:
    """The median over the rounds that have ``key`` (None: none has it)."""
    values = [row[key] for row in rounds if row.get(key) is not None]
    return statistics.median(values) if values else None


def print_table(results: dict[str, list[dict]]) -> None:
    """One line per mode: the medians over its rounds, then each round's round trip."""
    def gbps(value: float | None) -> str:
        return "-" if value is None else f"{value / 1e9:.3f}"

    first = next(iter(results), "")
    #: The first mode's round trip in each round: the other modes' ratios are to it, round
    #: by round (the rig's speed drifts between rounds far more than within one).
    reference = {row["round"]: row["rtt_us"] for row in results.get(first, [])
                 if row.get("rtt_us")}
    print(f"\n{'mode':28} {'guest->host Gb/s':>17} {'host->guest Gb/s':>17} "
          f"{'1-byte RTT us':>14} {'/ ' + first:>18}  each round's RTT us (ratio)")
    for mode, rounds in results.items():
        good = [row for row in rounds if "error" not in row]
        for row in rounds:
            if "error" in row:
                print(f"{mode:28} round {row['round']} error: {row['error'][:300]}")
        if not good:
            continue
        rtt = median_of(good, "rtt_us")
        ratios = [{"round": row["round"], "ratio": row["rtt_us"] / reference[row["round"]]}
                  for row in good if row.get("rtt_us") and row["round"] in reference]
        ratio = median_of(ratios, "ratio")
        each = " ".join(f"{row['rtt_us']:.0f}" + (
            f" ({row['rtt_us'] / reference[row['round']]:.2f})"
            if row.get("rtt_us") and row["round"] in reference else "")
            for row in good if "rtt_us" in row)
        print(f"{mode:28} {gbps(median_of(good, 'up')):>17} "
              f"{gbps(median_of(good, 'down')):>17} "
              f"{'-' if rtt is None else f'{rtt:.0f}':>14} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>18}  {each}")
    # The same on the host's clock (the echo server's window of the timed round trips):
    # the guest's clock is its VMM's, and one that runs slow shortens its round trip.
    host_reference = {row["round"]: row["host_rtt_us"] for row in results.get(first, [])
                      if row.get("host_rtt_us")}
    print(f"\non the host's clock: {'1-byte RTT us':>14} {'/ ' + first:>18}  each round's")
    for mode, rounds in results.items():
        good = [row for row in rounds if row.get("host_rtt_us")]
        if not good:
            continue
        ratios = [{"ratio": row["host_rtt_us"] / host_reference[row["round"]]}
                  for row in good if row["round"] in host_reference]
        ratio = median_of(ratios, "ratio")
        each = " ".join(f"{row['host_rtt_us']:.0f}" + (
            f" ({row['host_rtt_us'] / host_reference[row['round']]:.2f})"
            if row["round"] in host_reference else "") for row in good)
        print(f"{mode:28} {median_of(good, 'host_rtt_us'):>14.0f} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>18}  {each}")
    # The echo server does the same per round trip whatever serves the guest (though the
    # back end's socket habits touch it: passt's cost it ~20% more than slirp's), and
    # runs at the rig's speed of the moment: the round trip in its run times is steadier
    # run to run than in µs, for comparing checkouts of one back end.
    echo = {mode: median_of([{"r": row["rtt_us"] / row["host_per_round_trip"]["ran_us bench"]}
                             for row in rounds if row.get("rtt_us") and
                             row.get("host_per_round_trip", {}).get("ran_us bench")], "r")
            for mode, rounds in results.items()}
    print("\nthe round trip in the echo server's run times per round trip (median): " +
          ", ".join(f"{mode} {value:.2f}" for mode, value in echo.items() if value))
    print("\nper round trip, medians over the rounds (the guest's; the host's by process, "
          "KVM's counters):")
    for mode, rounds in results.items():
        for part in ("guest_per_round_trip", "host_per_round_trip"):
            tables = [row[part] for row in rounds if part in row]
            names = sorted({name for table in tables for name in table
                            if " thread " not in name})
            medians = {name: round(statistics.median(table.get(name, 0) for table in tables), 2)
                       for name in names}
            print(f"{mode} {part}: {json.dumps(medians)}")




if __name__ == "__main__":
    sys.exit(main())
