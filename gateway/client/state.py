"""What a DOTS client keeps across restarts: next mid and sid, its cuid, Happy Eyeballs results.

RFC 9132 §4.4.1.1 wants mids to increase monotonically per (cuid, server), including across
client restarts: a restarted client that counted from 0 again would see its new requests
refused with 4.09 (a lower mid overlapping one of its own older requests) or, worse, replace
requests it no longer knows about. So the next mid is written to disk *before* a request
carrying it is sent (one small JSON file, replaced atomically and fsync'ed). A file lock
makes concurrent processes sharing a state directory (two ``dots-client`` runs) draw
distinct, increasing mids. Without a directory the state lives in memory only.

The same file remembers a cuid chosen after a collision (§4.4.1.1: the cuid SHOULD stay stable
per server) and the winner of the last Happy Eyeballs race (§4.3: cache it ~10 minutes).

This module touches the file system only; it must not import asyncio or the transports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.dots.client import DotsClientCore

log = logging.getLogger(__name__)

STATE_FILE = "dots-client.json"
LOCK_FILE = "dots-client.lock"
_VERSION = 1


class ClientState:
    """The client's persistent counters; ``directory=None`` keeps them in memory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._memory: dict[str, Any] = {"version": _VERSION}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._locked():
                pass  # fail early (unwritable directory), not on the first request

    # --- identifiers -------------------------------------------------------------------------

    def allocate_mid(self, core: DotsClientCore) -> int:
        """The next mid, persisted before it is returned (so before any request carries it).

        The counter is one per state directory, whatever the cuid: monotonic per cuid follows.
        The core applies the §4.4.1.1 rollover at 3/4 of 2^32-1 (not under attack).
        """
        with self._transaction() as data:
            core.next_mid = max(core.next_mid, int(data.get("next_mid", 0)))
            mid = core.allocate_mid()
            data["next_mid"] = core.next_mid
        return mid

    def note_mid(self, core: DotsClientCore, mid: int) -> None:
        """A mid used explicitly, or seen in a conflict: never allocate it or a lower one."""
        with self._transaction() as data:
            core.next_mid = max(core.next_mid, int(data.get("next_mid", 0)), mid + 1)
            data["next_mid"] = core.next_mid

    def allocate_sid(self, core: DotsClientCore) -> int:
        """The next session-configuration sid (§4.5.2: monotonically increasing), persisted."""
        with self._transaction() as data:
            core.config.next_sid = max(core.config.next_sid, int(data.get("next_sid", 0)))
            sid = core.config.allocate_sid()
            data["next_sid"] = core.config.next_sid
        return sid

    def allocate_id(self, name: str, at_least: int = 0) -> int:
        """The next ``tsid`` or ``tmid`` (RFC 9244 §7.1.2, §8.2: they increase monotonically
        like mids), persisted before it is returned; ``at_least``: an id the caller chose."""
        if name not in ("tsid", "tmid"):
            raise ValueError(f"no counter named {name!r}")
        with self._transaction() as data:
            ident = max(int(data.get(f"next_{name}", 0)), at_least)
            data[f"next_{name}"] = ident + 1
        return ident

    def note_id(self, name: str, ident: int) -> None:
        """An id used explicitly: never allocate it or a lower one."""
        self.allocate_id(name, ident)

    def load_counters(self, core: DotsClientCore) -> None:
        data = self._read()
        core.next_mid = max(core.next_mid, int(data.get("next_mid", 0)))
        core.config.next_sid = max(core.config.next_sid, int(data.get("next_sid", 0)))

    def cuid_for(self, derived: str) -> str:
        """The cuid in use for a credential: the derived one unless a collision replaced it."""
        replaced = self._read().get("cuids", {}).get(derived)
        return str(replaced) if replaced else derived

    def replace_cuid(self, derived: str, new: str) -> None:
        with self._transaction() as data:
            data.setdefault("cuids", {})[derived] = new

    # --- Happy Eyeballs cache ----------------------------------------------------------------

    def cached_winner(self, key: str, wall_now: float, ttl: float) -> dict[str, Any] | None:
        entry = self._read().get("happy_eyeballs", {}).get(key)
        if not isinstance(entry, dict) or not 0 <= wall_now - float(entry.get("at", 0)) < ttl:
            return None
        return entry

    def remember_winner(self, key: str, entry: dict[str, Any]) -> None:
        with self._transaction() as data:
            cache = data.setdefault("happy_eyeballs", {})
            cache[key] = entry
            if len(cache) > 64:  # bounded: oldest entries go first
                for old in sorted(cache, key=lambda k: cache[k].get("at", 0))[:-64]:
                    del cache[old]

    def forget_winner(self, key: str) -> None:
        with self._transaction() as data:
            data.get("happy_eyeballs", {}).pop(key, None)

    # --- storage -----------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if self.directory is None:
            return self._memory
        with self._locked():
            return self._load()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        if self.directory is None:
            yield self._memory
            return
        with self._locked():
            data = self._load()
            yield data
            self._store(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.directory is not None
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> dict[str, Any]:
        assert self.directory is not None
        path = self.directory / STATE_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"version": _VERSION}
        except (OSError, ValueError) as exc:
            # A damaged file must not silently restart the mids at 0: refuse to go on.
            raise OSError(f"cannot read the DOTS client state {path}: {exc}; repair or remove "
                          "it (mids restart at 0 then, and may conflict with old requests)"
                          ) from exc
        if not isinstance(data, dict):
            raise OSError(f"{path} does not hold a JSON object")
        return data

    def _store(self, data: dict[str, Any]) -> None:
        assert self.directory is not None
        _atomic_write(self.directory / STATE_FILE, json.dumps(data, indent=1, sort_keys=True))


def _atomic_write(path: Path, text: str, fsync: Callable[[int], None] = os.fsync) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".dots-client-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)
