"""The gateway's relay state in SQLite: which client mitigations exist and where.

One row per relayed mitigation request (``gateway.dots.relay.RelayedMitigation``), written in
one transaction per batch of changes *before* the answer that depends on it leaves, so a
gateway restarted after a crash knows every request it accepted and re-installs them
upstream. Expiry times are wall-clock (records outlive the process). A separate file from
the terminal server's database: a node can switch modes without either reading the other.

A failed write (disk full, read-only file system, the file locked by another process) keeps
its changes for the next ``sync``: the relay's requests try at once (and are answered 5.03
when it fails), its timer retries with a back-off, so writes resume by themselves.
"""

from __future__ import annotations

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
    """``sync(table)`` after every change; ``load()`` once at start."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.saves = 0
        self.save_failures = 0
        self._unsaved: dict[tuple[str, int], RelayedMitigation | None] = {}
        #: Monotonic time before which a background sync does not retry a failed write.
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        problem = create_private_file(self.path)
        if problem is not None:
            raise RelayDatabaseError(problem)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            raise RelayDatabaseError(f"{self.path}: cannot open ({exc}); check the file's "
                                     "permissions and the file system") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before the answer that depends on it leaves (an
            # ext4 error remounting the file system read-only drops unwritten page cache).
            self._db.execute("PRAGMA synchronous=FULL")
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
        """Write the table's changes; True once they are on disk. On failure they are kept
        and retried by the next call (``background``: only when the back-off allows)."""
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
        self._unsaved.clear()
        return True

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(timeout=10)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("%s: final checkpoint failed (%s)", self.path, exc)
        self._db.close()


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
