#!/usr/bin/env bash
# The README's test command: install what the tests need, build the guest
# images (cached in images/out/), type-check, run the whole test suite.
#
# Tests marked `linux` need a real Linux user space, so hardware-assisted KVM.
# They run here when /dev/kvm is that, and otherwise inside scripts/rig.py
# (SVM KVM under QEMU's TCG).  If the rig itself fails twice (its own health
# check says so: exit 125), the linux tests are reported skipped with that
# reason; a pyvmm failure inside the rig is always a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/host-deps.sh
python3 -m pip install -q -e '.[test]'
# An editable install writes no bytecode, and PYTHONDONTWRITEBYTECODE may forbid
# Python to: compile it once so no pyvmm run pays for it (stale files are ignored).
python3 -m compileall -q pyvmm
bash images/build.sh tiny linux initramfs cloud
python3 -m mypy pyvmm
python3 -m pytest -q -m "not linux" "$@" && status=0 || status=$?

hardware_kvm() {
    python3 -c 'import sys; from tests.linux.conftest import why_no_hardware_kvm as why
sys.exit(why() is not None)'
}
if hardware_kvm; then
    python3 -m pytest -q -m linux "$@" && linux=0 || linux=$?
else
    echo "test.sh: /dev/kvm is not hardware KVM here: the linux tests run in scripts/rig.py" >&2
    job="images/out/rig-job"   # kept: the output and any dumps of a failed run
    rm -rf "$job"
    python3 scripts/rig.py --job "$job" -- \
        python3 -m pytest -q -p no:cacheprovider -m linux "$@" && linux=0 || linux=$?
    if [ "$linux" -eq 125 ]; then
        echo "test.sh: SKIPPED the linux tests: the rig failed on its own twice" \
             "(its reason is above, after 'rig: FAILED'); this is not a pyvmm failure" >&2
        linux=0
    elif [ "$linux" -eq 126 ]; then
        echo "test.sh: the rig can't run here (see above)" >&2
    fi
fi
[ "$linux" -eq 5 ] && linux=0   # no linux test selected by the arguments
[ "$status" -eq 5 ] && status=0
[ "$status" -ne 0 ] && exit "$status"
exit "$linux"
