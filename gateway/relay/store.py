"""The gateway's relay state in SQLite: which client mitigations exist and where.

One row per relayed mitigation request (``gateway.dots.relay.RelayedMitigation``), written in
one transaction per batch of changes and made durable *before* the answer (or the upstream
request) that depends on it leaves, so a gateway restarted after a crash knows every request
it accepted and re-installs them upstream. Expiry times are wall-clock (records outlive the
process). A separate file from the terminal server's database: a node can switch modes
without either reading the other.

Durability, with group commit (issue 21), as the terminal server's database
(``gateway.server.persistence``): commits go to the WAL without an fsync
(``synchronous=NORMAL``), and ``await durable()`` fsyncs the WAL, in a worker thread so the
event loop keeps relaying, once for every commit made before that fsync started. Concurrent
relayed requests (each awaiting its upstream answer, then its save) thus share one fsync
instead of paying one each. A failed fsync may have lost committed changes: ``durable``
raises, then and ever after (a later fsync succeeding says nothing of the lost pages), and
the relay stops the daemon rather than acknowledge them. Without WAL (a file system without
shared memory) every commit is fsynced (``synchronous=FULL``) and ``durable`` is free.

A failed write (disk full, read-only file system, the file locked by another process) keeps
its changes for the next ``sync``: the relay's requests try at once (and are answered 5.03
when it fails), its timer retries with a back-off, so writes resume by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

from gateway.dots.relay import RelayedMitigation, RelayTable
from gateway.server.persistence import (
    BUSY_TIMEOUT,
    RETRY_FIRST,
    RETRY_MAX,
    check_integrity,
    create_private_file,
    fsync_wal,
)

log = logging.getLogger(__name__)

DATABASE_NAME = "relay.sqlite3"
SCHEMA_VERSION = 1
#: Seconds between WAL checkpoints (in their own thread, off the event loop).
CHECKPOINT_INTERVAL = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS relayed (
    cuid TEXT NOT NULL,
    mid INTEGER NOT NULL,
    owner TEXT NOT NULL,
    cdid TEXT,
    body BLOB NOT NULL,
    trigger_mitigation INTEGER NOT NULL,
    lifetime INTEGER NOT NULL,
    expires_at REAL,
    confirmed INTEGER NOT NULL,
    upstream TEXT,
    withdrawing INTEGER NOT NULL,
    activated_by_loss INTEGER NOT NULL,
    PRIMARY KEY (cuid, mid)
);
"""
_COLUMNS = ("cuid, mid, owner, cdid, body, trigger_mitigation, lifetime, expires_at, "
            "confirmed, upstream, withdrawing, activated_by_loss")


class RelayDatabaseError(Exception):
    pass


class RelayDatabase:
    """``sync(table)`` after every change, ``await durable()`` before what depends on it
    leaves; ``load()`` once at start. Counters for metrics: ``saves``, ``save_failures``,
    ``fsyncs``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.saves = 0
        self.save_failures = 0
        self._unsaved: dict[tuple[str, int], RelayedMitigation | None] = {}
        #: Monotonic time before which a background sync does not retry a failed write.
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self.fsyncs = 0
        #: Group commit: commits so far, and how many of them a finished fsync covers.
        self._committed = 0
        self._synced = 0
        self._fsync: asyncio.Future[None] | None = None  # the fsync under way
        self._fsync_failed: str | None = None
        self._wal_known: tuple[int, int] | None = None  # see fsync_wal
        self._group_commit = False
        problem = create_private_file(self.path)
        if problem is not None:
            raise RelayDatabaseError(problem)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            raise RelayDatabaseError(f"{self.path}: cannot open ({exc}); check the file's "
                                     "permissions and the file system") from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: journal_mode is %s, not wal (file system without shared "
                            "memory?); every save pays its own fsync", self.path, mode)
            self._group_commit = mode == "wal"
            # Either way a commit is on disk before the answer that depends on it leaves (an
            # ext4 error remounting the file system read-only drops unwritten page cache):
            # NORMAL with our own shared fsync of the WAL (``durable``), FULL without WAL.
            self._db.execute(
                f"PRAGMA synchronous={'NORMAL' if self._group_commit else 'FULL'}")
            # Checkpoints (copying the WAL into the database, with an fsync) run in a thread
            # of their own: inline, one in a few hundred saves stalled the event loop for
            # milliseconds (measured: 1.3 ms of the relayed-PUT p99 at 1,000 sessions).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            check_integrity(self._db)
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                self._db.close()
                raise RelayDatabaseError(f"{self.path}: schema {row[0]} is newer than this "
                                         f"program's ({SCHEMA_VERSION}); run the newer "
                                         "version, or move the file aside")
        except (sqlite3.DatabaseError, ValueError) as exc:
            self._db.close()
            raise RelayDatabaseError(f"{self.path}: not a usable SQLite database ({exc}); "
                                     "restore it from a backup, or move it aside to start "
                                     "without the relay state") from None

        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, daemon=True,
                                              name="relay-db-checkpoint")
        self._checkpointer.start()

    def _checkpoints(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            log.error("%s: no checkpoint connection (%s); the WAL grows", self.path, exc)
            return
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("%s: checkpoint failed (%s); retrying later", self.path, exc)
        finally:
            db.close()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> RelayDatabase:
        return cls(state_dir / DATABASE_NAME)

    def load(self) -> list[RelayedMitigation]:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM relayed ORDER BY cuid, mid").fetchall()
        except sqlite3.DatabaseError as exc:
            raise RelayDatabaseError(f"{self.path}: not a usable SQLite database ({exc}); "
                                     "move it aside to start without the relay state") from None
        out = []
        for row in rows:
            try:
                out.append(_record(row))
            except (TypeError, ValueError) as exc:
                log.warning("%s: skipping an unreadable relay row (%s)", self.path, exc)
        return out

    @property
    def pending(self) -> int:
        """Changes a failed write kept for the next try."""
        return len(self._unsaved)

    def sync(self, table: RelayTable, *, background: bool = False) -> bool:
        """Write the table's changes in one transaction; True once committed (on disk after
        ``durable``). On failure nothing is written: they are kept and retried by the next
        call (``background``: only when the back-off allows)."""
        for key, record in table.take_changes():
            self._unsaved[key] = record
        if not self._unsaved:
            return True
        if background and time.monotonic() < self._retry_at:
            return False
        first_failure = self._retry_at == 0.0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for (cuid, mid), record in self._unsaved.items():
                if record is None:
                    self._db.execute("DELETE FROM relayed WHERE cuid=? AND mid=?", (cuid, mid))
                else:
                    self._db.execute(
                        f"INSERT OR REPLACE INTO relayed ({_COLUMNS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", _row(record))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.save_failures += 1
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if not first_failure:
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            self._retry_at = time.monotonic() + self._retry_delay
            log.error("%s: saving the relay state failed (%s); %d changes kept, next try in "
                      "%.1f s or with the next request", self.path, exc, len(self._unsaved),
                      self._retry_delay)
            return False
        if not first_failure:
            log.warning("%s: saving works again; %d earlier failures", self.path,
                        self.save_failures)
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self.saves += 1
        self._committed += 1
        if not self._group_commit:
            self._synced = self._committed  # FULL: fsynced by the commit itself
        self._unsaved.clear()
        return True

    @property
    def unsynced(self) -> bool:
        """Whether commits wait for an fsync."""
        return self._synced < self._committed

    async def durable(self) -> None:
        """Return once every commit made before this call is on disk: a barrier that
        concurrent callers share. The first caller starts an fsync (in a thread); a caller
        whose commit came after the running fsync started waits for the next one. Raises
        ``RelayDatabaseError`` when an fsync failed (then committed changes may be lost)."""
        target = self._committed
        while self._synced < target:
            if self._fsync_failed is not None:
                raise RelayDatabaseError(self._fsync_failed)
            if self._fsync is None:
                self._fsync = asyncio.ensure_future(self._run_fsync())
                # Retrieved here too: every waiter may have been cancelled meanwhile.
                self._fsync.add_done_callback(_retrieve)
            # Shielded: a cancelled waiter (its client gone) must not cancel the others'.
            await asyncio.shield(self._fsync)

    async def _run_fsync(self) -> None:
        covers = self._committed  # read before the fsync starts: these are on disk after it
        try:
            self._wal_known = await asyncio.to_thread(fsync_wal, self.path, self._wal_known)
        except OSError as exc:
            self._fsync_failed = f"{self.path}-wal: fsync failed: {exc}"
            raise RelayDatabaseError(self._fsync_failed) from exc
        finally:
            self._fsync = None
        self._synced = max(self._synced, covers)
        self.fsyncs += 1

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(timeout=10)
        if self.unsynced and self._fsync_failed is None:
            try:  # the checkpoint below syncs too, unless it fails
                self._wal_known = fsync_wal(self.path, self._wal_known)
                self.fsyncs += 1
            except OSError as exc:
                log.error("%s-wal: fsync at close failed (%s)", self.path, exc)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("%s: final checkpoint failed (%s)", self.path, exc)
        self._db.close()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _row(r: RelayedMitigation) -> tuple[object, ...]:
    return (r.cuid, r.mid, r.owner, r.cdid, r.body, int(r.trigger_mitigation), r.lifetime,
            r.expires_at, int(r.confirmed), r.upstream, int(r.withdrawing),
            int(r.activated_by_loss))


def _record(row: tuple[object, ...]) -> RelayedMitigation:
    (cuid, mid, owner, cdid, body, trigger, lifetime, expires_at, confirmed, upstream,
     withdrawing, by_loss) = row
    if not isinstance(cuid, str) or not isinstance(owner, str) or not isinstance(body, bytes):
        raise TypeError("cuid, owner and body must be text, text and bytes")
    return RelayedMitigation(
        cuid=cuid, mid=int(mid), owner=owner,  # type: ignore[call-overload]
        cdid=cdid if isinstance(cdid, str) else None, body=body,
        trigger_mitigation=bool(trigger), lifetime=int(lifetime),  # type: ignore[call-overload]
        expires_at=float(expires_at) if expires_at is not None else None,  # type: ignore[arg-type]
        confirmed=bool(confirmed), upstream=upstream if isinstance(upstream, str) else None,
        withdrawing=bool(withdrawing), activated_by_loss=bool(by_loss))
