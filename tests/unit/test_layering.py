"""How pyvmm's modules depend on each other: no import cycles, light start-up.

The graph is read from the source (every import, at any depth, and module
names given to importlib as strings), so an import hidden in a function
still counts: a cycle through one is still a cycle for the reader.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pyvmm

PACKAGE = Path(pyvmm.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the pyvmm modules it imports (packages count as their __init__)."""
    modules = _modules()

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {known(a.name) for a in node.names if a.name.startswith("pyvmm")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                if base.startswith("pyvmm"):
                    imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                                 else known(base) for a in node.names}
            elif isinstance(node, ast.Constant) and node.value in modules \
                    and isinstance(node.value, str) and "." in node.value:
                imported.add(node.value)  # importlib.import_module("pyvmm.x")
        # A module may import its own package (``pyvmm.__version__``): not a cycle.
        graph[name] = imported - {name} - {p for p in modules if name.startswith(p + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "pyvmm.cli.inspect" in graph["pyvmm.cli.main"]  # through importlib, by name
    assert "pyvmm.config.toml_file" in graph["pyvmm.cli.options"]  # inside a function


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_cycle_between_packages() -> None:
    """arch uses the loaders; a loader takes the platform's addresses as arguments."""
    graph = import_graph()

    def package(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for name, imported in graph.items():
        packages.setdefault(package(name), set()).update(
            package(other) for other in imported if package(other) != package(name))
    packages = {name: imported & set(packages) for name, imported in packages.items()}
    assert [c for c in cycles(packages) if "pyvmm" not in c] == []


def test_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports_on_its_own() -> None:
    """Each module imports first in a fresh interpreter (an order-dependent cycle fails)."""
    names = sorted(name for name in _modules() if not name.endswith("__main__")
                   and not name.endswith("_build"))
    script = ("import importlib, subprocess, sys\n"
              "bad = [n for n in sys.argv[1:] if subprocess.run([sys.executable, '-c', "
              "f'import {n}'], capture_output=True).returncode]\n"
              "print(' '.join(bad))")
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True,
                            text=True, cwd=PACKAGE.parent, timeout=600)
    assert result.stdout.split() == []


def test_run_imports_no_heavy_modules() -> None:
    """``pyvmm run`` pays for neither rich, pyelftools nor tomllib unless asked."""
    script = ("import sys, pyvmm.cli.main; print(' '.join(m for m in ('rich', 'elftools', "
              "'tomllib', 'pyvmm.cli.inspect', 'pyvmm.config.toml_file') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=PACKAGE.parent, check=True)
    assert result.stdout.split() == []


def test_devices_do_not_need_kvm() -> None:
    """A disk, a virtio queue or device loads neither the KVM binding nor /dev/kvm."""
    script = ("import sys\n"
              "import pyvmm.devices.virtio.block, pyvmm.devices.virtio.console, "
              "pyvmm.devices.virtio.disk, pyvmm.devices.virtio.mmio, pyvmm.devices.serial\n"
              "print(' '.join(m for m in sys.modules if m.startswith('pyvmm.kvm')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=PACKAGE.parent, check=True)
    assert result.stdout.split() == []


#: Words that name the UART or its registers: none belongs in the KVM binding.
_UART_WORDS = re.compile(r"uart|\bserial\b|8250|16550|com1|0x3f8|\b(lsr|thr|ier)\b", re.IGNORECASE)


def _uart_mentions(package: str) -> list[str]:
    """Lines of ``package``'s sources (its cffi build script too) that name the UART, and
    names in its compiled cffi modules that do."""
    folder = PACKAGE.parent / package.replace(".", "/")
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sorted(folder.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if _UART_WORDS.search(line)]
    for compiled in sorted(folder.glob("_*_cffi*.so")):
        module = importlib.import_module(f"{package}.{compiled.name.split('.')[0]}")
        names = dir(module.lib) + [name for kind in module.ffi.list_types() for name in kind]
        found += [f"{compiled.name}: {name}" for name in names if _UART_WORDS.search(name)]
    return found


def test_the_kvm_binding_knows_nothing_of_a_uart() -> None:
    """The UART fast path's C loop is its own cffi module (pyvmm/vcpu/_uart_build.py)."""
    assert _uart_mentions("pyvmm.kvm") == []


def test_the_uart_finder_finds_the_fast_path() -> None:
    found = _uart_mentions("pyvmm.vcpu")
    assert any(line.startswith("_uart_build.py:") and "pyvmm_run_uart_fast" in line
               for line in found)
    assert any(line.startswith("_uart_cffi.") and line.endswith(": pyvmm_run_uart_fast")
               for line in found)
