"""Anycast pieces without netlink: address classification, ExaBGP commands, checks, the
control files, and the manager's order of operations with fake holder and announcer."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from anycast import control
from anycast.addresses import anycast_classifier, host_prefix
from anycast.announce import AnnounceError, ExaBgpAnnouncer, exabgp_lines
from anycast.checks import (
    CheckResult,
    capacity_check,
    command_check,
    predicate_check,
    run_checks,
    upstream_check,
)
from anycast.manager import AnycastManager
from gateway.config import AnycastHealthSettings, AnycastSettings
from gateway.transport.udp import Address

ADDRS = (ipaddress.ip_address("192.0.2.46"), ipaddress.ip_address("2001:db8::4646"))


# --- addresses -------------------------------------------------------------------------------

@pytest.mark.parametrize(("local", "expected"), [
    (Address("192.0.2.46", 4646), True),
    (Address("2001:db8::4646", 4646), True),
    (Address("10.46.1.2", 4646), False),
    (("192.0.2.46", 4646), True),
    (("2001:db8::4646", 4646, 0, 0), True),
    ("192.0.2.46:4646", True),
    ("[2001:db8::4646]:4646", True),
    ("2001:db8::4646", True),
    ("::ffff:192.0.2.46", True),  # an IPv4 client on a dual-stack socket
    (ipaddress.ip_address("2001:db8::1"), False),
    ("not an address", False),
])
def test_is_anycast(local: object, expected: bool) -> None:
    assert anycast_classifier(ADDRS)(local) is expected


def test_is_anycast_answers_the_same_when_it_remembers_and_after_forgetting() -> None:
    # It keeps its answers per local address (asked for every session on each look); the
    # store is bounded, so many addresses wrap it around.
    is_anycast = anycast_classifier(ADDRS)
    many = [Address(f"10.{i // 256}.{i % 256}.1", 4646) for i in range(600)]
    for _ in range(2):
        assert not any(is_anycast(local) for local in many)
        assert is_anycast(Address("192.0.2.46", 4646)) and is_anycast(("192.0.2.46", 4646))


def test_host_prefix() -> None:
    assert [host_prefix(a) for a in ADDRS] == ["192.0.2.46/32", "2001:db8::4646/128"]


# --- ExaBGP ----------------------------------------------------------------------------------

def test_exabgp_lines() -> None:
    assert exabgp_lines("announce", ADDRS) == [
        "announce route 192.0.2.46/32 next-hop self\n",
        "announce route 2001:db8::4646/128 next-hop self\n"]
    assert exabgp_lines("withdraw", ADDRS[:1]) == [
        "withdraw route 192.0.2.46/32 next-hop self\n"]
    with pytest.raises(ValueError):
        exabgp_lines("flap", ADDRS)


async def test_exabgp_announcer_writes_whole_commands() -> None:
    written: list[bytes] = []
    announcer = ExaBgpAnnouncer(ADDRS, written.append)
    await announcer.announce()
    await announcer.withdraw()
    assert b"".join(written).decode().splitlines() == [
        "announce route 192.0.2.46/32 next-hop self",
        "announce route 2001:db8::4646/128 next-hop self",
        "withdraw route 192.0.2.46/32 next-hop self",
        "withdraw route 2001:db8::4646/128 next-hop self"]


async def test_exabgp_announcer_reports_a_closed_pipe() -> None:
    def broken(_data: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(AnnounceError, match="Broken pipe"):
        await ExaBgpAnnouncer(ADDRS, broken).announce()


async def test_exabgp_announcer_drains_acknowledgements() -> None:
    read_fd, write_fd = os.pipe()
    announcer = ExaBgpAnnouncer(ADDRS, lambda _data: None, ack_fd=read_fd)
    try:
        announcer._start_reading()
        for _ in range(4):  # 160 kB in all: more than a pipe holds unread
            os.write(write_fd, b"done\n" * 8000)
            for _ in range(20):
                await asyncio.sleep(0.005)
        os.close(write_fd)
        write_fd = -1
        for _ in range(50):
            if not announcer._reading:
                break
            await asyncio.sleep(0.01)
        assert not announcer._reading  # EOF seen: ExaBGP is gone
    finally:
        await announcer.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


# --- checks ----------------------------------------------------------------------------------

async def test_predicate_capacity_and_upstream_checks() -> None:
    results = await run_checks([
        predicate_check("up", lambda: True),
        predicate_check("down", lambda: (False, "why")),
        capacity_check(lambda: 9, 10),
        capacity_check(lambda: 10, 10),
        upstream_check(True, None),
        upstream_check(False, lambda: 0),
        upstream_check(False, lambda: 2),
    ])
    assert [r.ok for r in results] == [True, False, True, False, True, False, True]
    assert results[1].detail == "why" and results[3].detail == "10 of 10 sessions"


async def test_command_check_exit_status_and_timeout(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    check = command_check(f"test ! -e {flag}", 2.0)
    assert (await check()).ok
    flag.touch()
    failed = await check()
    assert not failed.ok and failed.detail == "exit status 1"
    noisy = await command_check(f"{sys.executable} -c \"import sys; sys.exit('sick')\"", 5.0)()
    assert not noisy.ok and noisy.detail == "exit status 1: sick"
    slow = await command_check("sleep 5", 0.2)()
    assert not slow.ok and "timed out" in slow.detail
    missing = await command_check("/nonexistent/check", 1.0)()
    assert not missing.ok and "cannot run" in missing.detail


async def test_a_check_that_raises_is_a_failed_check() -> None:
    async def broken() -> CheckResult:
        raise RuntimeError("bug")

    results = await run_checks([broken, predicate_check("ok", lambda: True)])
    assert [r.ok for r in results] == [False, True] and "bug" in results[0].detail


# --- control files ---------------------------------------------------------------------------

@pytest.fixture
def we_are_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pid checks look for "gateway" in /proc/PID/cmdline; pytest's has none."""
    monkeypatch.setattr(control, "is_gateway", lambda pid: pid == os.getpid())


def test_pid_file_and_state_round_trip(tmp_path: Path, we_are_the_gateway: None) -> None:
    with pytest.raises(control.ControlError, match="no daemon"):
        control.running_pid(tmp_path)
    control.write_pid_file(tmp_path)
    assert control.running_pid(tmp_path) == os.getpid()
    control.write_state(tmp_path, {"state": "announced"})
    assert control.read_state(tmp_path) == {"state": "announced"}
    control.remove_pid_file(tmp_path)
    assert not control.pid_path(tmp_path).exists()


def test_a_stale_pid_file_is_refused(tmp_path: Path) -> None:
    control.pid_path(tmp_path).write_text("999999999\n")
    with pytest.raises(control.ControlError, match="not a running dots-gateway"):
        control.request_drain(tmp_path)


def test_missing_state_is_explained(tmp_path: Path) -> None:
    with pytest.raises(control.ControlError, match="no anycast state"):
        control.read_state(tmp_path)


# --- manager ---------------------------------------------------------------------------------

class FakeHolder:
    interface = "anycast0"
    repairs = 0

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.healthy = False

    async def start(self) -> None:
        self.healthy = True
        self.log.append("addresses up")

    async def close(self) -> None:
        self.healthy = False
        self.log.append("addresses removed")


class FakeAnnouncer:
    name = "fake"

    def __init__(self, log: list[str], fail: int = 0) -> None:
        self.log = log
        self.fail = fail  # this many calls fail first

    async def _call(self, what: str) -> None:
        if self.fail:
            self.fail -= 1
            raise AnnounceError("pipe busy")
        self.log.append(what)

    async def announce(self) -> None:
        await self._call("announce")

    async def withdraw(self) -> None:
        await self._call("withdraw")

    async def close(self) -> None:
        self.log.append("announcer closed")


def make_manager(tmp_path: Path, log: list[str], **health: Any) -> AnycastManager:
    settings = AnycastSettings(
        enabled=True, addresses=ADDRS, grace=Decimal("0.2"),
        health=dataclasses.replace(AnycastHealthSettings(), interval=Decimal("0.01"),
                                   rise=2, fall=2, hold_down=Decimal("0.1"), **health))
    return AnycastManager(settings, state_dir=tmp_path, holder=FakeHolder(log),  # type: ignore[arg-type]
                          announcer=FakeAnnouncer(log))


async def wait_until(condition: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


async def test_manager_withdraws_first_announces_last_and_drains(
        tmp_path: Path, we_are_the_gateway: None) -> None:
    log: list[str] = []
    healthy = {"ok": True}
    manager = make_manager(tmp_path, log)
    hooks: list[float] = []
    manager.on_drain.append(hooks.append)
    await manager.prepare()
    assert log == ["addresses up", "withdraw"]  # a crashed predecessor's route is cleared
    assert control.running_pid(tmp_path) == os.getpid()
    manager.start([predicate_check("fake", lambda: healthy["ok"])])
    await wait_until(lambda: "announce" in log)
    assert json.loads(control.state_path(tmp_path).read_text())["route"] == "announced"
    healthy["ok"] = False
    await wait_until(lambda: log[-1] == "withdraw")
    healthy["ok"] = True
    await wait_until(lambda: log.count("announce") == 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await manager.drain()
    assert loop.time() - started >= 0.19  # the grace period
    assert log[-1] == "withdraw" and len(hooks) == 1
    await manager.close()
    assert log[-2:] == ["announcer closed", "addresses removed"]
    assert not control.pid_path(tmp_path).exists()
    assert control.read_state(tmp_path)["state"] == "stopped"


async def test_drain_can_be_cut_short(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, [])
    manager.grace = 30.0
    await manager.prepare()
    interrupted = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, interrupted.set)
    await asyncio.wait_for(manager.drain(interrupted), 2.0)
    await manager.drain()  # a second drain does nothing (and does not wait again)
    await manager.close()


async def test_a_failed_withdraw_is_retried(tmp_path: Path) -> None:
    log: list[str] = []
    manager = make_manager(tmp_path, log)
    await manager.prepare()
    manager.start([predicate_check("fake", lambda: True)])
    await wait_until(lambda: "announce" in log)
    manager.announcer = FakeAnnouncer(log, fail=3)
    healthy = False
    manager.checks[0] = predicate_check("fake", lambda: healthy)
    await wait_until(lambda: log[-1] == "withdraw")
    assert manager.snapshot()["route"] == "withdrawn"
    await manager.close()


async def test_session_split_and_state_file(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, [])
    manager.session_split = lambda: (3, 4)
    await manager.prepare()
    assert control.read_state(tmp_path)["sessions"] == {"anycast": 3, "unicast": 4}
    await manager.close()


async def test_exabgp_withdraw_after_a_broken_pipe_is_done_and_announce_fails() -> None:
    calls: list[bytes] = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise BrokenPipeError(32, "Broken pipe")

    announcer = ExaBgpAnnouncer(ADDRS, broken)
    await announcer.withdraw()  # ExaBGP is gone: its sessions took the route already
    await announcer.withdraw()  # and nothing more is written or logged
    assert announcer.gone and len(calls) == 1
    with pytest.raises(AnnounceError, match="gone"):
        await announcer.announce()
