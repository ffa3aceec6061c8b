"""Conflict detection for the mitigation store (RFC 9132 §4.4.1.3): which existing requests a
request overlaps, and what each overlap means.

Overlaps with the same client's own requests are settled by mid and trigger type: a lower
mid arriving late is refused with 4.09, the overlapping requests of the same type are
superseded by the new one, and preconfigured ones yield to an immediate one (and the
immediate ones to preconfigured ones armed on signal loss). Overlaps with other clients'
active requests go to the operator's ``ConflictResolver`` (``gateway.dots.conflict``),
whose decision becomes a 4.09 or the ``conflict-information`` the store records.

Every overlap search of the store goes through ``ConflictDetector``, which answers from a
``TargetIndex`` (records by prefix, FQDN, URI and alias) rather than by looking at every
request: the work of a PUT grows with the number of requests it overlaps, not with how many
its client or the other clients hold. The store tells the detector when a record enters or
leaves its mappings (``track``, ``untrack``); the detector never changes a record: state
changes, outputs and change tracking stay with ``MitigationStore``
(``gateway.dots.mitigation``).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.dots.codes import ConflictCause, ConflictStatus
from gateway.dots.conflict import (
    ConflictDecision,
    ConflictingMitigation,
    ConflictingRequest,
    ConflictResolver,
)
from gateway.dots.mitigation_lifecycle import INDEFINITE, UINT32_MAX, Mitigation, MitigationState
from gateway.dots.model import ConflictInformation, ConflictScope, PortRange, Scope, Targets

S = MitigationState


@dataclass(frozen=True, slots=True)
class OwnOverlaps:
    """The same client's live requests that overlap a new one, split by trigger type."""

    same_type: list[Mitigation]
    other_type: list[Mitigation]


@dataclass(frozen=True, slots=True)
class Settlement:
    """The resolver's answer to a new immediate request that overlaps other clients' ones.

    ``conflict`` is recorded on the new request. The store deactivates ``losers`` once the new
    request exists (replace-existing), and records each ``shared`` conflict on an existing
    request that keeps running (accept-both).
    """

    conflict: ConflictInformation
    losers: list[Mitigation]
    shared: list[tuple[Mitigation, ConflictInformation]]


Key = tuple[str, int]
#: An index leaf: the records naming one target value, by client then mid.
Leaf = dict[str, dict[int, Mitigation]]
_WIDTH = {4: 32, 6: 128}


class TargetIndex:
    """The records by target value, to find those a scope overlaps without visiting others.

    Two requests overlap when they share an address, prefix, FQDN, URI or alias
    (``Targets.overlap``, RFC 9132 §4.4.1.3); ports and protocols only narrow an overlap, so
    they are not indexed. FQDNs are compared as ``Targets.overlap`` compares them (case and a
    trailing dot ignored), URIs and aliases exactly.

    Prefixes: two CIDR prefixes of one family overlap exactly when one contains the other.
    Those inside a new prefix (or equal to it) are the ones whose network address falls in
    its range: a range in the sorted list of (network, length) per family. Those containing
    it are found one length at a time among the lengths in use (at most 33 or 129 lookups).
    A query therefore costs O(log n + lengths in use + what it finds).
    """

    def __init__(self) -> None:
        self._leaves: dict[tuple[object, ...], Leaf] = {}
        #: Per family: the sorted (network, length) of every indexed prefix, and how many
        #: indexed prefixes have each length.
        self._starts: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._lengths: dict[int, dict[int, int]] = {4: {}, 6: {}}
        #: Per record: its insertion number (answers come back in that order, as a scan of the
        #: store's records in insertion order would give them) and the leaves it is in.
        self._entries: dict[Key, tuple[int, tuple[tuple[object, ...], ...]]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, record: Mitigation) -> None:
        key = (record.cuid, record.mid)
        if key in self._entries:
            self.remove(key)
        leaves = tuple(dict.fromkeys(_leaf_keys(record.scope)))
        for leaf_key in leaves:
            leaf = self._leaves.get(leaf_key)
            if leaf is None:
                leaf = self._leaves[leaf_key] = {}
                if leaf_key[0] == "prefix":
                    _kind, version, network, length = leaf_key
                    assert isinstance(version, int) and isinstance(network, int)
                    assert isinstance(length, int)
                    insort(self._starts[version], (network, length))
                    lengths = self._lengths[version]
                    lengths[length] = lengths.get(length, 0) + 1
            leaf.setdefault(record.cuid, {})[record.mid] = record
        self._entries[key] = (self._next, leaves)
        self._next += 1

    def remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        cuid, mid = key
        for leaf_key in entry[1]:
            leaf = self._leaves[leaf_key]
            client = leaf[cuid]
            del client[mid]
            if client:
                continue
            del leaf[cuid]
            if leaf:
                continue
            del self._leaves[leaf_key]
            if leaf_key[0] == "prefix":
                _kind, version, network, length = leaf_key
                assert isinstance(version, int) and isinstance(length, int)
                starts = self._starts[version]
                del starts[bisect_left(starts, (network, length))]
                lengths = self._lengths[version]
                lengths[length] -= 1
                if not lengths[length]:
                    del lengths[length]

    def overlapping(
        self, targets: Targets, *, cuid: str | None = None, exclude: str | None = None
    ) -> list[Mitigation]:
        """The indexed records whose targets overlap ``targets`` (each once, in insertion
        order): only client ``cuid``'s when given, none of client ``exclude``'s."""
        found: dict[Key, Mitigation] = {}
        for leaf in self._matching_leaves(targets):
            if cuid is not None:
                for record in leaf.get(cuid, {}).values():
                    found[(record.cuid, record.mid)] = record
                continue
            for client, records in leaf.items():
                if client != exclude:
                    for record in records.values():
                        found[(record.cuid, record.mid)] = record
        if len(found) < 2:
            return list(found.values())
        entries = self._entries
        return sorted(found.values(), key=lambda r: entries[(r.cuid, r.mid)][0])

    def _matching_leaves(self, targets: Targets) -> Iterator[Leaf]:
        leaves = self._leaves
        for prefix in targets.target_prefix:
            version = prefix.version
            network = int(prefix.network_address)
            last = int(prefix.broadcast_address)
            starts = self._starts[version]
            # Equal to the prefix, inside it, or containing it from the same first address.
            for i in range(bisect_left(starts, (network, -1)), len(starts)):
                start, length = starts[i]
                if start > last:
                    break
                yield leaves[("prefix", version, start, length)]
            # Containing it, from a lower first address.
            width = _WIDTH[version]
            for length in self._lengths[version]:
                if length >= prefix.prefixlen:
                    continue
                start = network & ~((1 << (width - length)) - 1)
                if start != network:
                    leaf = leaves.get(("prefix", version, start, length))
                    if leaf is not None:
                        yield leaf
        for leaf_key in _leaf_keys(targets, prefixes=False):
            leaf = leaves.get(leaf_key)
            if leaf is not None:
                yield leaf


def _leaf_keys(targets: Targets, *, prefixes: bool = True) -> Iterator[tuple[object, ...]]:
    if prefixes:
        for p in targets.target_prefix:
            yield ("prefix", p.version, int(p.network_address), p.prefixlen)
    for fqdn in targets.target_fqdn:
        yield ("fqdn", fqdn.lower().rstrip("."))
    for uri in targets.target_uri:
        yield ("uri", uri)
    for alias in targets.alias_name:
        yield ("alias", alias)


class ConflictDetector:
    """Overlap searches over the store's records, answered from a ``TargetIndex`` that the
    store keeps in step with its mappings (``track``/``untrack``)."""

    def __init__(self, resolver: ConflictResolver) -> None:
        self.resolver = resolver
        self.index = TargetIndex()

    def track(self, record: Mitigation) -> None:
        """``record`` is now in the store (created or restored)."""
        self.index.add(record)

    def untrack(self, record: Mitigation) -> None:
        """``record`` has left the store."""
        self.index.remove((record.cuid, record.mid))

    def own_overlaps(self, cuid: str, mid: int, scope: Scope) -> OwnOverlaps:
        """The client's requests that ``scope`` (new, with ``mid``) overlaps, in mid order.

        ``ConflictingRequest`` when one of the same type has a higher mid and is not being
        withdrawn: the new request arrived late (§4.4.1.3).
        """
        same_type: list[Mitigation] = []
        other_type: list[Mitigation] = []
        overlapping = self.index.overlapping(scope, cuid=cuid)
        for record in sorted(overlapping, key=lambda r: r.mid):
            if record.state is S.ENDED:
                continue
            (same_type if record.immediate == scope.triggers_immediately else other_type).append(
                record
            )
        for record in same_type:
            if record.mid > mid and record.state is not S.TERMINATING:
                overlap = record.scope.overlap(scope)
                assert overlap is not None
                raise ConflictingRequest(  # §4.4.1.3: a lower mid arrived late
                    f"overlaps mitigation mid {record.mid}, which has a higher mid",
                    ConflictInformation(
                        ConflictCause.OVERLAPPING_TARGETS,
                        conflict_scope=_conflict_scope(overlap, record.mid),
                    ),
                )
        return OwnOverlaps(same_type, other_type)

    def other_clients(
        self, cuid: str, scope: Scope, now: float
    ) -> list[tuple[Mitigation, ConflictingMitigation]]:
        """Other clients' active immediate requests that ``scope`` overlaps, each with what a
        resolver may see of it."""
        found = []
        for record in self.index.overlapping(scope, exclude=cuid):
            if record.state is not S.MITIGATING or not record.immediate:
                continue
            overlap = record.scope.overlap(scope)
            assert overlap is not None
            found.append(
                (
                    record,
                    ConflictingMitigation(
                        record.cuid, record.mid, overlap, record.remaining_lifetime(now)
                    ),
                )
            )
        return found

    def settle(
        self, scope: Scope, conflicts: list[tuple[Mitigation, ConflictingMitigation]]
    ) -> Settlement:
        """Ask the resolver about ``conflicts`` (from ``other_clients``); ``ConflictingRequest``
        with the longest remaining lifetime as retry-timer when it rejects the new request."""
        views = [c for _r, c in conflicts]
        decision = self.resolver(scope, views)
        overlap = _merge_overlaps([c.overlap for c in views])
        if decision is ConflictDecision.REJECT_NEW:
            remaining = [c.remaining_lifetime for c in views]
            retry = UINT32_MAX if INDEFINITE in remaining else max(remaining)
            raise ConflictingRequest(
                "overlaps an active mitigation of another DOTS client",
                ConflictInformation(
                    ConflictCause.OVERLAPPING_TARGETS,
                    ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
                    retry_timer=retry,
                    conflict_scope=_conflict_scope(overlap),
                ),
            )
        info = ConflictInformation(
            ConflictCause.OVERLAPPING_TARGETS,
            ConflictStatus.REQUEST_ACTIVE,
            conflict_scope=_conflict_scope(overlap),
        )
        if decision is ConflictDecision.ACCEPT_BOTH:
            shared = [
                (
                    record,
                    ConflictInformation(
                        ConflictCause.OVERLAPPING_TARGETS,
                        ConflictStatus.REQUEST_ACTIVE,
                        conflict_scope=_conflict_scope(c.overlap),
                    ),
                )
                for record, c in conflicts
            ]
            return Settlement(info, [], shared)
        return Settlement(info, [record for record, _c in conflicts], [])

    def preempted_by(self, cuid: str, armed: list[Mitigation]) -> list[Mitigation]:
        """The client's active immediate requests, in mid order, that overlap one of ``armed``
        (its preconfigured requests just armed on signal loss)."""
        found: dict[int, Mitigation] = {}
        for preconfigured in armed:
            for record in self.index.overlapping(preconfigured.scope, cuid=cuid):
                if record.immediate and record.state is S.MITIGATING:
                    found[record.mid] = record
        return [found[mid] for mid in sorted(found)]


def lost_to(loser: Mitigation, winner: Mitigation) -> tuple[ConflictInformation, int]:
    """What a request deactivated in favour of ``winner`` records, and its retry-timer: the
    winner's lifetime, or the largest uint32 for an indefinite one."""
    retry = UINT32_MAX if winner.lifetime == INDEFINITE else winner.lifetime
    overlap = loser.scope.overlap(winner.scope)
    info = ConflictInformation(
        ConflictCause.OVERLAPPING_TARGETS,
        ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
        retry_timer=retry,
        conflict_scope=None if overlap is None else _conflict_scope(overlap),
    )
    return info, retry


def _conflict_scope(overlap: Targets, mid: int | None = None) -> ConflictScope:
    return ConflictScope(**{f: getattr(overlap, f) for f in Targets.__dataclass_fields__}, mid=mid)


def _merge_overlaps(overlaps: list[Targets]) -> Targets:
    merged: dict[str, dict[object, object]] = {f: {} for f in Targets.__dataclass_fields__}
    for o in overlaps:
        for f, values in merged.items():
            for v in getattr(o, f):
                # port ranges are keyed by lower-port (RFC 9132 §5.1 list key)
                values.setdefault(v.lower_port if isinstance(v, PortRange) else v, v)
    return Targets(**{f: tuple(v.values()) for f, v in merged.items()})  # type: ignore[arg-type]
