"""Saved data-channel state: registered DOTS clients, their aliases and ACLs (RFC 8783).

Owns the ``data_client`` and ``data_entry`` tables of ``<state_dir>/dots.sqlite``, the file
``persistence.MitigationDatabase`` owns for mitigations (one embedded store, one backup),
through a second connection with the same durability (WAL, ``synchronous=FULL``): a write
returns only once it is fsynced, and memory changes only after the commit, so what the data
channel acknowledged survives a crash and a failed write changes nothing (the request is
answered 503). Entries are kept as their normalized RFC 8783 JSON.

``DataStoreDatabase`` implements ``gateway.dots.data_channel.DataStore`` for the RESTCONF
resources and the signal channel's ``AclCatalog`` (RFC 9133: ``lookup`` an ACL by name,
``update_activation`` when a mitigation request changes its activation-type) and
``alias`` for alias resolution. Must not import asyncio or the roles.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.dots.data_acls import check_activation
from gateway.dots.data_channel import KINDS, DataClient, Entry
from gateway.dots.data_nodes import RestconfError
from gateway.server.persistence import (
    BUSY_TIMEOUT,
    DATABASE_NAME,
    MitigationDatabase,
    PersistenceError,
    _transaction,
    check_integrity,
    connect_private,
)

log = logging.getLogger(__name__)

#: Version of the data-channel tables, kept in ``meta`` under its own key so that the
#: mitigation schema and this one move independently.
DATA_SCHEMA_VERSION = 1
_VERSION_KEY = "data_schema_version"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS data_client (
        cuid TEXT PRIMARY KEY,
        cdid TEXT,
        registered_at REAL NOT NULL
    )""",
    # kind: 'aliases' or 'acls'; body: the entry's normalized JSON; expires_at: epoch seconds
    # (NULL: never), so a pending lifetime keeps running while the daemon is down.
    """CREATE TABLE IF NOT EXISTS data_entry (
        cuid TEXT NOT NULL REFERENCES data_client (cuid),
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        expires_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (cuid, kind, name)
    )""",
)


class DataStoreDatabase:
    """The data channel's clients and entries: in memory for reads, in SQLite for every
    write (see the module docstring). Counters: ``saves``, ``save_failures``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.saves = 0
        self.save_failures = 0
        self._clients: dict[str, DataClient] = {}
        self._db = self._open()
        self._load()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> DataStoreDatabase:
        return cls(state_dir / DATABASE_NAME)

    def _open(self) -> sqlite3.Connection:
        db = connect_private(self.path)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type='table'")}
            if "meta" not in tables:
                # The mitigation schema first: it owns the file and refuses foreign tables.
                db.close()
                MitigationDatabase(self.path).close()
                db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # as persistence: durable before success
            check_integrity(db)
            with _transaction(db):
                row = db.execute("SELECT value FROM meta WHERE key = ?",
                                 (_VERSION_KEY,)).fetchone()
                if row is not None and int(row[0]) > DATA_SCHEMA_VERSION:
                    raise PersistenceError(
                        f"{self.path}: data-channel schema {row[0]} was written by a newer "
                        f"dots-gateway; this one knows versions up to {DATA_SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    db.execute(statement)
                if row is None:
                    db.execute("INSERT INTO meta VALUES (?, ?)",
                               (_VERSION_KEY, str(DATA_SCHEMA_VERSION)))
        except (sqlite3.DatabaseError, ValueError) as exc:
            db.close()
            raise PersistenceError(f"{self.path}: not a usable dots-gateway database ({exc}); "
                                   "restore it from a backup or move it aside") from None
        except BaseException:
            db.close()
            raise
        return db

    def _load(self) -> None:
        for cuid, cdid in self._db.execute("SELECT cuid, cdid FROM data_client"):
            self._clients[cuid] = DataClient(cuid, cdid)
        skipped = 0
        for cuid, kind, name, body, expires_at in self._db.execute(
                "SELECT cuid, kind, name, body, expires_at FROM data_entry ORDER BY rowid"):
            client = self._clients.get(cuid)
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if client is None or kind not in KINDS or not isinstance(document, dict):
                skipped += 1
                continue
            client.entries(kind)[name] = Entry(document, expires_at)
        if skipped:
            log.warning("%s: %d data-channel rows skipped (unreadable)", self.path, skipped)

    def close(self) -> None:
        self._db.close()

    # --- DataStore -------------------------------------------------------------------------------

    def clients(self) -> Mapping[str, DataClient]:
        return self._clients

    def register(self, cuid: str, cdid: str | None) -> None:
        def write(db: sqlite3.Connection) -> None:
            if db.execute("UPDATE data_client SET cdid = ? WHERE cuid = ?",
                          (cdid, cuid)).rowcount == 0:
                db.execute("INSERT INTO data_client VALUES (?, ?, ?)", (cuid, cdid, time.time()))

        self._write(write)
        client = self._clients.get(cuid)
        if client is None:
            self._clients[cuid] = DataClient(cuid, cdid)
        else:
            client.cdid = cdid

    def unregister(self, cuid: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM data_entry WHERE cuid = ?", (cuid,))
            db.execute("DELETE FROM data_client WHERE cuid = ?", (cuid,))

        self._write(write)
        self._clients.pop(cuid, None)

    def put_entries(self, cuid: str, kind: str, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        now = time.time()
        rows = [(cuid, kind, str(e.body["name"]), json.dumps(e.body, separators=(",", ":")),
                 e.expires_at, now) for e in entries]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO data_entry VALUES (?, ?, ?, ?, ?, ?)", rows)

        self._write(write)
        table = self._clients[cuid].entries(kind)
        for entry in entries:
            table[str(entry.body["name"])] = entry

    def delete_entries(self, cuid: str, kind: str, names: Iterable[str]) -> None:
        names = list(names)

        def write(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM data_entry WHERE cuid = ? AND kind = ? AND name = ?",
                           [(cuid, kind, name) for name in names])

        self._write(write)
        table = self._clients[cuid].entries(kind)
        for name in names:
            table.pop(name, None)

    def _write(self, change: Any) -> None:
        try:
            with _transaction(self._db):
                change(self._db)
        except sqlite3.Error as exc:
            self.save_failures += 1
            log.error("data channel not saved (%d failures so far): %s", self.save_failures, exc)
            raise PersistenceError(f"{self.path}: save failed: {exc}") from exc
        self.saves += 1

    # --- the signal channel's view (RFC 9133, RFC 9132 §4.4.1.3) ----------------------------------

    def lookup(self, cuid: str, acl_name: str) -> Mapping[str, Any] | None:
        """The ACL ``acl_name`` of client ``cuid`` as RFC 8783 JSON, None when there is none
        (or its pending lifetime ran out). Satisfies ``AclCatalog.lookup``."""
        return self._live(cuid, "acls", acl_name)

    def acl_names(self, cuid: str) -> list[str]:
        """The names of client ``cuid``'s live ACLs. Makes this a ``ListingAclCatalog``: a
        mitigation then also activates the client's 'activate-when-mitigating' ACLs that its
        acl-list does not name (RFC 8783 §7.1)."""
        client = self._clients.get(cuid)
        if client is None:
            return []
        return [name for name in client.acls if self._live(cuid, "acls", name) is not None]

    def alias(self, cuid: str, alias_name: str) -> Mapping[str, Any] | None:
        """The alias ``alias_name`` of client ``cuid`` as RFC 8783 JSON, or None."""
        return self._live(cuid, "aliases", alias_name)

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        """Set the ACL's activation-type (a mitigation request changed it, RFC 9133 §3) and
        save it before returning. Raises KeyError for an unknown ACL, ValueError for an
        unknown activation type, ``PersistenceError`` when the write fails (nothing
        changed). Satisfies ``AclCatalog.update_activation``."""
        try:
            check_activation(activation_type)
        except RestconfError as exc:
            raise ValueError(exc.message) from None
        client = self._clients.get(cuid)
        entry = client.acls.get(acl_name) if client is not None else None
        if client is None or entry is None:
            raise KeyError(f"client {cuid} has no ACL named {acl_name}")
        if entry.body.get("activation-type") == activation_type:
            return
        body = dict(entry.body) | {"activation-type": activation_type}
        self.put_entries(cuid, "acls", [Entry(body, entry.expires_at)])

    def _live(self, cuid: str, kind: str, name: str) -> Mapping[str, Any] | None:
        client = self._clients.get(cuid)
        entry = client.entries(kind).get(name) if client is not None else None
        if entry is None or (entry.expires_at is not None and entry.expires_at <= time.time()):
            return None
        return entry.body
