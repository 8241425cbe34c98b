"""--net / [[net]] / nets=: one schema, QEMU's hostfwd spelling, one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pyvmm.cli.main import main
from pyvmm.config.machine import config_from_options
from pyvmm.config.network import Forward, NetConfig, parse_net
from pyvmm.config.toml_file import load_config_file
from pyvmm.errors import ConfigError
from pyvmm.vmm.virtio_slots import plan_virtio_slots


def test_user_with_forwards_and_a_mac() -> None:
    net = parse_net("user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53,"
                    "mac=52:54:00:AB:CD:EF")
    assert net == NetConfig("user", ("tcp::8080-:80", "udp:127.0.0.1:5353-:53"),
                            "52:54:00:AB:CD:EF")
    assert net.forwards == (Forward("tcp", "", 8080, 80), Forward("udp", "127.0.0.1", 5353, 53))
    assert [f.passt_spec() for f in net.forwards] == ["8080:80", "127.0.0.1/5353:53"]
    assert parse_net("user,hostfwd=tcp:2222-:22").forwards == (Forward("tcp", "", 2222, 22),)


@pytest.mark.parametrize("spec, message", [
    ("slirp", "'slirp' is not a network back end (use user, tap=NAME or none)"),
    ("user=x", "'user=x' is not a network back end"),
    ("tap", "tap needs the interface's name: tap=NAME"),
    ("tap,vhost=on", "tap needs the interface's name"),
    ("tap=a/b", "ifname=a/b: holds '/'"),
    ("tap=abcdefghijklmnop", "ifname=abcdefghijklmnop: longer than 15 bytes"),
    ("tap=tap0,vhost=maybe", "vhost=maybe: choose one of auto, on, off"),
    ("tap=tap0,hostfwd=tcp::80-:80", "hostfwd= is for user"),
    ("tap=tap0,ifname=tap1", "unknown option 'ifname=tap1'"),
    ("user,vhost=on", "ifname= and vhost= are for tap"),
    ("user,hostfwd=tcp::80", "use tcp::HOSTPORT-:GUESTPORT"),
    ("user,hostfwd=sctp::80-:80", "use tcp::HOSTPORT-:GUESTPORT"),
    ("user,hostfwd=tcp::70000-:80", "ports are 1-65535"),
    ("user,hostfwd=tcp::80-10.0.2.15:80", "leave GUESTADDR out"),
    ("user,mac=52:54:00:12:34", "six hex pairs"),
    ("user,mac=01:00:5e:00:00:01", "multicast"),
    ("user,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02", "unknown option"),
    ("user,ifname=tap0", "ifname= and vhost= are for tap"),
    ("user,model=e1000", "unknown option 'model=e1000' (hostfwd=, mac=, ifname=, vhost=)"),
    ("none,hostfwd=tcp::80-:80", "none takes no other key"),
])
def test_bad_specs_are_one_line_exit_2(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^--net " + repr(spec).replace("[", r"\[")
                       .replace("(", r"\(").replace(".", r"\.") + ": .*" +
                       message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_net(spec)
    result = CliRunner().invoke(main, ["config", "show", "-k", "k", "--net", spec])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_the_three_front_ends_agree(tmp_path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('kernel = "k"\n[[net]]\ntype = "user"\nhostfwd = ["tcp::8080-:80"]\n'
                    '[[net]]\ntype = "user"\nmac = "52:54:00:00:00:02"\n')
    from_file = load_config_file(str(path))["nets"]
    from_api = config_from_options(kernel="k", nets=[
        {"type": "user", "hostfwd": ["tcp::8080-:80"]}, "user,mac=52:54:00:00:00:02"]).nets
    assert from_file == from_api == (NetConfig("user", ("tcp::8080-:80",)),
                                     NetConfig("user", (), "52:54:00:00:00:02"))
    result = CliRunner().invoke(main, ["config", "show", "-k", "k", "--net",
                                       "user,hostfwd=tcp::8080-:80", "--net", "none"])
    assert result.exit_code == 0 and "type=user,hostfwd=tcp::8080-:80" in result.output


def test_tap_with_qemus_spelling_too() -> None:
    assert parse_net("tap=tap0") == NetConfig("tap", ifname="tap0")
    assert parse_net("tap,ifname=tap0,vhost=off,mac=52:54:00:00:00:09") == \
        NetConfig("tap", (), "52:54:00:00:00:09", "tap0", "off")
    config = config_from_options(kernel="k", nets=[{"type": "tap", "ifname": "tap0",
                                                     "vhost": "on"}, "tap=tap1"])
    assert config.nets == (NetConfig("tap", ifname="tap0", vhost="on"),
                           NetConfig("tap", ifname="tap1"))
    result = CliRunner().invoke(main, ["config", "show", "-k", "k", "--net", "tap=tap0"])
    assert result.exit_code == 0 and "type=tap,ifname=tap0,vhost=auto" in result.output


def test_a_bad_key_in_a_file_names_its_line(tmp_path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('kernel = "k"\n[[net]]\ntype = "user"\nhostfwd = ["tcp::1-2"]\n')
    with pytest.raises(ConfigError, match=r"m.toml:4: hostfwd: .*use tcp::HOSTPORT"):
        load_config_file(str(path))


def test_nics_get_slots_after_disks_and_shares_none_gets_none() -> None:
    config = config_from_options(kernel="k", nets=["user", "none", "user"],
                                 drives=["a.img"])
    assert [slot.kind for slot in plan_virtio_slots(config)] == ["block", "net", "net",
                                                                 "console"]


def test_a_nics_default_mac_is_qemus_for_user_and_its_taps_own_for_tap() -> None:
    assert parse_net("user").guest_mac(0).hex(":") == "52:54:00:12:34:56"
    assert parse_net("user").guest_mac(1).hex(":") == "52:54:00:12:34:57"
    assert parse_net("user,mac=52:54:00:AB:CD:EF").guest_mac(3).hex(":") == "52:54:00:ab:cd:ef"
    tap0, tap1 = parse_net("tap=tap0").guest_mac(0), parse_net("tap=tap1").guest_mac(0)
    # Stable for one tap (run after run), different between the taps of one bridge.
    assert tap0 == parse_net("tap=tap0,vhost=off").guest_mac(5) and tap0 != tap1
    assert tap0[:3] == tap1[:3] == bytes.fromhex("525400")
    assert parse_net("tap=tap0,mac=02:00:00:00:00:01").guest_mac(0) == bytes.fromhex("020000000001")
