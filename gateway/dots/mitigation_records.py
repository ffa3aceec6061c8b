"""The mitigation store's tables: records by key and by client, owners, periods, outputs.

``MitigationRecords`` is the base of ``gateway.dots.mitigation.MitigationStore``: it holds
what the store knows and the bookkeeping around it, and decides nothing about RFC 9132.

* Every record enters and leaves through ``_insert``/``_discard``, which keep the per-client
  table and the conflict index (``gateway.dots.mitigation_conflicts``) in step.
* Persistence hooks: ``take_changes``/``take_client_changes`` report what changed since the
  last save; ``gateway/server/persistence.py`` writes it.
* Transactions: ``begin`` opens a journal of the prior value of every key, owner and
  per-client period a request touches, ``commit`` forgets it once the role has saved the
  changes, and ``rollback`` puts them back, with the outputs the request queued dropped,
  when the save failed (the client is then answered 5.03, and nothing else happened).
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from gateway.dots.conflict import ConflictResolver
from gateway.dots.errors import DotsUsageError
from gateway.dots.mitigation_conflicts import ConflictDetector
from gateway.dots.mitigation_lifecycle import ACTIVE_STATES, Mitigation, Owner, StoreOutput

log = logging.getLogger("gateway.dots.mitigation")  # one logger for the whole store

_ABSENT = object()  # a journal entry's "there was none" (None is a valid period)
_RECORD_FIELDS = tuple(f.name for f in fields(Mitigation))


@dataclass(slots=True)
class _Journal:
    """What an open transaction changed: prior values, first touch only."""

    #: How many outputs were queued at ``begin``: the ones after it are the request's.
    outputs: int
    #: key -> (the object that was at the key, a copy of its fields then) or None if none.
    records: dict[tuple[str, int], tuple[Mitigation, Mitigation] | None] = field(
        default_factory=dict)
    owners: dict[str, object] = field(default_factory=dict)
    periods: dict[str, object] = field(default_factory=dict)


class MitigationRecords:
    """What the store holds, with change tracking and transactions; no protocol decisions."""

    def __init__(self, resolver: ConflictResolver) -> None:
        self._records: dict[tuple[str, int], Mitigation] = {}
        #: The same records by client: per-request work must not grow with other clients'.
        self._by_client: dict[str, dict[int, Mitigation]] = {}
        #: Every overlap search goes through here (RFC 9132 §4.4.1.3).
        self._conflicts = ConflictDetector(resolver)
        self._owners: dict[str, Owner] = {}
        self._termination_period: dict[str, int] = {}
        self._outputs: deque[StoreOutput] = deque()
        #: Keys created, changed or removed since the last ``take_changes`` (an ordered set).
        self._touched: dict[tuple[str, int], None] = {}
        #: Clients whose active-but-terminating period changed since ``take_client_changes``.
        self._touched_clients: dict[str, None] = {}
        #: The open transaction (``begin``), if any.
        self._journal: _Journal | None = None

    @property
    def resolver(self) -> ConflictResolver:
        """The operator's policy for other clients' overlapping requests; a reload sets it."""
        return self._conflicts.resolver

    @resolver.setter
    def resolver(self, resolver: ConflictResolver) -> None:
        self._conflicts.resolver = resolver

    def next_event(self) -> StoreOutput | None:
        return self._outputs.popleft() if self._outputs else None

    def get_timer(self) -> float | None:
        deadlines = [d for r in self._records.values() if (d := r.deadline()) is not None]
        return min(deadlines) if deadlines else None

    def records(self, cuid: str | None = None) -> Iterator[Mitigation]:
        if cuid is not None:
            for _mid, record in sorted(self._by_client.get(cuid, {}).items()):
                yield record
            return
        for _key, record in sorted(self._records.items()):
            yield record

    def lookup(self, cuid: str, mid: int) -> Mitigation | None:
        return self._records.get((cuid, mid))

    def count(self, cuid: str) -> int:
        """How many requests the client holds, in any state (what its cap counts)."""
        return len(self._by_client.get(cuid, ()))

    def is_mitigating(self, cuid: str) -> bool:
        """Whether any request of this client is active: selects mitigating-config (§4.5)."""
        # Unsorted on purpose: it runs for every session on every timer sweep.
        return any(r.state in ACTIVE_STATES for r in self._by_client.get(cuid, {}).values())

    def owner_of(self, cuid: str) -> Owner | None:
        return self._owners.get(cuid)

    @property
    def changed(self) -> bool:
        """Whether ``take_changes`` or ``take_client_changes`` has anything to give."""
        return bool(self._touched or self._touched_clients)

    def take_changes(self) -> tuple[list[Mitigation], list[tuple[str, int]]]:
        """What to save since the last call: the records that were created or changed (the
        live objects, in their current state) and the keys of records that are gone.

        A key removed and created again in between (a re-request during
        active-but-terminating with the same mid) is reported once, as changed.
        """
        changed: list[Mitigation] = []
        removed: list[tuple[str, int]] = []
        for key in self._touched:
            record = self._records.get(key)
            if record is None:
                removed.append(key)
            else:
                changed.append(record)
        self._touched.clear()
        return changed, removed

    def take_client_changes(self) -> dict[str, int | None]:
        """Per-client active-but-terminating periods changed since the last call; None means
        the client is back at the policy default (§4.4.4)."""
        changes = {cuid: self._termination_period.get(cuid) for cuid in self._touched_clients}
        self._touched_clients.clear()
        return changes

    def begin(self) -> None:
        """Start recording prior values, so that ``rollback`` can undo what follows."""
        if self._journal is not None:
            raise DotsUsageError("a transaction is open already")
        self._journal = _Journal(outputs=len(self._outputs))

    def commit(self) -> None:
        """Keep the changes since ``begin`` (they were saved)."""
        if self._journal is None:
            raise DotsUsageError("no transaction is open")
        self._journal = None

    def rollback(self) -> None:
        """Put every record, owner and period back as it was at ``begin`` and drop the
        outputs queued since: the mitigator and observers never hear of the changes.

        The keys are marked changed again, so the next ``take_changes`` hands persistence
        the restored values (a failed save may still hold the undone ones).
        """
        journal = self._journal
        if journal is None:
            raise DotsUsageError("no transaction is open")
        self._journal = None
        for key, prior in journal.records.items():
            current = self._records.get(key)
            if current is not None:
                self._discard(current)
            if prior is not None:
                record, saved = prior
                for f in _RECORD_FIELDS:
                    setattr(record, f, getattr(saved, f))
                self._insert(record)
            self._touched[key] = None
        for cuid, owner in journal.owners.items():
            if owner is _ABSENT:
                self._owners.pop(cuid, None)
            else:
                assert isinstance(owner, Owner)
                self._owners[cuid] = owner
        for cuid, period in journal.periods.items():
            if period is _ABSENT:
                self._termination_period.pop(cuid, None)
            else:
                assert isinstance(period, int)
                self._termination_period[cuid] = period
            self._touched_clients[cuid] = None
        while len(self._outputs) > journal.outputs:
            self._outputs.pop()
        log.info("request rolled back: %d mitigations restored", len(journal.records))

    def _before_change(self, key: tuple[str, int]) -> None:
        """Journal the record at ``key`` (or its absence) before its first change."""
        journal = self._journal
        if journal is None or key in journal.records:
            return
        record = self._records.get(key)
        journal.records[key] = None if record is None else (record, copy.copy(record))

    def _before_owner(self, cuid: str) -> None:
        journal = self._journal
        if journal is not None and cuid not in journal.owners:
            journal.owners[cuid] = self._owners.get(cuid, _ABSENT)

    def _before_period(self, cuid: str) -> None:
        journal = self._journal
        if journal is not None and cuid not in journal.periods:
            journal.periods[cuid] = self._termination_period.get(cuid, _ABSENT)

    def _insert(self, record: Mitigation) -> None:
        """The one place a record enters the store's indexes (``_discard`` leaves them)."""
        self._records[(record.cuid, record.mid)] = record
        self._by_client.setdefault(record.cuid, {})[record.mid] = record
        self._conflicts.track(record)

    def _discard(self, record: Mitigation) -> None:
        del self._records[(record.cuid, record.mid)]
        self._conflicts.untrack(record)
        client = self._by_client.get(record.cuid, {})
        client.pop(record.mid, None)
        if not client:
            self._by_client.pop(record.cuid, None)

    def _touch(self, record: Mitigation) -> None:
        """Mark the record's key for the next ``take_changes`` (changed, or removed if gone)."""
        self._touched[(record.cuid, record.mid)] = None
