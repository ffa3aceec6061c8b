"""Saved mitigations: the server store's records in SQLite, so a restart keeps them.

Owns ``<state_dir>/dots.sqlite`` and is the only ``sqlite3`` user. It saves
``gateway.dots.mitigation_lifecycle.Mitigation`` records (as rows of
``gateway.server.mitigation_rows``) and the RFC 9244
telemetry a client installed (``gateway.dots.telemetry``: setups and pre-mitigation
telemetry, written at once, before the answer), and nothing else: what a restored record
means (expiry, re-applying) is decided by ``MitigationStore.restore``. It must not import
asyncio or the roles; the pure core must not import it.

Times: the store runs on the monotonic clock of its process, which means nothing to the
next process, so every deadline is saved as epoch seconds (``monotonic + wall_offset``) and
loaded back as ``epoch - wall_offset`` of the loading process. A lifetime keeps running
while the gateway is down (RFC 9132 §4.4.1: it is the client's promise to refresh in time).

Durability, with group commit: a save is one SQLite transaction written to the WAL
(``journal_mode=WAL``, ``synchronous=NORMAL``: no fsync per commit; checkpoints still sync
the WAL before and the database after they copy), and ``await durable()`` fsyncs the WAL
once for every save committed before that fsync started, in a worker thread so that the
event loop keeps serving meanwhile (as the relay's store does; ``make_durable`` is the same
on the caller's thread, for shutdown). The server role holds back anything that depends on
a save (an answer, a notification, a mitigator command) until the fsync covering it has
finished, so the requests handled while one fsync runs share the next (issue 21), and an
acknowledged change survives a crash of this process, of the kernel, a power loss and a file
system the kernel turns read-only after an error (whose unwritten page cache is dropped:
acknowledging after an unsynced commit lost saves that way, issue 17). A save that fails
(disk full, read-only, the file locked by another process) writes nothing: the role rolls
the request back and answers 5.03. A failed fsync is different (the committed frames may
be gone): the role stops the daemon rather than acknowledge them. Without WAL (a file
system without shared memory) every commit is fsynced (``synchronous=FULL``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import UINT32_MAX, Mitigation
from gateway.dots.model import Scope
from gateway.dots.telemetry import Change, TelemetryStore
from gateway.server.mitigation_rows import (
    COLUMNS,
    encode_scope,
    is_int,
    mitigation_from_row,
    mitigation_row,
)
from gateway.server.wal_sync import WalSync
from gateway.server.wal_sync import fsync_wal as fsync_wal  # the relay store imports it here

log = logging.getLogger(__name__)

DATABASE_NAME = "dots.sqlite"
#: Bumped with every change of the tables below; a step in ``_MIGRATIONS`` goes with it.
SCHEMA_VERSION = 3

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Times are epoch seconds. scope and conflict are CBOR (application/dots+cbor bodies:
    # MitigationScope with one scope entry); counters are JSON with the YANG names.
    """CREATE TABLE mitigation (
        cuid TEXT NOT NULL,
        mid INTEGER NOT NULL,
        credential_id TEXT NOT NULL,
        cdid TEXT,
        scope BLOB NOT NULL,
        lifetime INTEGER NOT NULL,
        expires_at REAL,
        terminate_at REAL,
        state TEXT NOT NULL,
        status INTEGER NOT NULL,
        transient_status INTEGER,
        transient_reports_left INTEGER NOT NULL,
        mitigation_start INTEGER,
        counters TEXT NOT NULL,
        conflict BLOB,
        updated_at REAL NOT NULL,
        PRIMARY KEY (cuid, mid)
    )""",
    # Per client: the active-but-terminating period after re-requests (RFC 9132 §4.4.4).
    "CREATE TABLE client (cuid TEXT PRIMARY KEY, termination_period INTEGER NOT NULL)",
)
# RFC 9244 telemetry of a client: kind 'setup' (ident: tsid) or 'tm' (ident: tmid); body is
# the CBOR of the telemetry entry (gateway.dots.telemetry.Change).
_TELEMETRY_TABLE = """CREATE TABLE telemetry (
    cuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    ident INTEGER NOT NULL,
    cdid TEXT,
    body BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (cuid, kind, ident)
)"""
# The client domain of a setup (gateway.dots.telemetry.Setup.domain): RFC 9244 conflicts
# between clients of one domain hold across a restart. NULL in rows saved before.
_TELEMETRY_DOMAIN = "ALTER TABLE telemetry ADD COLUMN domain TEXT"
_SCHEMA = (*_SCHEMA, _TELEMETRY_TABLE, _TELEMETRY_DOMAIN)
#: version -> statements that take a database from that version to the next.
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: (_TELEMETRY_TABLE,), 2: (_TELEMETRY_DOMAIN,)}

#: Seconds a write waits for another process's lock on the file before it fails. The wait
#: blocks the event loop, and a save of ours takes microseconds: a longer lock is someone
#: else's (an operator's open transaction), and the request is better answered 5.03.
BUSY_TIMEOUT = 1.0
#: Background saves (timers, mitigator reports) that failed are retried after these many
#: seconds, doubling up to the maximum; a request's save is always attempted at once.
RETRY_FIRST = 0.5
RETRY_MAX = 8.0


class PersistenceError(Exception):
    """The database cannot be used (unreadable, not ours, written by a newer version) or a
    save failed; nothing of the failed operation was written."""


class SchemaTooNew(PersistenceError):
    """The database was written by a newer dots-gateway; we refuse to touch it."""


def connect_private(path: Path) -> sqlite3.Connection:
    """A connection to the state file ``path``, created owner-only if it is new; no
    implicit transactions (``isolation_level=None``: ours are explicit, one per save).
    Raises ``PersistenceError`` saying what to check."""
    problem = create_private_file(path)
    if problem is not None:
        raise PersistenceError(problem)
    try:
        return sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise PersistenceError(f"{path}: cannot open ({exc}); check the file's "
                               "permissions and the file system") from None


def create_private_file(path: Path) -> str | None:
    """Create ``path`` (and its directory) readable by the owner only, unless it exists; what
    went wrong, for the operator, or None. Client identities and targets live in our
    databases: owner-only, like the dev PKI (SQLite gives its -wal and -shm files the
    database file's mode)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        return (f"{path}: cannot open for writing ({exc.strerror}); make the state directory "
                "and the file writable, or set general.state_dir elsewhere")
    return None


class MitigationDatabase:
    """One SQLite file of saved mitigations; opening it creates or upgrades the schema.

    Counters for metrics: ``saves``, ``save_failures``, ``skipped_rows``.

    A failed save keeps its changes (``pending``) and is tried again by the next ``sync``:
    a request's at once, a background one (``background=True``: the role's timer) once the
    back-off allows, so writes resume by themselves when the disk has room again.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.saves = 0
        self.save_failures = 0
        self.skipped_rows = 0
        #: Changes ``sync`` could not write yet: key -> record, or None for a removed key.
        self._pending: dict[tuple[str, int], Mitigation | None] = {}
        self._pending_clients: dict[str, int | None] = {}
        self._wall_offset: float | None = None
        #: Monotonic time before which a background sync does not retry a failed write.
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._group_commit = False  # set by _open: WAL mode
        #: The scope column of each saved record, made once: a DELETE, refresh or status
        #: change saves the record again with the same (frozen) scope object. Key ->
        #: (scope, CBOR); entries go with the keys a save removes.
        self._scope_cbor: dict[tuple[str, int], tuple[Scope, bytes]] = {}
        self._db = self._open()
        #: Group commit: counts commits, fsyncs the WAL (``durable``, ``make_durable``).
        self._wal = WalSync(self.path, group_commit=self._group_commit)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> MitigationDatabase:
        return cls(state_dir / DATABASE_NAME)

    # --- opening -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = connect_private(self.path)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: journal_mode is %s, not wal (file system without shared "
                            "memory?); saves are slower but as safe", self.path, mode)
            self._group_commit = mode == "wal"
            # See the module docstring: NORMAL with our own fsync of the WAL, FULL without WAL.
            db.execute(f"PRAGMA synchronous={'NORMAL' if self._group_commit else 'FULL'}")
            check_integrity(db)
            self._upgrade(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise PersistenceError(
                f"{self.path}: not a usable SQLite database ({exc}); restore it from a "
                "backup, or move it aside to start without the saved mitigations"
            ) from None
        except BaseException:
            db.close()
            raise
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        with _transaction(db):
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                if tables:
                    raise PersistenceError(
                        f"{self.path}: has tables ({', '.join(sorted(tables))}) but no meta "
                        "table: not a dots-gateway database"
                    )
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                log.info("%s: new mitigation database (schema %d)", self.path, SCHEMA_VERSION)
                return
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            try:
                version = int(row[0])
            except (TypeError, ValueError):
                raise PersistenceError(
                    f"{self.path}: meta.schema_version is {None if row is None else row[0]!r}, "
                    "not a number"
                ) from None
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path}: schema version {version} was written by a newer "
                    f"dots-gateway; this one knows versions up to {SCHEMA_VERSION}. Run the "
                    "newer version, or move the file aside to start without saved mitigations"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                           (str(version),))
                log.info("%s: schema upgraded to version %d", self.path, version)

    # --- writing -----------------------------------------------------------------------------

    def save(
        self,
        records: Iterable[Mitigation],
        removed_keys: Iterable[tuple[str, int]],
        *,
        wall_offset: float,
        termination_periods: Mapping[str, int | None] | None = None,
    ) -> None:
        """Write records, delete removed keys and set per-client periods (None: back to the
        default) in one transaction. ``wall_offset`` is the store's (epoch - monotonic).
        Raises ``PersistenceError`` with nothing written when it fails."""
        updated_at = time.time()
        # Encoded outside the lock.
        rows = [mitigation_row(r, wall_offset, updated_at, self._scope_column(r))
                for r in records]
        removed = [(cuid, mid) for cuid, mid in removed_keys]
        for key in removed:
            self._scope_cbor.pop(key, None)
        periods = dict(termination_periods or {})
        try:
            with _transaction(self._db):
                # Deletions first: a key in both lists ends up saved.
                self._db.executemany("DELETE FROM mitigation WHERE cuid = ? AND mid = ?", removed)
                self._db.executemany(
                    f"INSERT OR REPLACE INTO mitigation ({COLUMNS}) "
                    f"VALUES ({', '.join('?' * 16)})",
                    rows,
                )
                for cuid, period in periods.items():
                    if period is None:
                        self._db.execute("DELETE FROM client WHERE cuid = ?", (cuid,))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO client VALUES (?, ?)",
                                         (cuid, period))
        except sqlite3.Error as exc:
            raise PersistenceError(f"{self.path}: save failed: {exc}") from exc
        self.saves += 1
        self._committed_one()

    def _committed_one(self) -> None:
        self._wal.committed_one()

    def _scope_column(self, record: Mitigation) -> bytes:
        key = (record.cuid, record.mid)
        cached = self._scope_cbor.get(key)
        if cached is not None and cached[0] is record.scope:
            return cached[1]
        made = encode_scope(record.scope)
        self._scope_cbor[key] = (record.scope, made)
        return made

    @property
    def unsynced(self) -> bool:
        """Whether saves were committed that no finished fsync covers."""
        return self._wal.unsynced

    @property
    def committed(self) -> int:
        """Commits so far: what depends on them may leave once ``synced`` reaches this."""
        return self._wal.committed

    @property
    def synced(self) -> int:
        """How many commits finished fsyncs cover (durable)."""
        return self._wal.synced

    @property
    def fsyncs(self) -> int:
        return self._wal.fsyncs

    def make_durable(self) -> None:
        """fsync the WAL on this thread (``WalSync.make_durable``); ``PersistenceError``."""
        try:
            self._wal.make_durable()
        except OSError as exc:
            raise PersistenceError(f"{self.path}-wal: fsync failed: {exc}") from exc

    async def durable(self) -> None:
        """Once every save committed before this call is durable (``WalSync.durable``,
        the fsync in a worker thread); ``PersistenceError`` when an fsync failed."""
        try:
            await self._wal.durable()
        except OSError as exc:
            raise PersistenceError(f"{self.path}-wal: fsync failed: {exc}") from exc

    @property
    def pending(self) -> int:
        """Changes a failed save kept (records and per-client periods) for the next try."""
        return len(self._pending) + len(self._pending_clients)

    def sync(self, store: MitigationStore, *, background: bool = False) -> bool:
        """Save what changed in ``store`` since the last call (``take_changes``), in one
        transaction; True once it is committed (durable after ``make_durable``). On failure
        the changes are kept and written by the next call; the error is logged and counted,
        never raised: the role answers the request 5.03 (the store rolls it back) and goes
        on serving reads from memory.
        ``background``: a timer's save, attempted only when the back-off allows."""
        if not store.changed and not self._pending and not self._pending_clients:
            # Most calls (the role saves after every request and timer): nothing to write.
            self._wall_offset = store.wall_offset
            return True
        records, removed = store.take_changes()
        for key in removed:
            self._pending[key] = None
        for record in records:
            self._pending[(record.cuid, record.mid)] = record
        self._pending_clients.update(store.take_client_changes())
        self._wall_offset = store.wall_offset
        if background and self.pending and time.monotonic() < self._retry_at:
            return False
        return self._flush()

    def _flush(self) -> bool:
        if not self._pending and not self._pending_clients:
            return True
        assert self._wall_offset is not None
        first_failure = self._retry_at == 0.0
        try:
            self.save(
                [r for r in self._pending.values() if r is not None],
                [k for k, r in self._pending.items() if r is None],
                wall_offset=self._wall_offset,
                termination_periods=self._pending_clients,
            )
        except PersistenceError as exc:
            self.save_failures += 1
            if not first_failure:
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            self._retry_at = time.monotonic() + self._retry_delay
            log.error("mitigations not saved (%d changes kept, next try in %.1f s or with the "
                      "next request, %d failures so far): %s", self.pending, self._retry_delay,
                      self.save_failures, exc)
            return False
        if not first_failure:
            log.warning("%s: saving works again; %d earlier failures", self.path,
                        self.save_failures)
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._pending.clear()
        self._pending_clients.clear()
        return True

    def close(self) -> None:
        """Write what a failed ``sync`` kept, if it can, make it durable, close the file."""
        self._flush()
        with contextlib.suppress(PersistenceError):  # closing: SQLite's checkpoint syncs too
            self.make_durable()
        self._wal.close()
        self._db.close()

    # --- reading -----------------------------------------------------------------------------

    def load(self, wall_offset: float) -> list[Mitigation]:
        """Every saved mitigation, deadlines on this process's clock (``epoch - wall_offset``).

        A row that does not decode (a bad value, a scope that is no longer valid) is skipped
        with a warning naming its key, and counted in ``skipped_rows``; it stays in the file
        for inspection until a new request with the same key replaces it.
        """
        records = []
        try:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM mitigation ORDER BY cuid, mid").fetchall()
        except sqlite3.DatabaseError as exc:
            raise PersistenceError(
                f"{self.path}: cannot read the saved mitigations ({exc}); restore the file "
                "from a backup, or move it aside to start without them") from None
        for row in rows:
            try:
                records.append(mitigation_from_row(row, wall_offset))
            except Exception as exc:  # any bad row, whatever is wrong with it: skip, go on
                self.skipped_rows += 1
                log.warning("%s: skipping saved mitigation cuid=%r mid=%r: %s",
                            self.path, row[0], row[1], exc)
        return records

    def load_termination_periods(self) -> dict[str, int]:
        """Per-client active-but-terminating periods (RFC 9132 §4.4.4); bad rows skipped."""
        periods = {}
        try:
            rows = self._db.execute("SELECT cuid, termination_period FROM client").fetchall()
        except sqlite3.DatabaseError as exc:
            raise PersistenceError(
                f"{self.path}: cannot read the saved periods ({exc}); restore the file from "
                "a backup, or move it aside to start without the saved mitigations") from None
        for cuid, period in rows:
            if isinstance(cuid, str) and is_int(period) and 0 <= period <= UINT32_MAX:
                periods[cuid] = period
            else:
                self.skipped_rows += 1
                log.warning("%s: skipping saved termination period cuid=%r period=%r",
                            self.path, cuid, period)
        return periods

    # --- telemetry (RFC 9244) ------------------------------------------------------------

    def save_telemetry(self, changes: Iterable[Change]) -> bool:
        """Write telemetry rows (a None body deletes) in one transaction; False
        when it failed (logged, counted in ``save_failures``; nothing written): the request
        is then answered 5.03 and its change not made."""
        now = time.time()
        rows = list(changes)
        try:
            with _transaction(self._db):
                for change in rows:
                    if change.body is None:
                        self._db.execute(
                            "DELETE FROM telemetry WHERE cuid = ? AND kind = ? AND ident = ?",
                            (change.cuid, change.kind, change.ident))
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO telemetry (cuid, kind, ident, cdid, "
                            "body, updated_at, domain) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (change.cuid, change.kind, change.ident, change.cdid,
                             change.body, now, change.domain))
        except sqlite3.Error as exc:
            self.save_failures += 1
            log.error("telemetry not saved (%d changes refused): %s: %s", len(rows),
                      self.path, exc)
            return False
        self.saves += 1
        self._committed_one()  # durable before the answer: see ``durable``
        return True

    def restore_telemetry_into(self, store: TelemetryStore) -> None:
        """Load the saved telemetry into ``store``; a row that no longer decodes is
        skipped with a warning and counted in ``skipped_rows``."""
        try:
            rows = self._db.execute("SELECT cuid, kind, ident, cdid, body, domain "
                                    "FROM telemetry ORDER BY cuid, kind, ident").fetchall()
        except sqlite3.DatabaseError as exc:
            raise PersistenceError(
                f"{self.path}: cannot read the saved telemetry ({exc}); restore the file "
                "from a backup, or move it aside to start without it") from None
        kept = 0
        for row in rows:
            cuid, kind, ident, cdid, body, domain = row
            try:
                if not (isinstance(cuid, str) and kind in ("setup", "tm") and is_int(ident)
                        and 0 <= ident <= UINT32_MAX and isinstance(body, bytes)
                        and (cdid is None or isinstance(cdid, str))
                        and (domain is None or isinstance(domain, str))):
                    raise ValueError("bad column values")
                kept += store.restore([(cuid, kind, ident, cdid, body, domain)])
            except Exception as exc:  # any bad row: skip it, keep the others
                self.skipped_rows += 1
                log.warning("%s: skipping saved telemetry cuid=%r %s=%r: %s", self.path, cuid,
                            "tsid" if kind == "setup" else "tmid", ident, exc)
        if kept:
            log.info("%s: %d telemetry entries restored", self.path, kept)

    def restore_into(self, store: MitigationStore, now: float) -> None:
        """Load everything and ``restore`` it into ``store`` (at start, on an empty store),
        then save what restoring ended (records that expired while the gateway was down)."""
        store.restore(self.load(store.wall_offset), now, self.load_termination_periods())
        self.sync(store)


def check_integrity(db: sqlite3.Connection) -> None:
    """Refuse a damaged file at start rather than fail on its first read or write: SQLite's
    quick check reads every page once (milliseconds for a few thousand mitigations)."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError("damaged: " + "; ".join(problems))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock now, so a second process on the same file fails here
    # (after the busy timeout) rather than half-way through.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
