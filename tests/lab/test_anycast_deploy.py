"""The shipped systemd units (deploy/systemd/): ``systemd-analyze verify`` when it exists
(else a parse check), consistency with the example configuration, and, in a network
namespace (root), the daemon run the way the unit runs it: an unprivileged user with only
the unit's ambient capabilities, SIGHUP reloads, SIGTERM drains and exits 0, and after a
SIGKILL the unit's ``ExecStopPost`` crash guard removes the routes and the holder link.

The static checks need neither root nor systemd running (systemd-analyze reads files only).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from tests.lab.netns import Lab, cleanup_stale, require_root

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "dots-gateway.service"
EXABGP_DROP_IN = REPO / "deploy" / "systemd" / "exabgp.service.d" / "dots-gateway.conf"
EXAMPLE = REPO / "deploy" / "dots-gateway.example.toml"
SHIPPED_BINARY = "/usr/bin/dots-gateway"
NOBODY = 65534  # stands in for the unit's dots-gateway user

Unit = dict[str, dict[str, list[str]]]


def read_unit(text: str) -> Unit:
    """systemd's syntax as far as our files use it: sections, ``Key=value`` lines (a key may
    repeat: each value is kept), ``#``/``;`` comments, no line continuations."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"line {number}: {raw!r} outside a section"
        assert "=" in line and not line.endswith("\\"), f"line {number}: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def command(value: str) -> list[str]:
    """An Exec*= value without systemd's prefixes (``-`` ignore failure, ``+`` full
    privileges, ...)."""
    return shlex.split(value.lstrip("-+!@:"))


def installed_gateway() -> str:
    beside = Path(sys.executable).parent / "dots-gateway"
    found = str(beside) if beside.exists() else shutil.which("dots-gateway")
    if found is None:
        pytest.skip("dots-gateway is not installed (pip install -e .)")
    return found


def verify(unit_path: Path) -> None:
    """``systemd-analyze verify``: unknown keys and bad values are only warnings there
    (exit status 0), so any output fails the test."""
    result = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- static ----------------------------------------------------------------------------------

def test_the_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    unit = read_unit(text)  # the parse check runs everywhere
    assert {"Unit", "Service", "Install"} <= unit.keys()
    if shutil.which("systemd-analyze") is None:
        return
    # verify wants every Exec binary to exist: point ExecStart at the installed entry point.
    assert SHIPPED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(SHIPPED_BINARY, installed_gateway()))
    verify(copy)


def test_the_exabgp_drop_in_verifies(tmp_path: Path) -> None:
    drop_in = read_unit(EXABGP_DROP_IN.read_text())
    assert set(drop_in) == {"Service"}
    if shutil.which("systemd-analyze") is None:
        return
    debian = Path("/lib/systemd/system/exabgp.service")
    unit = tmp_path / "exabgp.service"
    if debian.exists() and shutil.which("exabgp"):
        shutil.copy(debian, unit)
    else:  # a stand-in: what is verified here is the drop-in
        unit.write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    (tmp_path / "exabgp.service.d").mkdir()
    shutil.copy(EXABGP_DROP_IN, tmp_path / "exabgp.service.d" / EXABGP_DROP_IN.name)
    verify(unit)


def test_the_unit_matches_the_daemon_and_the_example_configuration() -> None:
    service = read_unit(UNIT.read_text())["Service"]
    example = tomllib.loads(EXAMPLE.read_text())
    anycast = example["anycast"]
    assert service["Type"] == ["exec"]  # no sd_notify in the daemon
    start = command(service["ExecStart"][0])
    assert start[:2] == [SHIPPED_BINARY, "run"]
    state_dir = example["general"]["state_dir"]
    assert start[start.index("--state-dir") + 1] == state_dir
    assert service["StateDirectory"] == [Path(state_dir).name]
    assert state_dir.startswith("/var/lib/")
    # reload = SIGHUP (credentials); stop = SIGTERM (drain) with time for the grace period
    assert command(service["ExecReload"][0]) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
    assert int(service["TimeoutStopSec"][0]) >= float(anycast["grace"]) + 10
    assert service["Restart"] == ["on-failure"]  # a drained daemon exits 0: it stays out
    # not root: capabilities instead
    assert service["User"] != ["root"]
    assert "CAP_NET_ADMIN" in service["AmbientCapabilities"][0].split()
    assert set(service["AmbientCapabilities"][0].split()) <= set(
        service["CapabilityBoundingSet"][0].split())
    assert "MemoryDenyWriteExecute" not in service  # cffi callbacks need W+X memory
    assert "AF_NETLINK" in service["RestrictAddressFamilies"][0].split()
    # the crash guard uses the example's table and holder interface
    guard = [command(v) for v in service["ExecStopPost"]]
    table = str(anycast["table"])
    assert ["/usr/sbin/ip", "-4", "route", "flush", "table", table] in guard
    assert ["/usr/sbin/ip", "-6", "route", "flush", "table", table] in guard
    assert ["/usr/sbin/ip", "link", "delete", anycast["interface"]] in guard
    assert all(v.startswith("-") for v in service["ExecStopPost"])  # after a clean stop: no-op


# --- the daemon as the unit runs it -----------------------------------------------------------

@pytest.fixture
def ns() -> Iterator[tuple[Lab, str]]:
    why = require_root() or (None if shutil.which("setpriv") else "setpriv (util-linux) missing")
    why = why or unreadable_by_the_unit_user()
    if why:
        pytest.skip(why)
    cleanup_stale()
    with Lab() as lab:
        lab.dir.chmod(0o755)  # the unprivileged daemon reads its files below it
        yield lab, lab.namespace("unit")


def unreadable_by_the_unit_user() -> str | None:
    """Why the unprivileged daemon could not even start from this checkout, or None: a
    checkout below a 0700 directory (``mktemp -d``, /root) is closed to it."""
    needed = [["test", "-x", installed_gateway()],
              ["test", "-r", str(REPO / "gateway" / "__init__.py")]]
    for check in needed:
        if subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *check], timeout=10).returncode != 0:
            return (f"user {NOBODY} cannot reach {check[-1]}: the checkout sits below a "
                    "directory closed to other users")
    return None


def as_the_unit(ns: str, argv: list[str]) -> list[str]:
    """``argv`` in ``ns`` as an unprivileged user holding the unit's ambient capabilities
    only (what systemd's User= + AmbientCapabilities= give the process)."""
    service = read_unit(UNIT.read_text())["Service"]
    caps = ",".join("+" + c.removeprefix("CAP_").lower()
                    for c in service["AmbientCapabilities"][0].split())
    return ["ip", "netns", "exec", ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
            "--clear-groups", f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            "--no-new-privs", *argv]


def show(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True,
                          timeout=10).stdout


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.root
@pytest.mark.lab
def test_unprivileged_with_the_units_capabilities_and_the_crash_guard(
        ns: tuple[Lab, str]) -> None:
    lab, name = ns
    example = tomllib.loads(EXAMPLE.read_text())["anycast"]
    interface, table = example["interface"], example["table"]
    pki = lab.dir / "pki"
    init_dev_pki(pki, hostnames=("localhost",), addresses=("192.0.2.46",))
    state = lab.dir / "state"
    state.mkdir()
    config = lab.dir / "gateway.toml"
    config.write_text(f"""\
[server]
addresses = ["192.0.2.46", "2001:db8::4646"]
port = 4646
[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"
[anycast]
enabled = true
addresses = ["192.0.2.46", "2001:db8::4646"]
interface = "{interface}"
interface_kind = "ifb"
table = {table}
grace = 0.5
[anycast.health]
interval = 0.1
rise = 2
""")
    for path in (pki, state, *pki.iterdir(), config):
        os.chown(path, NOBODY, NOBODY)
    gateway = installed_gateway()
    service = read_unit(UNIT.read_text())["Service"]
    start = [gateway if a == SHIPPED_BINARY else a for a in command(service["ExecStart"][0])]
    start = [a if a != "/etc/dots-gateway/dots-gateway.toml" else str(config) for a in start]
    start[start.index("--state-dir") + 1] = str(state)
    routes = ("route", "show", "table", str(table))

    def run_daemon(log: str) -> subprocess.Popen[bytes]:
        process = lab.popen(name, as_the_unit(name, start)[4:], log)  # popen adds netns exec

        def announced() -> bool:
            assert process.poll() is None, "the daemon exited:\n" + lab.log(log)
            return "192.0.2.46 dev" in show(name, *routes)

        wait_for(announced, 15.0, "the table route (announced after the rise)")
        return process

    # A clean life: reload on SIGHUP, drain and exit 0 on SIGTERM, everything removed.
    daemon = run_daemon("first.log")
    assert "192.0.2.46/32" in show(name, "addr", "show", interface)
    reload = command(service["ExecReload"][0])
    assert reload[:2] == ["/bin/kill", "-HUP"]
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded from" in lab.log("first.log"), 5.0, "the reload")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0, lab.log("first.log")
    assert "SIGTERM: withdrawing the anycast route" in lab.log("first.log")
    assert show(name, *routes) == "" and interface not in show(name, "link", "show")

    # A crash leaves the routes behind; the unit's ExecStopPost removes them.
    daemon = run_daemon("second.log")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(5)
    assert "192.0.2.46 dev" in show(name, *routes)  # still announced: the black hole
    for value in service["ExecStopPost"]:
        subprocess.run(as_the_unit(name, command(value)), check=not value.startswith("-"),
                       capture_output=True, timeout=10)
    assert show(name, *routes) == "" and show(name, "-6", *routes) == ""
    assert interface not in show(name, "link", "show")
