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


#: pyvmm's rooms from the bottom up: a module imports only from its own room or a
#: lower layer (its own room's arrows are the cycle test's).  A room is a
#: subpackage, or a top-level module everything shares.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "limits", "exitstatus", "version"),  # plain values, exit statuses, version
    ("host", "memory", "eventloop"),        # host helpers, guest RAM, the event loop
    ("kvm", "loader", "vhost", "config"),   # the binding, loaders, vhost-user, the schema
    ("devices", "arch", "dump"),            # devices, the platform, dumps: no KVM, no config
    ("acpi", "vcpu", "gdb"),                # tables describing it; the vCPU threads; gdb's stub
    ("console",),                           # terminal, guest console, the pump
    ("snapshot",),                          # snapshots: saved state and RAM, restored
    ("vmm",),                               # the builder and the built machine
    ("command",),                           # command mode
    ("check",),                             # what this host can run (pyvmm check)
    ("api", "cli"),                         # the front ends
    ("pytest_plugin", "__main__", "__init__"),
)
#: Rooms built from memory and plain values alone (tested without a VM).
PLAIN = {"devices": {"errors", "limits", "host", "memory", "vhost"},
         "loader": {"errors", "memory"},
         "arch": {"errors", "limits", "memory", "loader"},
         "config": {"errors", "limits", "host"}}


def room(module: str) -> str:
    """``pyvmm.vcpu.runner`` -> ``vcpu``; ``pyvmm.errors`` -> ``errors``; ``pyvmm`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    return sorted((module, other) for module, imported in graph.items() for other in imported
                  if room(other) != room(module) and rank[room(other)] >= rank[room(module)])


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "pyvmm.cli.inspect" in graph["pyvmm.cli.main"]  # through importlib, by name
    assert "pyvmm.config.toml_file" in graph["pyvmm.cli.options"]  # inside a function


def test_every_room_has_a_layer() -> None:
    rooms = {room(name) for name in _modules()}
    assert rooms == {name for names in LAYERS for name in names}


def test_imports_only_go_down_the_layers() -> None:
    assert upward_imports(import_graph()) == []


def impure_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((module, other) for module, imported in graph.items()
                  if room(module) in PLAIN for other in imported
                  if room(other) not in PLAIN[room(module)] | {room(module)})


def test_the_checks_find_what_they_look_for() -> None:
    graph = {"pyvmm.kvm.vm": {"pyvmm.vmm.builder"},
             "pyvmm.devices.virtio.disk": {"pyvmm.config.tables", "pyvmm.memory"},
             "pyvmm.vmm.builder": {"pyvmm.devices.serial"}}
    assert upward_imports(graph) == [("pyvmm.kvm.vm", "pyvmm.vmm.builder")]
    assert impure_imports(graph) == [("pyvmm.devices.virtio.disk", "pyvmm.config.tables")]


def test_devices_loaders_and_arch_take_plain_values() -> None:
    """No device, loader or platform module reads config, KVM, vCPUs or the machine."""
    assert impure_imports(import_graph()) == []


def test_no_room_is_crowded() -> None:
    """At most 10 modules at the top and 12 in any folder, so folders show the architecture."""
    per_folder: dict[Path, int] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" and not path.name.startswith("_build"):
            per_folder[path.parent] = per_folder.get(path.parent, 0) + 1
    assert per_folder.pop(PACKAGE) <= 10
    assert {str(folder): count for folder, count in per_folder.items() if count > 12} == {}


def test_each_class_name_is_used_once() -> None:
    """Two classes of one name make a reader (and an import) ask which one."""
    seen: dict[str, list[str]] = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(name)
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_the_environment_is_read_in_one_place() -> None:
    """Every variable pyvmm reads is declared (and documented) in pyvmm.host.environment."""
    readers = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                readers.append(name)
    assert sorted(set(readers)) == ["pyvmm.host.environment"]


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
              "pyvmm.host.disk_image, pyvmm.devices.virtio.mmio, pyvmm.devices.serial\n"
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


def test_the_readme_says_where_things_are() -> None:
    """Every folder of the package has its line in "Where things are", every variable its row."""
    from pyvmm.host.environment import VARIABLES

    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    folders = {path.parent for path in PACKAGE.rglob("__init__.py")} - {PACKAGE}
    named = {folder for folder in folders
             if f"`{folder.relative_to(PACKAGE.parent)}/`" in section}
    # arch/ is named by its only platform, arch/x86_64/; devices/virtio/ by devices/.
    assert folders - named <= {PACKAGE / "arch", PACKAGE / "devices" / "virtio"}
    assert [v.name for v in VARIABLES if f"`{v.name}`" not in section] == []
