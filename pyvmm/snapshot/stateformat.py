"""The state file: versioned, checksummed JSON (the package doc describes it)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pyvmm.snapshot import STATE_FILE, VERSION, SnapshotError

FORMAT = "pyvmm-snapshot"
#: The largest state file read (a few KiB per vCPU: far below this).
MAX_STATE_BYTES = 64 << 20


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode_state(body: dict) -> bytes:
    """The state file's bytes for ``body`` (plain JSON values)."""
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    return json.dumps({"format": FORMAT, "version": VERSION, "sha256": digest,
                       "body": body}, sort_keys=True, indent=1).encode() + b"\n"


def decode_state(data: bytes, where: str) -> dict:
    """The body of a state file's bytes; SnapshotError naming ``where`` for anything else."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{where}: damaged or truncated (not JSON: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError(f"{where}: not a pyvmm snapshot")
    version = document.get("version")
    if version != VERSION:
        raise SnapshotError(f"{where}: snapshot format version {version!r}; this pyvmm "
                            f"reads version {VERSION} (take the snapshot again)")
    body = document.get("body")
    if not isinstance(body, dict) \
            or hashlib.sha256(_canonical(body)).hexdigest() != document.get("sha256"):
        raise SnapshotError(f"{where}: damaged (its sha256 does not match its contents)")
    return body


def write_state(directory: str, body: dict) -> None:
    """Create ``directory``/state.json (owner-only, never over an existing file)."""
    path = os.path.join(directory, STATE_FILE)
    data = encode_state(body)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise SnapshotError(f"cannot write {path}: {exc.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def open_state(directory: str) -> tuple[int, os.stat_result]:
    """``directory``/state.json open (an fd the caller closes) and its ``fstat``."""
    path = os.path.join(directory, STATE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotError(f"{directory}: no snapshot here ({STATE_FILE}: "
                            f"{exc.strerror})") from None
    try:
        return fd, os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from None


def read_open_state(fd: int, path: str) -> dict:
    """The body of the state file open as ``fd`` (``path`` names it), checked."""
    chunks, left = [], MAX_STATE_BYTES + 1
    try:
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from None
    if not left:
        raise SnapshotError(f"{path}: larger than {MAX_STATE_BYTES >> 20} MiB: not a state file")
    return decode_state(b"".join(chunks), path)


def read_state(directory: str) -> dict:
    """The body of ``directory``/state.json, checked (SnapshotError otherwise)."""
    fd, _ = open_state(directory)
    try:
        return read_open_state(fd, os.path.join(directory, STATE_FILE))
    finally:
        os.close(fd)
