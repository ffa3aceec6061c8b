"""Conflict detection for the mitigation store (RFC 9132 §4.4.1.3): which existing requests a
request overlaps, and what each overlap means.

Overlaps with the same client's own requests are settled by mid and trigger type: a lower
mid arriving late is refused with 4.09, the overlapping requests of the same type are
superseded by the new one, and preconfigured ones yield to an immediate one (and the
immediate ones to preconfigured ones armed on signal loss). Overlaps with other clients'
active requests go to the operator's ``ConflictResolver`` (``gateway.dots.conflict``),
whose decision becomes a 4.09 or the ``conflict-information`` the store records.

Every overlap search of the store goes through ``ConflictDetector``, so an index on target
prefixes (to avoid looking at every request) belongs here and nowhere else. The detector
reads the store's records and never changes them: state changes, outputs and change tracking
stay with ``MitigationStore`` (``gateway.dots.mitigation``).
"""

from __future__ import annotations

from collections.abc import Mapping
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


class ConflictDetector:
    """Overlap searches over the store's records (the store's own mappings, read only)."""

    def __init__(
        self,
        records: Mapping[tuple[str, int], Mitigation],
        by_client: Mapping[str, Mapping[int, Mitigation]],
        resolver: ConflictResolver,
    ) -> None:
        self.resolver = resolver
        self._records = records
        self._by_client = by_client

    def own_overlaps(self, cuid: str, mid: int, scope: Scope) -> OwnOverlaps:
        """The client's requests that ``scope`` (new, with ``mid``) overlaps, in mid order.

        ``ConflictingRequest`` when one of the same type has a higher mid and is not being
        withdrawn: the new request arrived late (§4.4.1.3).
        """
        same_type: list[Mitigation] = []
        other_type: list[Mitigation] = []
        for _mid, record in sorted(self._by_client.get(cuid, {}).items()):
            if record.state is S.ENDED or not record.scope.overlap(scope):
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
        for record in self._records.values():
            if record.cuid == cuid or record.state is not S.MITIGATING or not record.immediate:
                continue
            overlap = record.scope.overlap(scope)
            if overlap is not None:
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
        return [
            record
            for _mid, record in sorted(self._by_client.get(cuid, {}).items())
            if record.immediate
            and record.state is S.MITIGATING
            and any(record.scope.overlap(p.scope) for p in armed)
        ]


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
