"""Group commit (issue 21): the server role answers a mitigation PUT only once its change is
fsynced, and the requests one turn of the event loop handled share one fsync of the WAL. The
fsync runs in a worker thread: the loop serves (and commits) meanwhile, and what it answered
then waits for the next fsync.

The role runs in memory (the harness of test_observe_limits: a real CoAP message layer, a
fake connection) on a real SQLite file; fsyncs are counted by the database, not timed, and
held in the worker thread by a gate the test opens."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.dots.mitigation import MitigationStore
from gateway.dots.server import DotsServerCore
from gateway.server.persistence import MitigationDatabase
from gateway.server.role import ServerRole
from tests.unit.server.test_observe_limits import BASE, Client, mitigation

CREATED = 0x41
WAIT = 10.0  # seconds: bound of every wait below (a busy machine)


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def settled(role: ServerRole) -> None:
    """Wait for the group commit to release everything it holds."""
    await until(lambda: role._commit is None and not role._held_sessions
                and not role._held_events)


class GatedFsync:
    """os.fsync that waits in its (worker) thread until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.started.set()
        self.gate.wait(WAIT)
        self._real(fd)


@pytest.fixture
async def role(tmp_path: Path) -> Iterator[ServerRole]:
    database = MitigationDatabase.in_state_dir(tmp_path)
    role = ServerRole(DotsServerCore(MitigationStore()), clock=lambda: 100.0,
                      database=database)
    yield role
    for session in list(role.sessions.values()):
        session.connection_lost("test over")
    database.close()


async def test_an_answer_leaves_after_the_fsync_of_its_change(role: ServerRole) -> None:
    client = Client(role)
    assert client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24")) == []
    assert role.database is not None and role.database.unsynced
    assert role.database.fsyncs == 0
    await settled(role)  # one fsync (in a worker thread), then the answer
    (created,) = client.take()
    assert created.code == CREATED
    assert role.database.fsyncs == 1 and not role.database.unsynced


async def test_requests_of_one_turn_share_one_fsync(role: ServerRole) -> None:
    clients = [Client(role) for _ in range(20)]
    for i, client in enumerate(clients):
        assert client.request(3, (*BASE, f"mid={i + 1}"), mitigation(f"10.0.{i}.0/24")) == []
    assert role.database is not None and role.database.saves == 20
    await settled(role)
    assert [m.code for c in clients for m in c.take()] == [CREATED] * 20
    assert role.database.fsyncs == 1
    # A read needs no fsync: it is answered in its own turn.
    (read,) = clients[0].request(1, (*BASE, "mid=1"))
    assert read.code == 0x45 and role.database.fsyncs == 1


async def test_a_failed_fsync_stops_the_daemon_before_any_answer(
        role: ServerRole, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[str] = []
    role.on_unsynced = stopped.append

    def broken_fsync(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    client = Client(role)
    client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    await until(lambda: bool(stopped))
    assert client.take() == []  # the answer never left
    assert len(stopped) >= 1 and "fsync failed" in stopped[0] and "Input/output" in stopped[0]
    # ``on_unsynced`` stops the process in production; here it returned, and the database
    # still says the save is not durable.
    assert role.database is not None and role.database.unsynced


async def test_the_loop_serves_while_the_fsync_runs_and_answers_wait_for_theirs(
        role: ServerRole, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync runs in a worker thread: a request arriving meanwhile is handled and
    committed at once, but its answer waits for the next fsync (the running one may not
    cover its commit), and the first answer waits for the first. Before: the fsync ran on
    the event loop, which stood still for as long as it took (here: the gate's WAIT, then
    the answer had left before the test could open the gate)."""
    fsync = GatedFsync()
    monkeypatch.setattr(os, "fsync", fsync)
    first, second = Client(role), Client(role)
    assert first.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24")) == []
    began = time.monotonic()
    await until(fsync.started.is_set)  # the first fsync is under way, in its thread
    await asyncio.sleep(0.05)  # the loop is free: this returns while the fsync waits
    assert time.monotonic() - began < WAIT / 2, "the event loop stood still during the fsync"
    assert second.request(3, (*BASE, "mid=2"), mitigation("10.0.1.0/24")) == []
    assert role.database is not None and role.database.saves == 2
    assert first.take() == [] and second.take() == []  # nothing before its fsync
    fsync.gate.set()
    await settled(role)
    assert [m.code for m in first.take()] == [CREATED]
    assert [m.code for m in second.take()] == [CREATED]
    assert role.database.fsyncs == 2 and not role.database.unsynced


async def test_mitigator_commands_wait_for_the_fsync_and_keep_their_order(
        role: ServerRole, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[object] = []
    role.mitigator = commands.append
    fsync = GatedFsync()
    monkeypatch.setattr(os, "fsync", fsync)
    client = Client(role)
    client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    await until(fsync.started.is_set)
    # Committed while the first fsync runs (its apply waits for the second fsync).
    client.request(3, (*BASE, "mid=2"), mitigation("10.0.1.0/24"))
    await asyncio.sleep(0.01)
    assert commands == [] and client.take() == []
    fsync.gate.set()
    await settled(role)
    assert [(type(c).__name__, c.mid) for c in commands] == [("ApplyMitigation", 1),
                                                              ("ApplyMitigation", 2)]
    assert [m.code for m in client.take()] == [CREATED, CREATED]


async def test_stop_makes_held_answers_durable_and_sends_them(role: ServerRole) -> None:
    client = Client(role)
    client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    role.stop()  # before the group commit ran: fsynced on the spot, then sent
    assert [m.code for m in client.take()] == [CREATED]
    assert role.database is not None and not role.database.unsynced
