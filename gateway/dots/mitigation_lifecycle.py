"""One mitigation request's life (RFC 9132 §4.4): its states, the transition table, the
record the store keeps, the lifetime policy, and what a change of state tells the outside.

``MitigationStore`` (``gateway.dots.mitigation``) drives these records: it fires the
triggers, keeps the records and emits the commands (``ApplyMitigation``,
``WithdrawMitigation``) and events (``MitigationStatusChanged``, ``MitigationRemoved``)
defined here. The transition table is only read through ``next_state``. Like the rest of the
core, this module reads no clock: deadlines are absolute values of the caller's ``now``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from gateway.dots.codes import AttackStatus, Status
from gateway.dots.errors import DotsUsageError
from gateway.dots.filters import ActiveAcl
from gateway.dots.model import ConflictInformation, Scope

INDEFINITE = -1
#: RFC 9132 §4.4.1.3: a deactivated request is kept retry-timer + 45 s.
DEACTIVATED_GRACE = 45
#: RFC 9132 Table 3: status 3 (preconfigured) and 7 (preconfigured displaced) are reported
#: four times, then the request reverts to 8.
TRANSIENT_REPORTS = 4
#: Largest lifetime a uint32 can carry; also what retry-timer uses for indefinite winners.
UINT32_MAX = 2**32 - 1


class MitigationState(enum.Enum):
    AWAIT_SIGNAL_LOSS = "await-signal-loss"  # trigger-mitigation=false, status 8
    MITIGATING = "mitigating"  # statuses 1-4, reported by the mitigator
    DEACTIVATED = "deactivated"  # lost a conflict with another client, status 7
    TERMINATING = "terminating"  # withdrawn by the client, active-but-terminating, status 5
    ENDED = "ended"  # gone from the store


class Trigger(enum.Enum):
    SIGNAL_LOST = "signal-lost"
    PREEMPTED = "preempted"  # a preconfigured mitigation yields to an immediate one
    ATTACK_STOPPED = "attack-stopped"  # mitigator says status 3 on a preconfigured request
    WITHDRAWN = "withdrawn"  # DELETE from the client
    REREQUESTED = "rerequested"  # PUT during active-but-terminating
    CONFLICT_LOST = "conflict-lost"
    REACTIVATED = "reactivated"  # refresh of a deactivated request once the conflict is gone
    SUPERSEDED = "superseded"  # replaced by the same client's request with a higher mid
    SERVER_WITHDREW = "server-withdrew"  # yields to preconfigured requests on signal loss
    TERMINATION_ELAPSED = "termination-elapsed"
    LIFETIME_EXPIRED = "lifetime-expired"


S, T = MitigationState, Trigger
_TRANSITIONS: dict[tuple[MitigationState, Trigger], MitigationState] = {
    (S.AWAIT_SIGNAL_LOSS, T.SIGNAL_LOST): S.MITIGATING,
    (S.AWAIT_SIGNAL_LOSS, T.WITHDRAWN): S.ENDED,
    (S.AWAIT_SIGNAL_LOSS, T.SUPERSEDED): S.ENDED,
    (S.AWAIT_SIGNAL_LOSS, T.LIFETIME_EXPIRED): S.ENDED,
    (S.MITIGATING, T.PREEMPTED): S.AWAIT_SIGNAL_LOSS,
    (S.MITIGATING, T.ATTACK_STOPPED): S.AWAIT_SIGNAL_LOSS,
    (S.MITIGATING, T.WITHDRAWN): S.TERMINATING,
    (S.MITIGATING, T.CONFLICT_LOST): S.DEACTIVATED,
    (S.MITIGATING, T.SUPERSEDED): S.ENDED,
    (S.MITIGATING, T.SERVER_WITHDREW): S.ENDED,
    (S.MITIGATING, T.LIFETIME_EXPIRED): S.ENDED,
    (S.DEACTIVATED, T.REACTIVATED): S.MITIGATING,
    (S.DEACTIVATED, T.WITHDRAWN): S.ENDED,
    (S.DEACTIVATED, T.SUPERSEDED): S.ENDED,
    (S.DEACTIVATED, T.LIFETIME_EXPIRED): S.ENDED,
    (S.TERMINATING, T.REREQUESTED): S.MITIGATING,
    (S.TERMINATING, T.SUPERSEDED): S.ENDED,
    (S.TERMINATING, T.TERMINATION_ELAPSED): S.ENDED,
    (S.TERMINATING, T.LIFETIME_EXPIRED): S.ENDED,
}
#: States in which the mitigator is (still) acting on the request.
ACTIVE_STATES = frozenset({S.MITIGATING, S.TERMINATING})


class TransitionRefused(DotsUsageError):
    """A trigger that has no entry for the current state; the state is left unchanged."""


def next_state(record: Mitigation, trigger: Trigger) -> MitigationState:
    """The state ``trigger`` takes the record to; ``TransitionRefused`` when the table has no
    entry (the caller then changes nothing)."""
    new = _TRANSITIONS.get((record.state, trigger))
    if new is None:
        raise TransitionRefused(
            f"mitigation cuid={record.cuid} mid={record.mid}: trigger {trigger.value} "
            f"is not allowed in state {record.state.value}"
        )
    return new


@dataclass(frozen=True, slots=True)
class Owner:
    """The credential (and, behind a trusted gateway, the cdid) that created a cuid's requests."""

    credential_id: str
    cdid: str | None = None


@dataclass(frozen=True, slots=True)
class MitigationPolicy:
    active_but_terminating: int = 120  # RFC 9132 §4.4.4 default
    active_but_terminating_max: int = 300  # RFC 9132 §4.4.4 ceiling
    allow_indefinite_lifetime: bool = True
    max_lifetime: int = 0  # 0 = no cap
    #: What an indefinite request is granted when policy refuses -1 and there is no cap.
    refused_indefinite_lifetime: int = 3600
    #: The most requests one client (cuid) may hold, in any state: a withdrawn request still
    #: mitigated (active-but-terminating) and a preconfigured or deactivated one count too,
    #: since each is kept, indexed and reported. A new request beyond it gets 5.03.
    max_requests_per_client: int = 1000

    def grant(self, requested: int) -> int:
        """The lifetime the server grants (RFC 9132 §4.4.1.1: it returns the granted value)."""
        if requested == INDEFINITE:
            if self.allow_indefinite_lifetime and not self.max_lifetime:
                return INDEFINITE
            return self.max_lifetime or self.refused_indefinite_lifetime
        return min(requested, self.max_lifetime) if self.max_lifetime else requested


@dataclass(frozen=True, slots=True)
class Counters:
    bytes_dropped: int | None = None
    bps_dropped: int | None = None
    pkts_dropped: int | None = None
    pps_dropped: int | None = None


# --- the record --------------------------------------------------------------------------------


@dataclass(slots=True)
class Mitigation:
    cuid: str
    mid: int
    owner: Owner
    scope: Scope  # as requested (targets, lifetime, trigger-mitigation)
    lifetime: int  # granted, -1 = indefinite
    expires_at: float | None
    state: MitigationState
    status: Status
    mitigation_start: int | None = None
    counters: Counters = field(default_factory=Counters)
    conflict: ConflictInformation | None = None
    terminate_at: float | None = None
    #: A status reported a limited number of times before the record shows ``status``.
    transient_status: Status | None = None
    transient_reports_left: int = 0

    @property
    def immediate(self) -> bool:
        return self.scope.triggers_immediately

    def remaining_lifetime(self, now: float) -> int:
        if self.expires_at is None:
            return INDEFINITE
        return whole_seconds(self.expires_at - now)

    def lifetime_left(self, now: float) -> int:
        """The lifetime a GET reports (RFC 9132 §4.4.2): the remaining lifetime, cut short by
        the active-but-terminating period once the client withdrew the request."""
        lifetime = self.remaining_lifetime(now)
        if self.terminate_at is not None:
            left = whole_seconds(self.terminate_at - now)
            lifetime = left if lifetime == INDEFINITE else min(lifetime, left)
        return lifetime

    def deadline(self) -> float | None:
        times = [t for t in (self.expires_at, self.terminate_at) if t is not None]
        return min(times) if times else None


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplyMitigation:
    """Command: the mitigator should start (or keep) mitigating this scope."""

    cuid: str
    mid: int
    scope: Scope
    #: The ACLs active for it (RFC 9133); the server core fills them in from its catalog.
    acls: tuple[ActiveAcl, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateFilters:
    """Command: an active mitigation's acl-list changed (RFC 9133 §3.2: a PUT activated or
    deactivated ACLs); ``acls`` are the ones active now (filled in by the server core)."""

    cuid: str
    mid: int
    scope: Scope
    acls: tuple[ActiveAcl, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawMitigation:
    """Command: the mitigator should stop mitigating this request."""

    cuid: str
    mid: int
    reason: Trigger


@dataclass(frozen=True, slots=True)
class MitigationStatusChanged:
    """Event: what observers of this request (or of all of its client's) should be told."""

    cuid: str
    mid: int
    status: Status


@dataclass(frozen=True, slots=True)
class MitigationRemoved:
    """Event: the request no longer exists; its final status was ``status``."""

    cuid: str
    mid: int
    status: Status
    reason: Trigger


@dataclass(frozen=True, slots=True)
class MitigationTelemetry:
    """Command: telemetry for an active request, from a refresh or an efficacy update
    (RFC 9244 §9.1): the keys 204-207 of the scope, as received, and its attack-status."""

    cuid: str
    mid: int
    telemetry: tuple[tuple[int, Any], ...]
    attack_status: AttackStatus | None = None


StoreOutput = (ApplyMitigation | UpdateFilters | WithdrawMitigation | MitigationStatusChanged
               | MitigationRemoved | MitigationTelemetry)


def whole_seconds(remaining: float) -> int:
    """Remaining time rounded up, ignoring float noise (now + 3600 - now may be 3600.0000001)."""
    return max(0, math.ceil(remaining - 1e-6))
