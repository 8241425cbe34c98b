"""Command mode without a guest: the job script /init sources, status parsing, the CLI's
one-line failures."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from click.testing import CliRunner

from pyvmm.command import run as command
from pyvmm.cli.main import main
from pyvmm.config.machine import MachineConfig
from pyvmm.config.tables import ShareConfig
from pyvmm.command.initramfs.build import Job

WEIRD = ("printf", "%s|", "two words", "it's", 'say "hi"', "$HOME", "a\nb", "*", "")


def run_job(job: Job, tmp_path, function: str) -> list[str]:
    """Source the job script in sh with chroot/mount replaced by argument printers."""
    script = tmp_path / "job.sh"
    script.write_text(job.script())
    probe = ('chroot() { for a; do printf "%s\\0" "$a"; done; }; '
             'mount() { for a; do printf "%s\\0" "$a"; done; }; '
             f'fail() {{ echo FAIL; }}; . {script}; {function}')
    out = subprocess.run(["sh", "-c", probe], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def test_the_command_reaches_chroot_word_for_word(tmp_path) -> None:
    job = Job(WEIRD, "/home/me/dir with space", 1000, 1000, (27, 100),
              (("PATH", "/usr/bin:/bin"), ("HOME", "/home/me")), rw=False,
              env_binary="/usr/bin/env", setpriv_binary="/usr/bin/setpriv")
    args = run_job(job, tmp_path, "pyvmm_run")
    # In a session of its own (busybox's setsid: the guest's / may have none).
    assert args[:8] == ["/newroot", "/run/pyvmm/busybox", "setsid", "/run/pyvmm/busybox", "sh",
                        "-c", 'cd "$1" || exit 1; shift; exec "$@"', "sh"]
    assert args[8] == "/home/me/dir with space"
    # By absolute path: busybox's sh would run its own setpriv applet for "setpriv".
    assert args[9:14] == ["/usr/bin/setpriv", "--reuid=1000", "--regid=1000",
                          "--groups=27,100", "--"]
    assert args[14:16] == ["/usr/bin/env", "-i"]
    assert args[16:18] == ["PATH=/usr/bin:/bin", "HOME=/home/me"]
    assert tuple(args[18:]) == WEIRD


def test_the_exec_agent_runs_commands_as_the_command_runs(tmp_path) -> None:
    """With a vsock, /init's pyvmm_agent starts agent.py with the same prefix as CMD's."""
    job = Job(("main",), "/work", 1000, 1000, (), (("PATH", "/bin"),), rw=False,
              agent_python="/usr/bin/python3", agent_port=28793)
    run = run_job(job, tmp_path, "pyvmm_run")
    agent = run_job(job, tmp_path, "pyvmm_agent")
    assert agent[:6] == ["/newroot", "/usr/bin/python3", "-I", "-S", "/run/pyvmm/agent.py",
                         "28793"]
    assert agent[6:] == run[1:-1]  # the user, directory, environment; the argv comes later
    assert run_job(Job(("main",), "/", 0, 0, (), (), rw=False), tmp_path, "pyvmm_agent") == []


def test_the_job_names_the_guest_and_who_owns_its_streams(tmp_path) -> None:
    job = Job(("true",), "/", 1000, 100, (), (), rw=False, hostname="it's a host")
    values = run_job(job, tmp_path, 'printf "%s\\0" "$PYVMM_UID" "$PYVMM_GID" "$PYVMM_HOSTNAME"')
    assert values == ["1000", "100", "it's a host"]


def test_root_keeps_its_privileges_and_shares_mount_at_their_paths(tmp_path) -> None:
    job = Job(("true",), "/", 0, 0, (), (), rw=True,
              mounts=(("share0", "/srv/a b", True), ("share1", "/data", False)))
    assert not any("setpriv" in arg for arg in run_job(job, tmp_path, "pyvmm_run"))
    assert run_job(job, tmp_path, "pyvmm_mount_shares") == [
        "-t", "virtiofs", "-o", "ro", "share0", "/newroot/srv/a b",
        "-t", "virtiofs", "share1", "/newroot/data"]
    assert "PYVMM_RW=1" in job.script()


def test_the_status_port_gives_the_status_or_inits_error() -> None:
    streams = command.Streams()
    assert streams.outcome() == (None, None)
    streams.status += b"status 7\n"
    assert streams.outcome() == (7, None)
    streams = command.Streams()
    streams.status += b"error the kernel has no virtio-fs\n"
    assert streams.outcome() == (None, "the kernel has no virtio-fs")


def test_the_kernel_log_explains_an_early_stop() -> None:
    console = command.LogConsole(verbose=False)
    console.write(b"[ 1.0] boot\r\n[ 2.0] Kernel panic - not syncing: sysrq triggered crash\r\n")
    assert console.reason() == "Kernel panic - not syncing: sysrq triggered crash"
    console.write(b"x" * (command.LOG_LIMIT * 2))
    assert len(console.log) == command.LOG_LIMIT
    console.close()


def test_command_config_puts_the_root_share_first_and_drops_hvc0() -> None:
    config = MachineConfig(kernel="k", shares=(ShareConfig("/srv", "share0", True),))
    machine = command.command_config(config, rw=False, initrd="/tmp/i", user_append="nokaslr")
    assert machine.shares[0] == ShareConfig("/", "pyvmm.root", readonly=True)
    assert machine.shares[1:] == config.shares
    assert machine.stdio_ports and not machine.virtio_console
    assert machine.cmdline.endswith(" nokaslr") and "rdinit=/init" in machine.cmdline
    assert command.command_config(config, True, "/tmp/i", None).shares[0].readonly is False


@pytest.mark.parametrize("args,message", [
    (["--initrd", "x"], "command mode builds its own initramfs"),
    (["--share", "/does/not/exist"], "--share /does/not/exist: does not exist"),
])
def test_bad_input_is_255_and_one_line(tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.setattr("pyvmm.kvm.system.is_pvm_host", lambda: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\0" * 1024)
    result = CliRunner().invoke(main, ["run", "-k", str(kernel), *args, "--", "true"])
    assert result.exit_code == 255
    assert result.output.count("\n") == 1 and message in result.output


def test_a_kvm_pvm_host_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("pyvmm.kvm.system.is_pvm_host", lambda: True)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\0" * 1024)
    result = CliRunner().invoke(main, ["run", "-k", str(kernel), "--", "true"])
    assert result.exit_code == 255
    assert result.output.count("\n") == 1
    assert result.output.startswith("pyvmm: error: command mode needs hardware KVM: /dev/kvm "
                                    "here is kvm_pvm")
    assert "can't run its user space" in result.output and "scripts/rig.py" in result.output


def test_no_virtiofsd_names_the_package(tmp_path, monkeypatch) -> None:
    from pyvmm.errors import HostError
    from pyvmm.vhost.virtiofsd import find_virtiofsd

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("pyvmm.vhost.virtiofsd.QEMU_VIRTIOFSD", (str(tmp_path / "none"),))
    monkeypatch.delenv("PYVMM_VIRTIOFSD", raising=False)
    with pytest.raises(HostError, match="qemu-system-common"):
        find_virtiofsd()


def test_make_job_carries_the_callers_identity(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERM", "xterm-test")
    job = command.make_job(("id",), rw=False, shares=())
    assert (job.cwd, job.uid, job.gid) == (str(tmp_path), os.geteuid(), os.getegid())
    assert os.path.isabs(job.env_binary) and os.access(job.env_binary, os.X_OK)
    assert ("TERM", "xterm-test") in job.env
    assert job.hostname == socket.gethostname()


def test_user_option_takes_the_users_identity_and_home() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    job = command.make_job(("id",), rw=False, shares=(), user="nobody")
    assert (job.uid, job.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert ("HOME", nobody.pw_dir) in job.env and ("USER", "nobody") in job.env
    job = command.make_job(("id",), rw=False, shares=(), user="4242:4243")
    assert (job.uid, job.gid, job.groups) == (4242, 4243, ())
    from pyvmm.errors import ConfigError
    with pytest.raises(ConfigError, match="no such user"):
        command.make_job(("id",), rw=False, shares=(), user="no-such-user-here")


RELAY_HARNESS = r'''
port_dir=$1
fail() { echo "FAIL $*" >&2; exit 99; }
pyvmm_run() { busybox setsid /usr/bin/setpriv --reuid="$PYVMM_UID" --regid="$PYVMM_GID" \
                  --clear-groups -- sh -c "$TEST_COMMAND" 3>&-; }
exec 3>"$port_dir/status"
. "$STREAMS_SH"
run_relayed "$port_dir/stdin" "$port_dir/stdout" "$port_dir/stderr"
echo "status $?" >&3
'''


def run_relayed(tmp_path, command_line: str, stdin: bytes, uid: int = 65534) -> \
        tuple[bytes, bytes, bytes]:
    """streams.sh's run_relayed as PID 1 of a PID namespace (its clean-up kills what
    it finds there), with files for the ports: (stdout, stderr, status port)."""
    import shutil
    from importlib import resources

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("busybox"):
        pytest.skip("needs root, unshare and busybox")
    streams = resources.files("pyvmm.command.initramfs").joinpath("streams.sh")
    (tmp_path / "stdin").write_bytes(stdin)
    tmp_path.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYVMM_UID": str(uid), "PYVMM_GID": str(uid),
           "TEST_COMMAND": command_line, "STREAMS_SH": str(streams)}
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "busybox", "sh", "-c",
                           RELAY_HARNESS, "sh", str(tmp_path)],
                          env=env, capture_output=True, timeout=60)
    if proc.returncode != 0 and b"Operation not permitted" in proc.stderr:
        pytest.skip("no PID namespaces here")
    assert proc.returncode == 0, proc.stderr
    return tuple((tmp_path / name).read_bytes() for name in ("stdout", "stderr", "status"))


def test_the_relayed_streams_are_byte_exact_apart_and_reopenable(tmp_path) -> None:
    data = os.urandom(3 << 20)
    stdout, stderr, status = run_relayed(
        tmp_path, "cat; echo x >/dev/stdout; exec 3>/dev/stderr; echo y >&3; "
                  "cat /dev/stdin; cat /dev/fd/0; readlink /proc/self/fd/0 | cut -c1-5; "
                  "printf 'end\\0' >&2; exit 5", data)
    # Opened again after its end, stdin gives end of file at once, as a pipe does.
    assert stdout == data + b"x\npipe:\n"
    assert stderr == b"y\nend\0"
    assert status == b"status 5\n"


def test_what_the_command_leaves_behind_is_stopped_after_its_output_is_out(tmp_path) -> None:
    import time

    started = time.monotonic()
    stdout, stderr, status = run_relayed(
        # `kill 0` (its own session's group: the relays are not in it) ends the first;
        # the second ignores it and holds stdout and stderr.
        tmp_path, "(sleep 1000; echo late) & (trap '' TERM; exec sleep 1000) 2>&1 & "
                  "trap '' TERM; kill 0; echo out; echo err >&2", b"")
    assert (stdout, stderr, status) == (b"out\n", b"err\n", b"status 0\n")
    assert time.monotonic() - started < 20
