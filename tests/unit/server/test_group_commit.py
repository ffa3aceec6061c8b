"""Group commit (issue 21): the server role answers a mitigation PUT only once its change is
fsynced, and the requests one turn of the event loop handled share one fsync of the WAL.

The role runs in memory (the harness of test_observe_limits: a real CoAP message layer, a
fake connection) on a real SQLite file; fsyncs are counted by the database, not timed."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dots.mitigation import MitigationStore
from gateway.dots.server import DotsServerCore
from gateway.server.persistence import MitigationDatabase
from gateway.server.role import ServerRole
from tests.unit.server.test_observe_limits import BASE, Client, mitigation

CREATED = 0x41


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
    await asyncio.sleep(0)  # the next turn of the loop: one fsync, then the answer
    (created,) = client.take()
    assert created.code == CREATED
    assert role.database.fsyncs == 1 and not role.database.unsynced


async def test_requests_of_one_turn_share_one_fsync(role: ServerRole) -> None:
    clients = [Client(role) for _ in range(20)]
    for i, client in enumerate(clients):
        assert client.request(3, (*BASE, f"mid={i + 1}"), mitigation(f"10.0.{i}.0/24")) == []
    assert role.database is not None and role.database.saves == 20
    await asyncio.sleep(0)
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
    await asyncio.sleep(0)
    assert len(stopped) >= 1 and "fsync failed" in stopped[0] and "Input/output" in stopped[0]
    # ``on_unsynced`` stops the process in production; here it returned, and the database
    # still says the save is not durable.
    assert role.database is not None and role.database.unsynced
