#!/usr/bin/env bash
# The README's test command: install what the tests need, build the guest
# images (cached in images/out/), type-check, run the whole test suite.
#
# Tests marked `linux` need a real Linux user space, so hardware-assisted KVM.
# They run here when /dev/kvm is that, and otherwise inside scripts/rig.py
# (SVM KVM under QEMU's TCG).  If the rig itself fails twice (its own health
# check says so: exit 125), that session's files are tried once more (two
# sessions) after the others, and only then reported skipped ("NOT CHECKED",
# with the rig's reason); a pyvmm failure inside the rig is always a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/host-deps.sh
# pyvmm and the test tools go into .venv/ (scripts/install.sh), as the README's
# first command installs pyvmm: Debian's own Python installs nothing outside one.
bash scripts/install.sh test
python=.venv/bin/python
bash images/build.sh tiny linux initramfs cloud
$python -m mypy pyvmm tests bench scripts

hardware_kvm() {
    $python -c 'import sys; from tests.linux.conftest import why_no_hardware_kvm as why
sys.exit(why() is not None)'
}
if hardware_kvm; then
    # Without paths pytest runs pyproject's testpaths: tests/ and scripts/tests/ (the scripts' own).
    $python -m pytest -q -m "not linux" "$@" && status=0 || status=$?
    $python -m pytest -q -m linux "$@" && linux=0 || linux=$?
else
    echo "test.sh: /dev/kvm is not hardware KVM here: the linux tests run in scripts/rig.py" >&2
    # The gdb breakpoint tests need the rig's patched QEMU (scripts/rig-qemu/;
    # the rig runs it whenever it is built, cached in /var/tmp/pyvmm-rig).  Its
    # build takes 4 to 16 minutes on 2 shared cores, past CI's budget: it is
    # opt-in, PYVMM_RIG_QEMU_BUILD=1; otherwise those tests skip, saying so.
    if [ "${PYVMM_RIG_QEMU_BUILD:-}" = 1 ]; then
        bash scripts/rig-qemu/build.sh >/dev/null \
            || echo "test.sh: the rig's patched QEMU didn't build (above): the gdb" \
                    "breakpoint tests will skip" >&2
    elif ! bash scripts/rig-qemu/build.sh --print-path >/dev/null; then
        echo "test.sh: the rig's patched QEMU is not built: the gdb breakpoint tests" \
             "will skip (PYVMM_RIG_QEMU_BUILD=1 builds it)" >&2
    fi
    # The kernel's own gdb scripts (lx-dmesg, lx-ps) need the debug kernel (a
    # ~10 min build, images/out/linux-debug): built under the same opt-in as the
    # patched QEMU, PYVMM_RIG_QEMU_BUILD=1, or by hand; otherwise those tests skip.
    if [ "${PYVMM_RIG_QEMU_BUILD:-}" = 1 ] \
            && bash scripts/rig-qemu/build.sh --print-path >/dev/null 2>&1; then
        bash images/build.sh linux-debug \
            || echo "test.sh: the debug kernel didn't build (above): the lx-dmesg and" \
                    "lx-ps tests will skip" >&2
    fi
    # The rig keeps one host core busy with TCG; the host suite runs beside it
    # on the other, its output kept in a file and shown when it ends.  The rig
    # files that time pyvmm's answers against a bound (hostile, net) wait until
    # the host suite is done, so it can't make them late; the slow tests (the
    # README's first command, which boots a rig of its own) run after the rig.
    mkdir -p images/out
    host_log=images/out/host-suite.log
    $python -m pytest -q -m "not linux and not slow" "$@" >"$host_log" 2>&1 &
    host_pid=$!
    timed=(tests/linux/test_command_mode_hostile.py tests/linux/test_net.py
           tests/linux/test_net_tap.py)
    # A rig session costs ~20 s before its first test (the rig's boot, pytest's
    # start under TCG), and a failure of the rig itself costs a retry of that
    # session's files: the files of a few short tests (under a minute each in
    # the rig) share one session, every other file has its own.  The job
    # directories keep output and any dumps.  pytest's hypothesis plugin is
    # left out in the rig: no linux test uses it, and importing it is 0.6 s of
    # pytest's 0.85 s start on our kvm_pvm host, many times that under TCG.
    short=(tests/linux/test_api.py tests/linux/test_check.py tests/linux/test_cloud.py
           tests/linux/test_rtc.py tests/linux/test_vsock.py)
    untimed=("${short[*]}")
    for file in tests/linux/test_*.py; do
        case " ${timed[*]} ${short[*]} " in *" $file "*) ;; *) untimed+=("$file") ;; esac
    done
    linux=0
    skipped=()   # files whose rig sessions failed on their own (froze), twice
    run_in_rig() {
        local files=$1 job rc start=$SECONDS
        job="images/out/rig-job/$(basename "${files%% *}" .py)"
        rm -rf "$job"
        # shellcheck disable=SC2086  # the files, one word each
        $python scripts/rig.py --job "$job" -- \
            $python -m pytest -q -p no:cacheprovider -p no:hypothesispytest --durations=5 \
                -m linux $files "${@:2}" && rc=0 || rc=$?
        if [ "$rc" -eq 125 ]; then
            echo "test.sh: SKIPPED $files: the rig failed on its own twice (its reason is" \
                 "above, after 'rig: FAILED'); this is not a pyvmm failure" >&2
            skipped+=("$files")
            rc=0
        elif [ "$rc" -eq 126 ]; then
            echo "test.sh: the rig can't run here (see above)" >&2
        fi
        echo "test.sh: $files: rig session(s) took $((SECONDS - start)) s" >&2
        if [ "$rc" -eq 5 ]; then rc=0; fi   # nothing selected in this file
        if [ "$rc" -ne 0 ]; then linux=$rc; fi
    }
    for files in "${untimed[@]}"; do run_in_rig "$files" "$@"; done
    wait "$host_pid" && status=0 || status=$?
    echo "test.sh: the host suite (not linux), run beside the rig:" >&2
    cat "$host_log"
    for file in "${timed[@]}"; do run_in_rig "$file" "$@"; done
    # The rig's freezes come and go: files they kept from running get one
    # more pair of sessions at the end, so a green run has checked them.
    again=("${skipped[@]}")
    skipped=()
    for files in "${again[@]}"; do
        echo "test.sh: $files: once more, after the rig failed on its own" >&2
        run_in_rig "$files" "$@"
    done
    for files in "${skipped[@]}"; do
        echo "test.sh: NOT CHECKED: $files (the rig failed on its own in all four" \
             "sessions)" >&2
    done
    $python -m pytest -q -m "not linux and slow" "$@" && slow=0 || slow=$?
    if [ "$slow" -ne 0 ] && [ "$slow" -ne 5 ]; then status=$slow; fi
fi
if [ "$linux" -eq 5 ]; then linux=0; fi   # no linux test selected by the arguments
if [ "$status" -eq 5 ]; then status=0; fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$linux"
