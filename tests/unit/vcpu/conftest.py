"""What the vCPU tests share (the machine's gdb target tests too): a scripted vCPU."""

from __future__ import annotations

import threading

from pyvmm.kvm.exits import Hlt, Interrupted, VmExit


class ScriptedVcpu:
    """Returns its script's exits one by one, then ``Hlt`` forever (a guest at rest).

    A kick (``request_exit``) makes the next ``run`` return ``Interrupted``, as
    KVM's ``immediate_exit`` does.
    """

    def __init__(self, script: list[VmExit], vcpu_id: int = 0) -> None:
        self.id = vcpu_id
        self.script = list(script)
        self.runs = 0
        self._kicked = threading.Event()

    def run(self) -> VmExit:
        self.runs += 1
        if self._kicked.is_set():
            self._kicked.clear()
            return Interrupted()
        if self.script:
            return self.script.pop(0)
        self._kicked.wait(0.01)
        return Hlt()

    def request_exit(self) -> None:
        self._kicked.set()
