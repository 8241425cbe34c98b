"""The kernel modules command mode needs, found for one kernel and put in load order.

The version comes from the bzImage's version string (setup header field
``kernel_version``), which names ``/lib/modules/VERSION``.  ``modules.dep``
lists each module with every module it needs; loading each dependency's own
dependencies first gives an order insmod can follow without modprobe.
Modules listed in ``modules.builtin`` are part of the kernel and skipped;
compressed modules (.xz, .gz) are unpacked here, since busybox's insmod may
not read them.
"""

from __future__ import annotations

import gzip
import lzma
import os
from dataclasses import dataclass

from pyvmm.errors import ConfigError

def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``path: dep dep`` lines -> {module name: [dependency paths]}, plus paths by name."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[path.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    """``kernel/fs/fuse/virtiofs.ko.xz`` -> ``virtiofs``; '-' and '_' are the same."""
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def load_order(wanted: list[str], deps: dict[str, list[str]],
               builtin: set[str]) -> tuple[list[str], list[str]]:
    """(module paths in load order, wanted names neither built in nor found)."""
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    missing: list[str] = []

    def visit(path: str, trail: tuple[str, ...]) -> None:
        if path in order or path in trail:
            return  # done, or a (malformed) cycle: modules.dep has none
        for dependency in deps.get(path, []):
            visit(dependency, trail + (path,))
        order.append(path)

    for name in wanted:
        name = name.replace("-", "_")
        if name in builtin:
            continue
        if name in by_name:
            visit(by_name[name], ())
        else:
            missing.append(name)
    return order, missing


@dataclass(frozen=True)
class ModuleSet:
    """Where modules come from and what to carry: (name in the archive, host path)."""

    directory: str
    files: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]


def find_modules(directory: str, wanted: list[str]) -> ModuleSet:
    """The modules of ``wanted`` (and what they need) under ``directory``."""
    try:
        with open(os.path.join(directory, "modules.dep")) as stream:
            deps = parse_modules_dep(stream.read())
    except OSError as exc:
        raise ConfigError(f"--modules {directory}: no modules.dep there "
                          f"({exc.strerror}); run depmod, or give the right directory") from None
    builtin: set[str] = set()
    try:
        with open(os.path.join(directory, "modules.builtin")) as stream:
            builtin = {module_name(line.strip()) for line in stream if line.strip()}
    except OSError:
        pass
    order, missing = load_order(wanted, deps, builtin)
    files = tuple((module_name(path) + ".ko", os.path.join(directory, path)) for path in order)
    return ModuleSet(directory, files, tuple(missing))


def read_module(path: str) -> bytes:
    """A module's ELF bytes, unpacked if compressed."""
    with open(path, "rb") as stream:
        data = stream.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise ConfigError(f"{path}: zstd-compressed modules are not supported; "
                          "give --modules a directory of .ko or .ko.xz files")
    return data
