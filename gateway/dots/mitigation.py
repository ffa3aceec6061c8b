"""Server-side mitigation store: the RFC 9132 §4.4 semantics, with the clock passed in.

Mitigations are bound to the client (its ``cuid``, and the credential that first used it),
not to a signal session (RFC 8811 §3.1). The store decides response codes for PUT, DELETE
and GET, keeps lifetimes, the active-but-terminating period, mid ordering and conflicts,
and emits commands for the mitigator (``ApplyMitigation``/``WithdrawMitigation``) and events
for observers (``MitigationStatusChanged``, ``MitigationRemoved``). It never reads a clock:
every call takes ``now`` (monotonic seconds); ``wall_offset`` turns it into epoch seconds
for ``mitigation-start``.

Persistence stays outside (``gateway/server/persistence.py``); the store only tracks what changed
(``take_changes``, ``take_client_changes``) and takes saved records back (``restore``). A
request's changes can be undone (``begin``/``commit``/``rollback``, when its save failed).

The record, its states and transition table, the policy and the outputs are in
``gateway.dots.mitigation_lifecycle``; finding overlapping requests and turning them into
4.09s or ``conflict-information`` is ``gateway.dots.mitigation_conflicts``; the tables of
records, owners and periods, with change tracking and transactions, are
``gateway.dots.mitigation_records``. This module holds the store that drives them: it
decides the answers, fires the transitions and emits the outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gateway.dots.codes import ConflictCause, Status
from gateway.dots.conflict import DEFAULT_RESOLVER, ConflictingRequest, ConflictResolver
from gateway.dots.errors import (
    DotsUsageError,
    InvalidValue,
    NotFound,
    ServiceUnavailable,
)
from gateway.dots.filters import acl_list_of, merge_acl_lists, with_acl_list
from gateway.dots.mitigation_conflicts import lost_to
from gateway.dots.mitigation_lifecycle import (
    ACTIVE_STATES,
    DEACTIVATED_GRACE,
    INDEFINITE,
    TRANSIENT_REPORTS,
    UINT32_MAX,
    ApplyMitigation,
    Counters,
    Mitigation,
    MitigationPolicy,
    MitigationRemoved,
    MitigationState,
    MitigationStatusChanged,
    MitigationTelemetry,
    Owner,
    Trigger,
    UpdateFilters,
    WithdrawMitigation,
    next_state,
)
from gateway.dots.mitigation_records import MitigationRecords
from gateway.dots.model import ConflictInformation, MitigationScope, Scope, Targets
from gateway.dots.telemetry_checks import SCOPE_TELEMETRY as _SCOPE_TELEMETRY
from gateway.dots.uri import ContentFilter
from gateway.eventlog import log_event

log = logging.getLogger(__name__)
S, T = MitigationState, Trigger


@dataclass(frozen=True, slots=True)
class PutResult:
    """How a PUT was processed: 2.01 when ``created``, else 2.04; the body to return."""

    created: bool
    body: MitigationScope


class MitigationStore(MitigationRecords):
    """All mitigation requests of all clients, with RFC 9132 §4.4 semantics."""

    def __init__(
        self,
        policy: MitigationPolicy | None = None,
        resolver: ConflictResolver = DEFAULT_RESOLVER,
        wall_offset: float = 0.0,
    ) -> None:
        super().__init__(resolver)
        self.policy = policy or MitigationPolicy()
        self.wall_offset = wall_offset
        #: New requests refused with 5.03 because their client was at its cap.
        self.refused_over_cap = 0

    # --- persistence -------------------------------------------------------------------------

    def restore(
        self,
        records: Iterable[Mitigation],
        now: float,
        termination_periods: Mapping[str, int] | None = None,
    ) -> None:
        """Put saved records back after a restart (``expires_at``/``terminate_at`` already on
        this process's clock); statuses, conflicts and counters are kept as saved.

        Records whose lifetime or active-but-terminating period ran out while the process was
        down end now, as ``handle_timer`` would have ended them: the key is reported removed
        and, if the mitigator was acting on it, ``WithdrawMitigation`` is emitted so a
        mitigator holding state outside this process cleans up. Every record that is still
        active (``MITIGATING``, and ``TERMINATING``, which §4.4.4 keeps mitigated until its
        period ends) gets ``ApplyMitigation`` again: the mitigator may have lost its state with
        the process. A record whose key is already in the store is our bug (restore runs once,
        on an empty store): ``DotsUsageError``.
        """
        restored: list[Mitigation] = []
        for record in sorted(records, key=lambda r: (r.cuid, r.mid)):
            key = (record.cuid, record.mid)
            if key in self._records:
                raise DotsUsageError(
                    f"cannot restore mitigation cuid={record.cuid} mid={record.mid}: "
                    "it is already in the store"
                )
            owner = self._owners.get(record.cuid)
            if record.state is S.ENDED or (
                owner is not None and owner.credential_id != record.owner.credential_id
            ):
                log.warning(
                    "not restoring mitigation cuid=%s mid=%d state=%s owner=%s: %s",
                    record.cuid,
                    record.mid,
                    record.state.value,
                    record.owner.credential_id,
                    "it had ended"
                    if record.state is S.ENDED
                    else "another credential owns the cuid",
                )
                continue
            self._insert(record)
            self._owners.setdefault(record.cuid, record.owner)
            restored.append(record)
        for cuid, period in (termination_periods or {}).items():
            # The configured maximum may have been lowered since the period was doubled.
            self._termination_period[cuid] = min(period, self.policy.active_but_terminating_max)
        self.handle_timer(now)  # what ran out while we were down ends now
        kept = [r for r in restored if self._records.get((r.cuid, r.mid)) is r]
        active = [r for r in kept if r.state in ACTIVE_STATES]
        for record in active:
            self._outputs.append(ApplyMitigation(record.cuid, record.mid, record.scope))
        log.info(
            "mitigations restored: %d kept (%d active), %d ended while down",
            len(kept),
            len(active),
            len(restored) - len(kept),
        )

    # --- transactions ------------------------------------------------------------------------







    # --- requests ----------------------------------------------------------------------------

    def put(
        self,
        cuid: str,
        mid: int,
        scope: Scope,
        owner: Owner,
        now: float,
        *,
        efficacy_update: bool = False,
    ) -> PutResult | None:
        """Process a validated mitigation PUT. None means "silently ignore" (§4.4.3)."""
        self._check_owner(cuid, owner)
        existing = self._records.get((cuid, mid))
        if existing is not None and existing.state is not S.TERMINATING:
            return self._refresh(existing, scope, now, efficacy_update)
        if efficacy_update:
            return None  # RFC 9132 §4.4.3: If-Match on an unknown mid is silently ignored
        return self._create(cuid, mid, scope, owner, now)

    def delete(self, cuid: str, mid: int, owner: Owner, now: float) -> None:
        """Withdraw (§4.4.4). Unknown mids are fine: the answer is 2.02 either way."""
        self._check_owner(cuid, owner)
        record = self._records.get((cuid, mid))
        if record is None or record.state is S.TERMINATING:
            return
        self._before_change((cuid, mid))
        if record.state is S.MITIGATING:
            period = self._termination_period.get(cuid, self.policy.active_but_terminating)
            record.terminate_at = now + period
            record.transient_status = None
            self._fire(record, T.WITHDRAWN, now)
            self._set_status(record, Status.DOTS_CLIENT_WITHDRAWN_MITIGATION)
            if period == 0:
                self._fire(record, T.TERMINATION_ELAPSED, now)
        else:
            self._fire(record, T.WITHDRAWN, now)

    def get(
        self,
        cuid: str,
        mid: int | None,
        owner: Owner,
        now: float,
        content: ContentFilter = ContentFilter.ALL,
    ) -> MitigationScope:
        """The GET view (§4.4.2): one mid or all of the client's; 4.04 when there is nothing."""
        self._check_owner(cuid, owner)
        if mid is not None:
            record = self._records.get((cuid, mid))
            if record is None:
                raise NotFound(f"no mitigation with mid {mid} for this client")
            records = [record]
        else:
            records = list(self.records(cuid))
            if not records:
                raise NotFound("this client has no mitigation requests")
        return MitigationScope(tuple(self.view(r, now, content) for r in records))

    def view(
        self,
        record: Mitigation,
        now: float,
        content: ContentFilter = ContentFilter.ALL,
        *,
        count_report: bool = True,
    ) -> Scope:
        """A record as the client sees it; each call counts as one report of its status."""
        status = record.status
        if record.transient_status is not None:
            status = record.transient_status
            if count_report:
                record.transient_reports_left -= 1
                if record.transient_reports_left <= 0:
                    record.transient_status = None
                self._touch(record)
        lifetime = record.lifetime_left(now)
        config = content is not ContentFilter.NON_CONFIG
        state = content is not ContentFilter.CONFIG
        base = record.scope.targets() if config else Targets()
        return Scope(
            **{f: getattr(base, f) for f in Targets.__dataclass_fields__},
            lifetime=lifetime,
            trigger_mitigation=record.scope.trigger_mitigation if config else None,
            mid=record.mid,
            # §4.4.2: mandatory while active, never for status 8
            mitigation_start=record.mitigation_start
            if state and status is not Status.ATTACK_MITIGATION_SIGNAL_LOSS
            else None,
            status=status if state else None,
            conflict_information=record.conflict if state else None,
            extensions=record.scope.extensions if config else (),
            **(_counters(record.counters) if state else {}),  # type: ignore[arg-type]
        )

    # --- mitigator and session inputs --------------------------------------------------------

    def signal_lost(self, cuid: str, now: float) -> None:
        """The client's signal session is lost (§4.7): arm its preconfigured requests.

        Active immediate requests overlapping them are withdrawn without an
        active-but-terminating period (§4.4.1.3: preconfigured ones take precedence).
        """
        armed = [r for r in self.records(cuid) if r.state is S.AWAIT_SIGNAL_LOSS]
        for record in armed:
            self._fire(record, T.SIGNAL_LOST, now)
            record.transient_status = None
            record.mitigation_start = self._epoch(now)
            self._set_status(record, Status.ATTACK_MITIGATION_IN_PROGRESS)
            self._outputs.append(ApplyMitigation(cuid, record.mid, record.scope))
        for record in self._conflicts.preempted_by(cuid, armed):
            self._fire(record, T.SERVER_WITHDREW, now)

    def update_status(
        self, cuid: str, mid: int, status: Status, now: float, counters: Counters | None = None
    ) -> None:
        """The mitigator reports progress (statuses 1-4) and counters for an active request."""
        record = self._records.get((cuid, mid))
        if record is None or record.state not in ACTIVE_STATES:
            return
        if counters is not None and counters != record.counters:
            record.counters = counters
            self._touch(record)
        if record.state is S.TERMINATING or status is record.status:
            return
        if status not in _MITIGATOR_STATUSES:
            raise DotsUsageError(f"the mitigator cannot report status {status.label}")
        if status is Status.ATTACK_STOPPED and not record.immediate:
            # Table 3: report "attack-stopped" four times, then back to signal-loss standby.
            self._fire(record, T.ATTACK_STOPPED, now)
            self._outputs.append(WithdrawMitigation(cuid, mid, T.ATTACK_STOPPED))
            self._set_status(
                record, Status.ATTACK_MITIGATION_SIGNAL_LOSS, transient=Status.ATTACK_STOPPED
            )
            return
        self._set_status(record, status)

    def handle_timer(self, now: float) -> None:
        for record in list(self._records.values()):
            if record.terminate_at is not None and now >= record.terminate_at:
                self._fire(record, T.TERMINATION_ELAPSED, now)
                # The client let the period run out: the next withdrawal starts at the default.
                if self._termination_period.pop(record.cuid, None) is not None:
                    self._touched_clients[record.cuid] = None
            elif record.expires_at is not None and now >= record.expires_at:
                self._fire(record, T.LIFETIME_EXPIRED, now)

    # --- internals ---------------------------------------------------------------------------

    def _check_owner(self, cuid: str, owner: Owner) -> None:
        current = self._owners.get(cuid)
        if current is not None and current.credential_id != owner.credential_id:
            # RFC 9132 §4.4.1.1: 4.09 with cause 3 and nothing else.
            raise ConflictingRequest(
                f"cuid {cuid} is in use by another DOTS client",
                ConflictInformation(ConflictCause.CUID_COLLISION),
            )

    def _check_cap(self, cuid: str, superseded: int) -> None:
        """5.03 when a new request would take the client over its cap; the ``superseded``
        requests it replaces (§4.4.1.3) make room for it."""
        cap = self.policy.max_requests_per_client
        held = self.count(cuid)
        if held - superseded < cap:
            return
        self.refused_over_cap += 1
        log_event(log, logging.WARNING, "mitigation.refused", "mitigation refused: the "
                  "client holds its cap of requests", cuid=cuid, held=held, cap=cap)
        # RFC 9132 §9: 5.03 is what a DOTS server answers when it is unable to handle a
        # request; a request over a resource cap is that, not a protocol violation (4.00) nor a
        # conflict (4.09). No Max-Age: room appears only when the client withdraws requests
        # or lets them expire, at no time we could name.
        raise ServiceUnavailable(
            f"this client holds {held} mitigation requests, the limit of {cap} "
            f"mitigation requests per client (max_requests_per_client) is reached: withdraw "
            "some first (withdrawn ones count until their active-but-terminating period ends)"
        )

    def _refresh(
        self, record: Mitigation, scope: Scope, now: float, efficacy_update: bool
    ) -> PutResult:
        if scope.request_key() != record.scope.request_key():
            # §4.4.1.3 / §4.4.3: a refresh repeats every parameter but lifetime.
            raise InvalidValue(
                f"mid {record.mid} exists with different parameters; only lifetime may change "
                "in a refresh or efficacy update"
            )
        requested = scope.lifetime if scope.lifetime is not None else record.scope.lifetime
        assert requested is not None
        lifetime = self.policy.grant(requested)
        self._before_change((record.cuid, record.mid))
        # RFC 9133 §3.2: a refresh or efficacy update may activate or deactivate ACLs; one
        # without an acl-list leaves the mitigation's as it was.
        current = acl_list_of(record.scope)
        update = acl_list_of(scope)
        acls = current if update is None else merge_acl_lists(current, update)
        filters_changed = acls != current
        if filters_changed:
            record.scope = with_acl_list(record.scope, acls)
        reactivated = record.state is S.DEACTIVATED
        if reactivated:
            if self._conflicts.other_clients(record.cuid, scope, now):
                self._touch(record)
                return PutResult(False, self._body(record, now))
            self._fire(record, T.REACTIVATED, now)
            record.conflict = None
            record.mitigation_start = self._epoch(now)
            self._set_status(record, Status.ATTACK_MITIGATION_IN_PROGRESS)
            self._outputs.append(ApplyMitigation(record.cuid, record.mid,
                                                 with_acl_list(scope, acls)))
        elif filters_changed:
            if record.state in ACTIVE_STATES:
                self._outputs.append(UpdateFilters(record.cuid, record.mid, record.scope))
            # Observers see the new acl-list in a notification (RFC 7641 §4.2: the state
            # of the resource changed).
            self._outputs.append(MitigationStatusChanged(record.cuid, record.mid,
                                                         record.transient_status or
                                                         record.status))
            log.info("filters changed cuid=%s mid=%d acl-list=%s", record.cuid, record.mid,
                     ",".join(f"{a.acl_name}:{a.activation_type}" for a in acls or ()) or "-")
        record.lifetime = lifetime
        record.expires_at = None if lifetime == INDEFINITE else now + lifetime
        record.scope = replace(record.scope, lifetime=requested, attack_status=None)
        self._touch(record)
        if efficacy_update:
            log_event(log, logging.INFO, "mitigation.efficacy", "efficacy update",
                      cuid=record.cuid, mid=record.mid,
                      attack_status=scope.attack_status.label if scope.attack_status else None)
        telemetry = tuple((k, v) for k, v in scope.extensions if k in _SCOPE_TELEMETRY)
        if telemetry and not reactivated:  # a reactivation's ApplyMitigation carries it
            # RFC 9244 §9.1: the mitigator gets the client's view of the attack.
            self._outputs.append(MitigationTelemetry(record.cuid, record.mid, telemetry,
                                                     scope.attack_status))
        return PutResult(False, self._body(record, now))

    def _create(self, cuid: str, mid: int, scope: Scope, owner: Owner, now: float) -> PutResult:
        assert scope.lifetime is not None
        own = self._conflicts.own_overlaps(cuid, mid, scope)
        self._check_cap(cuid, len(own.same_type))
        conflict: ConflictInformation | None = None
        losers: list[Mitigation] = []
        if scope.triggers_immediately:
            conflicts = self._conflicts.other_clients(cuid, scope, now)
            if conflicts:
                settled = self._conflicts.settle(scope, conflicts)
                conflict, losers = settled.conflict, settled.losers
                for other, info in settled.shared:
                    self._before_change((other.cuid, other.mid))
                    other.conflict = info
                    self._touch(other)
                    self._outputs.append(
                        MitigationStatusChanged(other.cuid, other.mid, other.status)
                    )
        lifetime = self.policy.grant(scope.lifetime)
        rerequest = any(r.state is S.TERMINATING for r in own.same_type)
        for record in own.same_type:
            self._fire(record, T.SUPERSEDED, now)
        if rerequest:
            # §4.4.4: mitigation requested again during active-but-terminating: the next
            # period doubles, up to the maximum.
            self._before_period(cuid)
            current = self._termination_period.get(cuid, self.policy.active_but_terminating)
            self._termination_period[cuid] = min(
                max(current, 1) * 2, self.policy.active_but_terminating_max
            )
            self._touched_clients[cuid] = None
        record = Mitigation(
            cuid=cuid,
            mid=mid,
            owner=owner,
            scope=replace(scope, attack_status=None),
            lifetime=lifetime,
            expires_at=None if lifetime == INDEFINITE else now + lifetime,
            state=S.MITIGATING if scope.triggers_immediately else S.AWAIT_SIGNAL_LOSS,
            status=(
                Status.ATTACK_MITIGATION_IN_PROGRESS
                if scope.triggers_immediately
                else Status.ATTACK_MITIGATION_SIGNAL_LOSS
            ),
            conflict=conflict,
        )
        self._before_change((cuid, mid))
        self._before_owner(cuid)
        self._insert(record)
        self._owners.setdefault(cuid, owner)
        self._touch(record)
        log_event(log, logging.INFO, "mitigation.installed", "mitigation created", cuid=cuid,
                  mid=mid, state=record.state.value, lifetime=lifetime)
        if record.state is S.MITIGATING:
            record.mitigation_start = self._epoch(now)
            self._outputs.append(ApplyMitigation(cuid, mid, record.scope))
            for other in own.other_type:
                if other.state is S.MITIGATING:  # §4.4.1.3: the preconfigured one yields
                    self._fire(other, T.PREEMPTED, now)
                    self._outputs.append(WithdrawMitigation(cuid, other.mid, T.PREEMPTED))
                    self._set_status(
                        other,
                        Status.ATTACK_MITIGATION_SIGNAL_LOSS,
                        transient=Status.ATTACK_MITIGATION_WITHDRAWN,
                    )
        self._outputs.append(MitigationStatusChanged(cuid, mid, record.status))
        for loser in losers:
            self._deactivate(loser, record, now)
        return PutResult(True, self._body(record, now))

    def _deactivate(self, loser: Mitigation, winner: Mitigation, now: float) -> None:
        self._before_change((loser.cuid, loser.mid))
        loser.conflict, retry = lost_to(loser, winner)
        self._fire(loser, T.CONFLICT_LOST, now)
        # §4.4.1.3: kept for retry-timer + 45 s so the client can refresh and re-check.
        loser.expires_at = now + min(retry, UINT32_MAX - DEACTIVATED_GRACE) + DEACTIVATED_GRACE
        self._outputs.append(WithdrawMitigation(loser.cuid, loser.mid, T.CONFLICT_LOST))
        self._set_status(loser, Status.ATTACK_MITIGATION_WITHDRAWN)

    def _fire(self, record: Mitigation, trigger: Trigger, now: float) -> None:
        self._set_state(record, next_state(record, trigger), trigger, now)

    def _set_state(
        self, record: Mitigation, new: MitigationState, trigger: Trigger, now: float
    ) -> None:
        self._before_change((record.cuid, record.mid))
        old = record.state
        record.state = new
        self._touch(record)
        log_event(log, logging.INFO, "mitigation.state_changed", "mitigation state changed",
                  cuid=record.cuid, mid=record.mid, old=old.value, new=new.value,
                  reason=trigger.value)
        if new is S.ENDED:
            final = (
                Status.ATTACK_MITIGATION_WITHDRAWN
                if trigger is T.SERVER_WITHDREW
                else Status.ATTACK_MITIGATION_TERMINATED
                if old in ACTIVE_STATES
                else record.status
            )
            self._discard(record)
            if old in ACTIVE_STATES:
                self._outputs.append(WithdrawMitigation(record.cuid, record.mid, trigger))
            self._outputs.append(MitigationRemoved(record.cuid, record.mid, final, trigger))
            if record.cuid not in self._by_client:
                self._before_owner(record.cuid)
                self._owners.pop(record.cuid, None)

    def _set_status(
        self, record: Mitigation, status: Status, *, transient: Status | None = None
    ) -> None:
        self._before_change((record.cuid, record.mid))
        record.status = status
        record.transient_status = transient
        record.transient_reports_left = TRANSIENT_REPORTS if transient else 0
        self._touch(record)
        self._outputs.append(MitigationStatusChanged(record.cuid, record.mid, transient or status))




    def _body(self, record: Mitigation, now: float) -> MitigationScope:
        """Figure 10: the 2.xx body carries mid and the granted lifetime (+ conflicts)."""
        return MitigationScope(
            (
                Scope(
                    mid=record.mid,
                    # The lifetime just granted (RFC 9132 §4.4.1.1), or what is left of a
                    # deactivated request's retry-timer + 45 s.
                    lifetime=record.remaining_lifetime(now)
                    if record.state is S.DEACTIVATED
                    else record.lifetime,
                    conflict_information=record.conflict,
                ),
            )
        )

    def _epoch(self, now: float) -> int:
        return int(now + self.wall_offset)



_MITIGATOR_STATUSES = frozenset(
    {
        Status.ATTACK_MITIGATION_IN_PROGRESS,
        Status.ATTACK_SUCCESSFULLY_MITIGATED,
        Status.ATTACK_STOPPED,
        Status.ATTACK_EXCEEDED_CAPABILITY,
    }
)


def _counters(c: Counters) -> dict[str, int | None]:
    return {
        "bytes_dropped": c.bytes_dropped,
        "bps_dropped": c.bps_dropped,
        "pkts_dropped": c.pkts_dropped,
        "pps_dropped": c.pps_dropped,
    }
