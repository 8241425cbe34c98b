"""The QMP client of qemu-storage-daemon: a job's end is taken from its event, whether
it came before the command's answer or after, and a job that never ends is one error."""

from __future__ import annotations

import json
import socket

import pytest

from pyvmm.errors import DeviceError
from pyvmm.vhost import storage_daemon
from pyvmm.vhost.storage_daemon import Qmp

GREETING: dict = {"QMP": {"version": {}, "capabilities": []}}


def job_event(job: str, status: str) -> dict:
    return {"event": "JOB_STATUS_CHANGE", "data": {"id": job, "status": status},
            "timestamp": {"seconds": 0, "microseconds": 0}}


def monitor(*messages: dict) -> tuple[Qmp, socket.socket]:
    """A Qmp whose daemon has already said ``messages`` (after the greeting and the
    answer to qmp_capabilities)."""
    ours, theirs = socket.socketpair()
    theirs.sendall(b"".join(json.dumps(m).encode() + b"\r\n"
                            for m in (GREETING, {"return": {}}, *messages)))
    return Qmp(ours, "qemu-storage-daemon"), theirs


@pytest.mark.parametrize("before", [True, False], ids=["event-before-answer", "after"])
def test_the_concluded_event_ends_the_wait(before: bool) -> None:
    events = [job_event("create0", "created"), job_event("create0", "running"),
              job_event("create0", "concluded")]
    answer: dict = {"return": {}}
    qmp, daemon = monitor(*(events + [answer] if before else [answer] + events))
    try:
        assert qmp.execute("blockdev-create", **{"job-id": "create0"}) == {}
        qmp.wait_for_job("create0", "blockdev-create")
        daemon.sendall(b'{"return": []}\r\n')
        assert qmp.execute("query-jobs") == []  # nothing of the job was left unread
    finally:
        qmp.close()
        daemon.close()


def test_a_job_that_never_concludes_is_one_error(monkeypatch) -> None:
    monkeypatch.setattr(storage_daemon, "QMP_TIMEOUT", 0.2)
    qmp, daemon = monitor({"return": {}}, job_event("create0", "running"))
    try:
        qmp.execute("blockdev-create", **{"job-id": "create0"})
        with pytest.raises(DeviceError, match="did not answer within 0.2 s"):
            qmp.wait_for_job("create0", "blockdev-create")
    finally:
        qmp.close()
        daemon.close()


def test_events_without_end_are_bounded_in_time(monkeypatch) -> None:
    monkeypatch.setattr(storage_daemon, "QMP_TIMEOUT", 0.0)  # the deadline has passed
    qmp, daemon = monitor({"return": {}}, job_event("create0", "running"))
    try:
        qmp.execute("blockdev-create", **{"job-id": "create0"})
        with pytest.raises(DeviceError, match="blockdev-create did not finish within 0 s"):
            qmp.wait_for_job("create0", "blockdev-create")
    finally:
        qmp.close()
        daemon.close()
