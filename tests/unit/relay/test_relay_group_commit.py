"""Group commit of the relay table (issue 21): ``RelayDatabase.durable()`` is a barrier that
concurrent relayed requests share, its fsync runs in a worker thread, and a failed fsync is
never reported as durable.

A real SQLite file in WAL mode; the fsync is the real one, wrapped where a test must hold it
(to commit while it runs) or make it fail."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.relay.store as store
from gateway.dots.relay import RelayedMitigation, RelayTable
from gateway.relay.forwarding import GatewayRelay, RelaySettings
from gateway.relay.store import RelayDatabase, RelayDatabaseError

#: Bound on every wait for the worker thread (a busy machine is slow, never this slow).
WAIT = 30.0


def record(mid: int) -> RelayedMitigation:
    return RelayedMitigation("c1", mid, "o1", "o1", b"\xa0", True, 3600)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[RelayDatabase]:
    db = RelayDatabase.in_state_dir(tmp_path)
    yield db
    db.close()


def commit(db: RelayDatabase, table: RelayTable, mid: int) -> None:
    table.put(record(mid))
    assert db.sync(table)


class HeldFsync:
    """Wraps ``fsync_wal``: each call says it started, then waits until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = store.fsync_wal
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.calls = 0
        monkeypatch.setattr(store, "fsync_wal", self)

    def __call__(self, path: Path, known: tuple[int, int] | None) -> tuple[int, int]:
        self.calls += 1
        self.started.release()
        assert self.release.acquire(timeout=WAIT), "fsync never released"
        return self.real(path, known)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, timeout=WAIT), "no fsync started"


async def test_commits_are_not_fsynced_one_by_one(database: RelayDatabase) -> None:
    table = RelayTable()
    for mid in range(1, 6):
        commit(database, table, mid)
    assert database.saves == 5 and database.fsyncs == 0 and database.unsynced
    await database.durable()
    assert database.fsyncs == 1 and not database.unsynced
    await database.durable()  # nothing new: no fsync
    assert database.fsyncs == 1


async def test_concurrent_waiters_share_one_fsync(database: RelayDatabase) -> None:
    table = RelayTable()
    waiters = []
    for mid in range(1, 21):  # 20 requests, each committed, then waiting for its fsync
        commit(database, table, mid)
        waiters.append(asyncio.ensure_future(database.durable()))
    await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    assert database.saves == 20 and database.fsyncs == 1


async def test_a_commit_after_the_fsync_started_waits_for_the_next(
        database: RelayDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    held = HeldFsync(monkeypatch)
    table = RelayTable()
    commit(database, table, 1)
    early = asyncio.ensure_future(database.durable())
    await held.wait_started()  # the fsync for commit 1 is running in its thread
    also_early = asyncio.ensure_future(database.durable())  # nothing new: shares it
    await asyncio.sleep(0)  # it runs (reads what it waits for) before the next commit
    commit(database, table, 2)  # not covered by the running fsync
    late = asyncio.ensure_future(database.durable())
    await asyncio.sleep(0.05)
    assert not early.done() and not late.done()
    held.release.release()
    await asyncio.wait_for(asyncio.gather(early, also_early), WAIT)
    assert database.fsyncs == 1
    await held.wait_started()  # the late waiter's own fsync
    assert not late.done() and database.unsynced
    held.release.release()
    await asyncio.wait_for(late, WAIT)
    assert held.calls == 2 and database.fsyncs == 2 and not database.unsynced


async def test_the_loop_keeps_running_during_an_fsync(
        database: RelayDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    held = HeldFsync(monkeypatch)
    table = RelayTable()
    commit(database, table, 1)
    waiter = asyncio.ensure_future(database.durable())
    await held.wait_started()
    # Other requests commit (and are refused or answered) while the fsync is held.
    for mid in range(2, 12):
        commit(database, table, mid)
    assert database.saves == 11 and not waiter.done()
    held.release.release()
    await asyncio.wait_for(waiter, WAIT)
    held.release.release()  # the next fsync (for the ten later commits) runs free
    await asyncio.wait_for(database.durable(), WAIT)
    assert database.fsyncs == 2


async def test_a_cancelled_waiter_does_not_cancel_the_others(
        database: RelayDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    held = HeldFsync(monkeypatch)
    table = RelayTable()
    commit(database, table, 1)
    first = asyncio.ensure_future(database.durable())
    second = asyncio.ensure_future(database.durable())
    await held.wait_started()
    first.cancel()  # its client went away
    held.release.release()
    await asyncio.wait_for(second, WAIT)
    assert first.cancelled() and database.fsyncs == 1 and not database.unsynced


async def test_a_failed_fsync_fails_every_waiter_and_every_later_one(
        database: RelayDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, known: tuple[int, int] | None) -> tuple[int, int]:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store, "fsync_wal", broken)
    table = RelayTable()
    waiters = []
    for mid in (1, 2, 3):
        commit(database, table, mid)
        waiters.append(asyncio.ensure_future(database.durable()))
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), WAIT)
    assert all(isinstance(r, RelayDatabaseError) and "fsync failed" in str(r)
               for r in results), results
    assert database.fsyncs == 0 and database.unsynced
    # The pages may be gone even if the next fsync succeeds: never durable again.
    monkeypatch.undo()
    commit(database, table, 4)
    with pytest.raises(RelayDatabaseError, match="fsync failed"):
        await asyncio.wait_for(database.durable(), WAIT)


async def test_the_relay_stops_on_a_failed_fsync(
        database: RelayDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, known: tuple[int, int] | None) -> tuple[int, int]:
        raise OSError(errno.EIO, "Input/output error")

    relay = GatewayRelay(RelaySettings(), RelayTable(), database)
    stopped: list[str] = []
    relay.on_unsynced = stopped.append  # the daemon's is stop_unsynced: exit 74
    relay.table.put(record(1))
    assert await relay._persist() and stopped == []  # committed and fsynced
    monkeypatch.setattr(store, "fsync_wal", broken)
    relay.table.put(record(2))
    assert not await relay._persist()  # nothing that depends on it may leave
    assert len(stopped) == 1 and "fsync failed" in stopped[0]
    assert database.saves == 2 and database.fsyncs == 1


async def test_without_wal_every_commit_is_its_own_fsync(
        database: RelayDatabase) -> None:
    database._group_commit = False  # as on a file system without shared memory
    database._db.execute("PRAGMA synchronous=FULL")
    table = RelayTable()
    commit(database, table, 1)
    assert not database.unsynced
    await database.durable()
    assert database.fsyncs == 0
