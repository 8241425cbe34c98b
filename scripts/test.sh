#!/usr/bin/env bash
# The README's test command: install what the tests need, build the guest
# images (cached in images/out/), type-check, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/host-deps.sh
python3 -m pip install -q -e '.[test]'
# An editable install writes no bytecode, and PYTHONDONTWRITEBYTECODE may forbid
# Python to: compile it once so no pyvmm run pays for it (stale files are ignored).
python3 -m compileall -q pyvmm
bash images/build.sh
python3 -m mypy pyvmm
python3 -m pytest -q "$@"
