"""The state file round-trips, and refuses another version, damage and truncation in one line."""

from __future__ import annotations

import json
import os

import pytest

from pyvmm.snapshot import STATE_FILE, VERSION, SnapshotError
from pyvmm.snapshot.stateformat import decode_state, encode_state, read_state, write_state

BODY = {"config": {"memory": 64 << 20, "cmdline": "console=ttyS0 é"}, "offset": 0.125,
        "vcpus": [{"msrs": [[16, 2 ** 63 + 5]], "structs": {"regs": "AAEC"}}]}


def test_a_body_comes_back_as_written(tmp_path) -> None:
    write_state(str(tmp_path), BODY)
    assert read_state(str(tmp_path)) == BODY
    assert os.stat(tmp_path / STATE_FILE).st_mode & 0o777 == 0o600
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["version"] == VERSION and len(document["sha256"]) == 64


def test_an_existing_state_file_is_never_overwritten(tmp_path) -> None:
    write_state(str(tmp_path), BODY)
    with pytest.raises(SnapshotError, match="cannot write"):
        write_state(str(tmp_path), {"other": 1})
    assert read_state(str(tmp_path)) == BODY


def _document() -> dict:
    return json.loads(encode_state(BODY))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=VERSION + 1), "format version 2; this pyvmm reads version 1"),
    (lambda d: d["body"]["config"].update(memory=128 << 20), "sha256 does not match"),
    (lambda d: d.update(sha256="0" * 64), "sha256 does not match"),
    (lambda d: d.update(format="something-else"), "not a pyvmm snapshot"),
    (lambda d: d.pop("body"), "sha256 does not match"),
], ids=["version", "edited", "checksum", "format", "no-body"])
def test_damage_and_other_versions_are_refused(change, message: str) -> None:
    document = _document()
    change(document)
    with pytest.raises(SnapshotError, match=message):
        decode_state(json.dumps(document).encode(), "state.json")


@pytest.mark.parametrize("cut", [2, 100, 0.5])
def test_a_truncated_file_is_refused(cut: float) -> None:
    data = encode_state(BODY)
    length = int(len(data) * cut) if cut < 1 else len(data) - int(cut)
    with pytest.raises(SnapshotError, match="damaged or truncated"):
        decode_state(data[:length], "state.json")


def test_refusals_are_one_line(tmp_path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"\x00\xff not json")
    with pytest.raises(SnapshotError) as error:
        read_state(str(tmp_path))
    assert "\n" not in str(error.value)
    with pytest.raises(SnapshotError, match="no snapshot here"):
        read_state(str(tmp_path / "missing"))


def test_a_symlinked_state_file_is_not_followed(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_state(str(real), BODY)
    link = tmp_path / "link"
    link.mkdir()
    (link / STATE_FILE).symlink_to(real / STATE_FILE)
    with pytest.raises(SnapshotError, match="no snapshot here"):
        read_state(str(link))
