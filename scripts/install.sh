#!/usr/bin/env bash
# Install pyvmm from this checkout into .venv/ here, with bytecode: Debian's own
# Python refuses pip outside a virtual environment (PEP 668).  Installs the Debian
# packages the build, the demo and the rig need first (scripts/host-deps.sh).
#
#   bash scripts/install.sh        pyvmm (.venv/bin/pyvmm)
#   bash scripts/install.sh test   and what the tests need (pytest, pytest-xdist, hypothesis, mypy)
#
# The name pyvmm on PyPI belongs to an unrelated project: never pip install pyvmm.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = test ] && extras="[test]"

# shellcheck source=scripts/progress.sh
. scripts/progress.sh
PROGRESS_NAME=install

step "Debian packages (scripts/host-deps.sh run)" bash scripts/host-deps.sh run
if [ ! -x .venv/bin/python ]; then
    step "creating .venv with $(command -v python3)" python3 -m venv .venv
fi
# pip builds the KVM binding from <linux/kvm.h> with cffi (gcc, python3-dev).
step "pip install -e '.$extras' into .venv (compiles the KVM binding)" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
# An editable install writes no bytecode, and PYTHONDONTWRITEBYTECODE may forbid
# Python to: compile it once so no pyvmm run pays for it (stale files are ignored).
step "compiling pyvmm's bytecode" .venv/bin/python -m compileall -q pyvmm scripts
