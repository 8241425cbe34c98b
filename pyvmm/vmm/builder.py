"""The assembly recipe: config -> KVM, RAM, kernel, boot CPU state, devices (a BuiltMachine).

Everything the user can get wrong (kernel, initrd, sizes, disk images) is
checked before /dev/kvm is opened, so bad input never depends on the host.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Sequence

from pyvmm.acpi.tables import write_acpi_tables
from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot import prepare_boot
from pyvmm.arch.x86_64.cpuid import (CpuidEntry, adjust_cpuid, describe_policy, host_leaves,
                                     with_host_leaves)
from pyvmm.config.machine import MachineConfig
from pyvmm.config.values import size_name
from pyvmm.console.host import HostConsole
from pyvmm.console.pump import ConsoleInput, ConsolePump
from pyvmm.devices.bus import Bus
from pyvmm.devices.i8042 import I8042
from pyvmm.devices.legacy import DebugExit, IgnoredPorts
from pyvmm.devices.platform import PvPanic, SleepControl
from pyvmm.devices.rtc import Rtc
from pyvmm.devices.serial import Serial
from pyvmm.devices.virtio.console import ConsoleDevice
from pyvmm.errors import SEE_CHECK, ConfigError, HostError, LoaderError
from pyvmm.vcpu.dispatch import UnknownAccessLog
from pyvmm.eventloop import EventLoop
from pyvmm.vcpu.exit_event import ExitEvent
from pyvmm.exitstatus import StopReason
from pyvmm.host.cpuid import host_cpuid
from pyvmm.host.inputfile import read_input
from pyvmm.kvm._ffi import address_of
from pyvmm.kvm import system as kvm_system  # a module: tests stand in for is_pvm_host
from pyvmm.kvm.system import Kvm
from pyvmm.loader.identify import is_linux
from pyvmm.kvm.vm import Vm
from pyvmm.vmm.machine import BuiltMachine
from pyvmm.vmm import spare_vm
from pyvmm.memory import GuestMemory
from pyvmm.vmm.disks import Disks
from pyvmm.vmm.network import Networks
from pyvmm.vmm.shares import Shares
from pyvmm.vcpu.interrupt_status import InterruptRegistersOffPython
from pyvmm.vcpu.uart_fastpath import UartFastPath
from pyvmm.vcpu.served import ServedVcpu
from pyvmm.vcpu.runner import VcpuRunner, VcpuRunners
from pyvmm.vmm.virtio_slots import (acpi_platform, announce, attach_virtio, irq_line_fallbacks,
                                    open_virtio_devices, open_vsock, plan_virtio_slots,
                                    serve_restored_queues)

if TYPE_CHECKING:
    from pyvmm.devices.virtio.ports import Port
    from pyvmm.vhost.vsock import VhostVsock
    from pyvmm.gdb.server import GdbServer
    from pyvmm.snapshot.restore import Snapshot
    from pyvmm.snapshot.save import StatefulDevice
    from pyvmm.vcpu.stats import RunStats

log = logging.getLogger(__name__)

#: Port ranges Linux pokes on a PC that pyvmm answers quietly (reads all-ones).
IGNORED_PORT_RANGES = (
    (0x80, 1),     # POST diagnostic port (also Linux's I/O delay port)
    (0xCF8, 8),    # PCI configuration mechanism #1 (no PCI bus here)
    (0x2F8, 8),    # COM2 .. COM4: absent UARTs answer all-ones
    (0x3E8, 8),
    (0x2E8, 8),
)


class KvmIrqLine:
    """An InterruptLine driving one GSI of the in-kernel irqchip; ioctl only on change."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self._vm = vm
        self._gsi = gsi
        self._level = False

    def set_level(self, high: bool) -> None:
        if high != self._level:
            self._level = high
            self._vm.set_irq_line(self._gsi, high)


_policy_warned: list[bool] = []
_stale_helper_warned: list[bool] = []


def build_machine(config: MachineConfig, console: HostConsole | None = None,
                  ports: Sequence[Port] = (), stats: RunStats | None = None,
                  snapshot: Snapshot | None = None, disks: Disks | None = None) -> BuiltMachine:
    """The assembly recipe: KVM, RAM, kernel, boot CPU state, devices: a whole BuiltMachine.

    ``console`` is where the guest's consoles go and its input comes from
    (default: our stdin and stdout, Ctrl-A x stopping the machine); ``ports``
    are the stream ports of command mode (``config.stdio_ports``); ``stats``
    counts exits and start-up milestones for ``--stats``.  With ``snapshot``
    (``config`` is then ``snapshot.config``) the machine is restored from it:
    RAM mapped from its memory file, CPU and device state written back, no kernel.
    ``disks`` are the last machine's (``BuiltMachine.carry_disks``), after a guest
    reboot: the same qemu-storage-daemon exports, overlays and all.
    """
    kernel_image, initrd_image = b"", None
    if snapshot is None:
        # A kernel or initrd larger than guest RAM can't fit in it.
        ram = f"(the guest's --memory {size_name(config.memory)})"
        kernel_image = read_input(config.kernel, "kernel", LoaderError, config.memory, ram)
        initrd_image = read_input(config.initrd, "initrd", LoaderError, config.memory, ram) \
            if config.initrd else None
        refuse_linux_on_pvm(config, kernel_image)
    # Everything that can be wrong with the input is found before KVM is opened.
    slots = plan_virtio_slots(config)
    # A restore re-opens the snapshot's images (or overlays over them) and starts a
    # fresh passt per NIC; the snapshot refused shares.
    if disks is None:
        disks = Disks(config.drives, overlays=snapshot is not None and snapshot.overlays)
    shares = Shares(config.shares)
    networks = Networks(config.nets, address_of)
    vsock = None
    try:
        vsock = open_vsock(config)
        return _build(config, console, ports, stats, kernel_image, initrd_image, slots,
                      shares, disks, networks, snapshot, vsock=vsock)
    except BaseException:
        if vsock is not None:
            vsock.close()
        networks.close()
        shares.close()
        disks.close()
        raise


def refuse_linux_on_pvm(config: MachineConfig, kernel_image: bytes) -> None:
    """HostError at once for Linux on a kvm_pvm host, rather than ~25 s of emulation to exit 10.

    Choosing ``--cpu`` or ``--emulation-assist`` says the boot is an experiment
    on this host (how far Linux's start-up gets): it goes ahead.
    """
    if config.cpu_policy == "auto" and config.emulation_assist == "auto" \
            and is_linux(kernel_image) and kvm_system.is_pvm_host():
        raise HostError(f"{kvm_system.PVM_NO_USER_SPACE}{SEE_CHECK}; "
                        f"{kvm_system.RUN_LINUX_ELSEWHERE}; --cpu compat or "
                        "--emulation-assist on boot it here anyway, as an experiment")


def _build(config: MachineConfig, console: HostConsole | None, ports: Sequence[Port],
           stats: RunStats | None, kernel_image: bytes, initrd_image: bytes | None, slots: list,
           shares: Shares, disks: Disks, networks: Networks,
           snapshot: Snapshot | None = None, vsock: VhostVsock | None = None) -> BuiltMachine:
    if config.control:
        from pyvmm.vmm.control import check_control_path

        check_control_path(config.control)
    if config.dump:
        from pyvmm.dump.target import check_dump_target

        check_dump_target(config.dump)
    cmdline = config.cmdline
    if config.virtio_announce in ("cmdline", "both"):
        cmdline = " ".join(part for part in (cmdline, announce(slots)) if part)
    if snapshot is not None:
        memory = snapshot.map_memory()  # the guest's RAM as saved, copy-on-write
        boot = None
    else:
        memory = _new_ram(config, shared=bool(config.shares) or disks.need_daemon)
        rsdp = 0
        if config.acpi:
            rsdp = write_acpi_tables(memory, acpi_platform(config, slots))
        boot = prepare_boot(memory, kernel_image, initrd_image, cmdline, rsdp_address=rsdp)
    loop = EventLoop()
    exit_event = ExitEvent(on_set=loop.stop)
    console = console or HostConsole(on_quit=exit_event.setter(StopReason.user_quit()))

    def backend_failed(message: str) -> None:
        exit_event.set(StopReason.backend_failed(message))

    shares.start()
    disks.start()
    networks.start()
    devices = open_virtio_devices(slots, console.write, shares, backend_failed, ports, disks,
                                  networks, vsock)
    if stats is not None:  # --stats reports each NIC's frames (and its thread's wake-ups)
        nics = [device for device in devices if hasattr(device, "frame_counts")]
        for index, nic in enumerate(nics):
            stats.device_counts[f"net{index}"] = functools.partial(getattr, nic, "frame_counts")

    # A restore takes the VM the process made when it closed its last clone, if any.
    ready = spare_vm.take(Kvm.device_path(), config.cpus) if snapshot is not None else None
    kvm = ready.kvm if ready is not None else Kvm()
    kvm.require_capabilities()
    if config.cpus > kvm.max_vcpus():
        raise ConfigError(f"--cpus {config.cpus}: this host allows at most {kvm.max_vcpus()}")
    pvm_host = kvm_system.is_pvm_host()
    policy = config.cpu_policy
    if policy == "auto":
        policy = "compat" if pvm_host else "host"
    if pvm_host and config.cpu_policy == "auto" and not _policy_warned and snapshot is None:
        _policy_warned.append(True)  # once per process, not per --on-reboot restart
        log.warning("/dev/kvm is kvm_pvm, which emulates this guest in software; %s "
                    "(--cpu host keeps them)", describe_policy(policy))
    vm, vcpus = (ready.vm, ready.vcpus) if ready is not None else spare_vm.make_vm(kvm, config.cpus)
    for slot, region in enumerate(memory.regions):
        vm.set_user_memory_region(slot, region.guest_base, region.size,
                                  address_of(region.buffer))
    if snapshot is not None:
        from pyvmm.snapshot.restore import check_cpu, restore_vcpus, saved_cpuid

        check_cpu(snapshot, kvm)
        cpuid = saved_cpuid(snapshot)
        advance_ns = snapshot.clock_advance_ns()  # the guest's clocks move on by this
        for warning in restore_vcpus(snapshot, kvm, vcpus, advance_ns):
            log.warning("restore: %s", warning)
    else:
        assert boot is not None
        advance_ns = 0
        supported = _supported_cpuid(kvm)
        cpuid = [adjust_cpuid(supported, vcpu.id, config.cpus, policy,
                              tsc_deadline=kvm.has_tsc_deadline_timer()) for vcpu in vcpus]
        for vcpu, leaves in zip(vcpus, cpuid):
            vcpu.set_cpuid(leaves)
            vcpu.set_msrs(boot.msrs)
            vcpu.configure_lapic_lint()
            vcpu.set_fpu(boot.fpu.fcw, boot.fpu.mxcsr)
        # Only the boot CPU starts at the kernel entry; the others wait for INIT/SIPI.
        vcpus[0].set_sregs(boot.sregs)
        vcpus[0].set_regs(boot.regs_dict())

    pio_bus, mmio_bus = Bus(), Bus()
    serial = Serial(KvmIrqLine(vm, layout.COM1_IRQ), console.write, on_pending=loop.wake)
    rtc = Rtc(KvmIrqLine(vm, layout.RTC_IRQ), loop.call_at)
    stateful: dict[str, StatefulDevice] = {"serial": serial, "i8042": _attach_legacy_devices(pio_bus, serial, exit_event),
                "rtc": rtc}
    pio_bus.insert(rtc, layout.RTC_PORT, 2)
    interrupts = InterruptRegistersOffPython()
    uart_fast = UartFastPath(kvm, vm, vcpus, serial, layout.COM1_PORT, layout.COM1_IRQ,
                             interrupts=interrupts)
    transports, owned_fds = attach_virtio(vm, loop, mmio_bus, memory, slots, devices,
                                          interrupts)
    if stats is not None and transports:  # interrupts the irqfd carried: KVM refused the pulse
        stats.device_counts["virtio"] = functools.partial(irq_line_fallbacks, transports)
    if snapshot is not None:
        from pyvmm.snapshot.restore import restore_machine_state

        for warning in restore_machine_state(snapshot, kvm, vm, vcpus, stateful, transports,
                                             advance_ns):
            log.warning("restore: %s", warning)
        loop.call_at(0, lambda: serve_restored_queues(transports))
    shares.watch(loop, backend_failed)
    disks.watch(loop, backend_failed)
    networks.watch(loop, backend_failed)
    console_input: ConsoleInput = serial
    if _guest_console_is_hvc(cmdline):
        console_input = next((t.device for t in transports
                              if isinstance(t.device, ConsoleDevice)), serial)

    assist = config.emulation_assist == "on" or (config.emulation_assist == "auto" and pvm_host)
    assists: dict[str, int] = {}
    unknown = UnknownAccessLog()
    served = [ServedVcpu(vcpu, pio_bus, mmio_bus, unknown, uart_fast, stats, pvm_host,
                         assist, assists) for vcpu in vcpus]
    runners = VcpuRunners([VcpuRunner(s, s.serve, exit_event, on_exit=s.finished)
                           for s in served])
    gdb = _gdb_server(config, vcpus, served, runners, memory, exit_event)
    return BuiltMachine(config=config, kvm=kvm, vm=vm, memory=memory, vcpus=vcpus,
                        exit_event=exit_event, loop=loop, console=console,
                        pump=ConsolePump(console, console_input, serial, uart_fast),
                        runners=runners, serial=serial, uart_fast=uart_fast, virtio=transports,
                        owned_fds=owned_fds, stats=stats, disks=disks,
                        closers=[networks.close, shares.close, disks.close, interrupts.close]
                        + ([vsock.close] if vsock is not None else []),
                        assists=assists, gdb=gdb, stateful=stateful, cpuid=cpuid,
                        on_closed=functools.partial(spare_vm.prepare, kvm.path, config.cpus)
                        if snapshot is not None else None,
                        on_closing=snapshot.learn_written if snapshot is not None else None)


def _supported_cpuid(kvm: Kvm) -> list[CpuidEntry]:
    """The leaves a booted guest's CPUID is made from: KVM's, with the host's brand string
    and cache leaves (a restore takes the snapshot's table instead)."""
    supported = [CpuidEntry(*leaf) for leaf in kvm.supported_cpuid()]
    read_host_cpuid = host_cpuid()
    if read_host_cpuid is not None:
        return with_host_leaves(supported, host_leaves(read_host_cpuid))
    if not _stale_helper_warned:
        _stale_helper_warned.append(True)
        log.warning("pyvmm's compiled host helper predates CPUID pass-through: the guest sees "
                    "no brand string (rebuild: python3 setup.py build_ext --inplace)")
    return supported


def _new_ram(config: MachineConfig, shared: bool) -> GuestMemory:
    """Fresh guest RAM: a vhost-user back end maps it itself, then it is a ``shared`` memfd."""
    try:
        return GuestMemory.anonymous(layout.ram_ranges(config.memory),
                                     shared=shared, address_of=address_of)
    except OSError as exc:
        raise ConfigError(f"--memory {size_name(config.memory)}: this host can't reserve "
                          f"that much guest RAM ({exc.strerror or exc})") from None


def _gdb_server(config: MachineConfig, vcpus: list, served: list[ServedVcpu],
                runners: VcpuRunners, memory: GuestMemory,
                exit_event: ExitEvent) -> GdbServer | None:
    """``--gdb``: the machine as gdb's target, its traps seen first, and the listener."""
    if not config.gdb:
        return None
    from pyvmm.config.values import parse_gdb_address
    from pyvmm.gdb.server import GdbServer
    from pyvmm.vmm.gdb_target import MachineTarget

    target = MachineTarget(vcpus, runners, memory, exit_event.setter(
        StopReason.stopped("killed from gdb")))
    for vcpu in served:
        vcpu.debugger = target.on_exit
    if config.gdb_wait:
        target.hold_at_start()
    try:
        return GdbServer(parse_gdb_address(config.gdb), target)
    except BaseException:
        target.close()
        raise


def _guest_console_is_hvc(cmdline: str) -> bool:
    """Linux's last console= is where /dev/console (and so the shell) goes."""
    consoles = [arg.split("=", 1)[1] for arg in cmdline.split() if arg.startswith("console=")]
    return bool(consoles) and consoles[-1].startswith("hvc")


def _attach_legacy_devices(bus: Bus, serial: Serial, exit_event: ExitEvent) -> I8042:
    """COM1, the i8042 (reset), debug-exit, pvpanic, ACPI sleep, the ignored ports.

    (The RTC is attached beside them: it needs the event loop's timer.)

    The devices get the machine's exit event, and can only say why it should stop.
    Returns the i8042 (the one of them with state a snapshot keeps).
    """
    bus.insert(serial, layout.COM1_PORT, 8)
    i8042 = I8042(exit_event.setter(StopReason.reboot("the guest reset the machine (i8042)")))
    bus.insert(i8042, layout.I8042_DATA_PORT, 5)
    bus.insert(DebugExit(lambda status: exit_event.set(StopReason.debug_exit(status))),
               layout.DEBUG_EXIT_PORT, 4)
    bus.insert(PvPanic(exit_event.setter(
        StopReason.guest_panic("the guest kernel panicked (pvpanic)"))),
        layout.PVPANIC_PORT, 1)
    bus.insert(SleepControl(exit_event.setter(
        StopReason.poweroff("the guest powered off (ACPI S5)"))),
        layout.ACPI_SLEEP_CONTROL_PORT, 2)
    for base, length in IGNORED_PORT_RANGES:
        bus.insert(IgnoredPorts(), base, length)
    return i8042
