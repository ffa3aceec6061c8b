"""Group commit's bookkeeping and fsyncs for a SQLite database in WAL mode (issue 21).

Commits are counted (``committed_one``); ``make_durable`` (on the caller's thread) and
``await durable()`` (in a worker thread of its own, the event loop serving meanwhile) fsync
the WAL once for every commit made before that fsync started, so concurrent callers share
one. A failed ``durable`` fsync may have lost committed frames: it raises, then and ever
after. Without WAL (``group_commit=False``: ``synchronous=FULL``) every commit is durable
by itself. Used by ``gateway.server.persistence``; ``fsync_wal`` by the relay's store too.
Must not import the roles.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from pathlib import Path
from typing import Any


class WalSync:
    """Counters: ``committed``, ``synced`` (covered by a finished fsync), ``fsyncs``."""

    def __init__(self, path: Path, *, group_commit: bool) -> None:
        self.path = path
        self.group_commit = group_commit
        self.committed = 0
        self.synced = 0
        self.fsyncs = 0
        self._fsync: asyncio.Future[None] | None = None  # the fsync under way (``durable``)
        self._failed: OSError | None = None
        #: The WAL file whose directory entry was fsynced (device, inode).
        self._wal_known: tuple[int, int] | None = None
        #: The worker thread of ``durable``'s fsyncs, started with the first, and its
        #: requests: (loop, future, known WAL), or None to stop. A thread of our own: a
        #: round trip through it cost half the CPU of ``asyncio.to_thread``'s (55 vs 120 us
        #: measured), which a session alone pays twice per create+delete cycle.
        self._worker: threading.Thread | None = None
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def committed_one(self) -> None:
        self.committed += 1
        if not self.group_commit:
            self.synced = self.committed  # synchronous=FULL: fsynced by the commit itself

    @property
    def unsynced(self) -> bool:
        return self.synced < self.committed

    def make_durable(self) -> None:
        """fsync the WAL on this thread: every commit made before this call survives a
        power loss. Raises ``OSError``; the commits may then be lost."""
        covers = self.committed
        if self.synced >= covers:
            return
        self._wal_known = fsync_wal(self.path, self._wal_known)
        self.synced = max(self.synced, covers)
        self.fsyncs += 1

    async def durable(self) -> None:
        """Return once every commit made before this call is durable: a barrier that
        concurrent callers share. The fsync runs in the worker thread; a caller whose commit
        came after the running fsync started waits for the next one. Raises ``OSError``
        when an fsync failed, then and ever after (a later fsync succeeding says nothing of
        the pages the kernel dropped)."""
        target = self.committed
        while self.synced < target:
            if self._failed is not None:
                raise self._failed
            if self._fsync is None:
                self._fsync = asyncio.ensure_future(self._run_fsync())
                self._fsync.add_done_callback(_retrieve)  # every waiter may be gone
            # Shielded: a cancelled waiter must not cancel the others' fsync.
            await asyncio.shield(self._fsync)

    async def _run_fsync(self) -> None:
        covers = self.committed  # read before the fsync starts: these are on disk after it
        try:
            self._wal_known = await self._in_worker()
        except OSError as exc:
            self._failed = exc
            raise
        finally:
            self._fsync = None
        self.synced = max(self.synced, covers)
        self.fsyncs += 1

    def _in_worker(self) -> asyncio.Future[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True,
                                            name="dots-db-fsync")
            self._worker.start()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()
        self._requests.put((loop, future, self._wal_known))
        return future

    def _work(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            loop, future, known = request
            try:
                outcome: tuple[bool, Any] = (True, fsync_wal(self.path, known))
            except OSError as exc:
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def close(self) -> None:
        """Stop the worker thread (after the fsync it may be running)."""
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join(timeout=10)
            self._worker = None


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def fsync_wal(path: Path, known: tuple[int, int] | None) -> tuple[int, int]:
    """fsync the WAL of the database at ``path``, and its directory when the WAL is not the
    file ``known`` (device, inode) any more; the WAL's (device, inode). Raises ``OSError``.
    Used by both databases' group commit (the mitigations', the relay's)."""
    fd = os.open(f"{path}-wal", os.O_RDONLY)
    try:
        os.fsync(fd)
        stat = os.fstat(fd)
    finally:
        os.close(fd)
    if known != (stat.st_dev, stat.st_ino):
        # A new WAL file: its name must survive too (SQLite syncs the directory only in its
        # own sync calls, which NORMAL skips for commits).
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return stat.st_dev, stat.st_ino
