"""The server-side mitigation store, driven with a fake clock (RFC 9132 §4.4)."""

from __future__ import annotations

import pytest

from gateway.dots.codes import Code, ConflictCause, ConflictStatus, Status
from gateway.dots.conflict import ConflictDecision, ConflictingRequest, fixed_policy
from gateway.dots.errors import DotsUsageError, InvalidValue, NotFound
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    MitigationPolicy,
    MitigationRemoved,
    MitigationState,
    MitigationStatusChanged,
    Owner,
    TransitionRefused,
    Trigger,
    WithdrawMitigation,
)
from gateway.dots.model import PortRange, Scope, parse_prefix
from gateway.dots.uri import ContentFilter

CUID_A, CUID_B = "dz6pHjaADkaFTbjr0JGBpw", "f30d281ce6b64fc5a0b91e"
A, B = Owner("cred-a"), Owner("cred-b")


def scope(*prefixes: str, lifetime: int = 3600, trigger: bool | None = None,
          ports: tuple[PortRange, ...] = (), **kw: object) -> Scope:
    return Scope(target_prefix=tuple(parse_prefix(p) for p in prefixes), lifetime=lifetime,
                 trigger_mitigation=trigger, target_port_range=ports, **kw)  # type: ignore[arg-type]


def drain(store: MitigationStore) -> list[object]:
    out = []
    while (e := store.next_event()) is not None:
        out.append(e)
    return out


@pytest.fixture
def store() -> MitigationStore:
    return MitigationStore(wall_offset=1_700_000_000)


def test_create_returns_2_01_with_mid_and_granted_lifetime(store: MitigationStore) -> None:
    result = store.put(CUID_A, 123, scope("2001:db8:6401::1/128"), A, now=10.0)
    assert result is not None and result.created
    (entry,) = result.body.scope
    assert (entry.mid, entry.lifetime) == (123, 3600)  # Figure 10
    record = store.lookup(CUID_A, 123)
    assert record is not None and record.state is MitigationState.MITIGATING
    assert record.mitigation_start == 1_700_000_010
    events = drain(store)
    assert ApplyMitigation(CUID_A, 123, record.scope) in events
    assert MitigationStatusChanged(CUID_A, 123, Status.ATTACK_MITIGATION_IN_PROGRESS) in events


def test_refresh_same_parameters_is_2_04_and_restarts_lifetime(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=0.0)
    result = store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=500), A, now=90.0)
    assert result is not None and not result.created
    assert result.body.scope[0].lifetime == 500
    store.handle_timer(200.0)
    assert store.lookup(CUID_A, 1) is not None  # the old 100 s would have expired


def test_refresh_with_different_parameters_is_4_00(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    with pytest.raises(InvalidValue, match="different parameters") as info:
        store.put(CUID_A, 1, scope("198.51.100.0/24"), A, now=1.0)
    assert info.value.code is Code.BAD_REQUEST


def test_refresh_ignores_target_order(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", "198.51.100.0/24"), A, now=0.0)
    assert store.put(CUID_A, 1, scope("198.51.100.0/24", "192.0.2.0/24"), A, now=1.0)


def test_efficacy_update_on_unknown_mid_is_silently_ignored(store: MitigationStore) -> None:
    s = scope("192.0.2.0/24", lifetime=None, attack_status=1)  # type: ignore[arg-type]
    assert store.put(CUID_A, 9, s, A, now=0.0, efficacy_update=True) is None
    assert list(store.records()) == []


def test_efficacy_update_refreshes_with_the_original_lifetime(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=0.0)
    from gateway.dots.codes import AttackStatus

    update = scope("192.0.2.0/24", lifetime=None, attack_status=AttackStatus.UNDER_ATTACK)  # type: ignore[arg-type]
    result = store.put(CUID_A, 1, update, A, now=50.0, efficacy_update=True)
    assert result is not None and not result.created
    assert result.body.scope[0].lifetime == 100
    store.handle_timer(120.0)
    assert store.lookup(CUID_A, 1) is not None


def test_withdrawal_is_active_but_terminating_for_120_s(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    drain(store)
    store.delete(CUID_A, 1, A, now=10.0)
    record = store.lookup(CUID_A, 1)
    assert record is not None and record.state is MitigationState.TERMINATING
    view = store.get(CUID_A, 1, A, now=20.0).scope[0]
    assert view.status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
    assert view.lifetime == 110
    assert store.get_timer() == 130.0
    store.handle_timer(129.9)
    assert store.lookup(CUID_A, 1) is not None
    store.handle_timer(130.0)
    assert store.lookup(CUID_A, 1) is None
    events = drain(store)
    assert WithdrawMitigation(CUID_A, 1, Trigger.TERMINATION_ELAPSED) in events
    assert MitigationRemoved(CUID_A, 1, Status.ATTACK_MITIGATION_TERMINATED,
                             Trigger.TERMINATION_ELAPSED) in events


def test_delete_of_unknown_mid_is_fine(store: MitigationStore) -> None:
    store.delete(CUID_A, 77, A, now=0.0)  # answered 2.02 by the server core
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.delete(CUID_A, 1, A, now=1.0)
    store.delete(CUID_A, 1, A, now=2.0)  # a retransmitted DELETE changes nothing
    record = store.lookup(CUID_A, 1)
    assert record is not None and record.terminate_at == 121.0


def test_rerequest_during_termination_doubles_the_period_up_to_300(store: MitigationStore) -> None:
    periods = []
    for mid in range(1, 5):
        now = mid * 10.0
        store.put(CUID_A, mid, scope("192.0.2.0/24"), A, now=now)  # re-request within the window
        store.delete(CUID_A, mid, A, now=now + 1)
        record = store.lookup(CUID_A, mid)
        assert record is not None and record.terminate_at is not None
        periods.append(record.terminate_at - (now + 1))
    assert periods == [120, 240, 300, 300]


def test_termination_period_resets_when_it_elapses(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.delete(CUID_A, 1, A, now=1.0)
    store.put(CUID_A, 2, scope("192.0.2.0/24"), A, now=2.0)  # doubles to 240
    store.delete(CUID_A, 2, A, now=3.0)
    store.handle_timer(300.0)  # elapsed without re-request
    store.put(CUID_A, 3, scope("192.0.2.0/24"), A, now=400.0)
    store.delete(CUID_A, 3, A, now=401.0)
    record = store.lookup(CUID_A, 3)
    assert record is not None and record.terminate_at == 521.0


def test_lifetime_expiry_removes_the_request(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=30), A, now=0.0)
    drain(store)
    assert store.get(CUID_A, 1, A, now=10.4).scope[0].lifetime == 20  # remaining, rounded up
    store.handle_timer(30.0)
    assert store.lookup(CUID_A, 1) is None
    assert MitigationRemoved(CUID_A, 1, Status.ATTACK_MITIGATION_TERMINATED,
                             Trigger.LIFETIME_EXPIRED) in drain(store)


def test_indefinite_lifetime_never_expires(store: MitigationStore) -> None:
    result = store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=-1), A, now=0.0)
    assert result is not None and result.body.scope[0].lifetime == -1
    assert store.get_timer() is None
    assert store.get(CUID_A, 1, A, now=1e9).scope[0].lifetime == -1


@pytest.mark.parametrize(("policy", "requested", "granted"), [
    (MitigationPolicy(allow_indefinite_lifetime=False), -1, 3600),
    (MitigationPolicy(max_lifetime=600), -1, 600),
    (MitigationPolicy(max_lifetime=600), 7200, 600),
    (MitigationPolicy(max_lifetime=600), 60, 60),
])
def test_policy_grants_lifetimes(policy: MitigationPolicy, requested: int, granted: int) -> None:
    store = MitigationStore(policy)
    result = store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=requested), A, now=0.0)
    assert result is not None and result.body.scope[0].lifetime == granted


def test_higher_mid_replaces_overlapping_lower_mid(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    drain(store)
    store.put(CUID_A, 2, scope("192.0.2.128/25"), A, now=1.0)
    assert store.lookup(CUID_A, 1) is None
    events = drain(store)
    assert WithdrawMitigation(CUID_A, 1, Trigger.SUPERSEDED) in events


def test_lower_mid_arriving_late_is_4_09_with_conflict_scope(store: MitigationStore) -> None:
    store.put(CUID_A, 5, scope("192.0.2.0/24", ports=(PortRange(80),)), A, now=0.0)
    with pytest.raises(ConflictingRequest) as info:
        store.put(CUID_A, 4, scope("192.0.2.10/32", ports=(PortRange(80),)), A, now=1.0)
    conflict = info.value.conflict
    assert conflict.conflict_cause is ConflictCause.OVERLAPPING_TARGETS
    assert conflict.conflict_scope is not None
    assert conflict.conflict_scope.mid == 5
    assert conflict.conflict_scope.target_prefix == (parse_prefix("192.0.2.10/32"),)
    assert info.value.to_response().code is Code.CONFLICT
    assert store.lookup(CUID_A, 4) is None


def test_non_overlapping_requests_coexist(store: MitigationStore) -> None:
    store.put(CUID_A, 5, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_A, 4, scope("198.51.100.0/24"), A, now=1.0)
    assert [r.mid for r in store.records(CUID_A)] == [4, 5]


def test_cuid_collision_is_4_09_cause_3_only(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    with pytest.raises(ConflictingRequest) as info:
        store.put(CUID_A, 2, scope("198.51.100.0/24"), B, now=1.0)
    conflict = info.value.conflict
    assert conflict.conflict_cause is ConflictCause.CUID_COLLISION
    assert (conflict.conflict_status, conflict.conflict_scope, conflict.retry_timer) == (
        None, None, None)
    with pytest.raises(ConflictingRequest):
        store.get(CUID_A, None, B, now=1.0)  # another client cannot read them either
    with pytest.raises(ConflictingRequest):
        store.delete(CUID_A, 1, B, now=1.0)


def test_cuid_is_released_when_its_last_request_ends(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=10), A, now=0.0)
    store.handle_timer(10.0)
    assert store.owner_of(CUID_A) is None
    assert store.put(CUID_A, 2, scope("192.0.2.0/24"), B, now=11.0)


def test_get_views_and_not_found(store: MitigationStore) -> None:
    with pytest.raises(NotFound, match="no mitigation requests"):
        store.get(CUID_A, None, A, now=0.0)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    with pytest.raises(NotFound, match="mid 2"):
        store.get(CUID_A, 2, A, now=0.0)
    store.update_status(CUID_A, 1, Status.ATTACK_SUCCESSFULLY_MITIGATED, now=1.0,
                        counters=Counters(bytes_dropped=10, pps_dropped=2))
    full = store.get(CUID_A, None, A, now=2.0, content=ContentFilter.ALL).scope[0]
    assert full.target_prefix and full.status is Status.ATTACK_SUCCESSFULLY_MITIGATED
    assert (full.bytes_dropped, full.pps_dropped) == (10, 2)
    config = store.get(CUID_A, None, A, now=2.0, content=ContentFilter.CONFIG).scope[0]
    assert config.target_prefix and config.status is None and config.bytes_dropped is None
    state = store.get(CUID_A, None, A, now=2.0, content=ContentFilter.NON_CONFIG).scope[0]
    assert not state.target_prefix and state.status is Status.ATTACK_SUCCESSFULLY_MITIGATED
    assert state.mid == config.mid == 1


def test_mitigator_cannot_report_client_statuses(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    with pytest.raises(DotsUsageError):
        store.update_status(CUID_A, 1, Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, now=1.0)
    store.update_status(CUID_A, 99, Status.ATTACK_STOPPED, now=1.0)  # unknown: ignored


# --- preconfigured (trigger-mitigation = false) requests -----------------------------------------


def test_preconfigured_request_waits_in_status_8_without_start(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    events = drain(store)
    assert not any(isinstance(e, ApplyMitigation) for e in events)
    view = store.get(CUID_A, 1, A, now=1.0).scope[0]
    assert view.status is Status.ATTACK_MITIGATION_SIGNAL_LOSS
    assert view.mitigation_start is None  # §4.4.2: not for status 8
    assert not store.is_mitigating(CUID_A)


def test_signal_loss_activates_preconfigured_and_withdraws_overlapping_immediate(
        store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.put(CUID_A, 2, scope("192.0.2.0/25"), A, now=1.0)  # immediate, overlapping
    store.put(CUID_A, 3, scope("198.51.100.0/24"), A, now=2.0)  # immediate, unrelated
    drain(store)
    store.signal_lost(CUID_A, now=100.0)
    pre = store.lookup(CUID_A, 1)
    assert pre is not None and pre.state is MitigationState.MITIGATING
    assert pre.mitigation_start == 1_700_000_100
    assert store.lookup(CUID_A, 2) is None
    assert store.lookup(CUID_A, 3) is not None
    events = drain(store)
    assert MitigationRemoved(CUID_A, 2, Status.ATTACK_MITIGATION_WITHDRAWN,
                             Trigger.SERVER_WITHDREW) in events
    # §4.4.4: channel recovery does not stop it; only DELETE, lifetime or the server.
    store.delete(CUID_A, 1, A, now=200.0)
    assert store.lookup(CUID_A, 1).state is MitigationState.TERMINATING  # type: ignore[union-attr]


def test_immediate_request_preempts_active_preconfigured(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.signal_lost(CUID_A, now=10.0)
    drain(store)
    store.put(CUID_A, 2, scope("192.0.2.0/24"), A, now=20.0)
    pre = store.lookup(CUID_A, 1)
    assert pre is not None and pre.state is MitigationState.AWAIT_SIGNAL_LOSS
    assert WithdrawMitigation(CUID_A, 1, Trigger.PREEMPTED) in drain(store)
    # Table 3: status 7 is reported four times, then 8.
    statuses = [store.get(CUID_A, 1, A, now=21.0).scope[0].status for _ in range(6)]
    assert statuses == [Status.ATTACK_MITIGATION_WITHDRAWN] * 4 + [
        Status.ATTACK_MITIGATION_SIGNAL_LOSS] * 2


def test_preconfigured_attack_stopped_reported_four_times_then_8(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.signal_lost(CUID_A, now=10.0)
    store.update_status(CUID_A, 1, Status.ATTACK_STOPPED, now=20.0)
    statuses = [store.view(store.lookup(CUID_A, 1), 21.0).status for _ in range(5)]  # type: ignore[arg-type]
    assert statuses == [Status.ATTACK_STOPPED] * 4 + [Status.ATTACK_MITIGATION_SIGNAL_LOSS]
    assert store.lookup(CUID_A, 1).state is MitigationState.AWAIT_SIGNAL_LOSS  # type: ignore[union-attr]


def test_immediate_attack_stopped_stays_until_withdrawn(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.update_status(CUID_A, 1, Status.ATTACK_STOPPED, now=1.0)
    for _ in range(6):
        assert store.get(CUID_A, 1, A, now=2.0).scope[0].status is Status.ATTACK_STOPPED


def test_preconfigured_and_immediate_same_mid_order_rules_are_per_type(
        store: MitigationStore) -> None:
    store.put(CUID_A, 10, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    # A lower mid of the *other* type is not a mid-ordering conflict.
    assert store.put(CUID_A, 5, scope("192.0.2.0/24"), A, now=1.0)


# --- conflicts between clients -------------------------------------------------------------------


def test_default_policy_rejects_newcomer_with_retry_timer() -> None:
    store = MitigationStore()
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=600), A, now=0.0)
    with pytest.raises(ConflictingRequest) as info:
        store.put(CUID_B, 1, scope("192.0.2.64/26"), B, now=100.0)
    conflict = info.value.conflict
    assert conflict.conflict_status is ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE
    assert conflict.retry_timer == 500  # remaining lifetime of the winner
    assert conflict.conflict_scope is not None
    assert conflict.conflict_scope.target_prefix == (parse_prefix("192.0.2.64/26"),)


def test_accept_both_reports_conflict_to_both() -> None:
    store = MitigationStore(resolver=fixed_policy(ConflictDecision.ACCEPT_BOTH))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    result = store.put(CUID_B, 1, scope("192.0.2.0/24"), B, now=1.0)
    assert result is not None and result.created
    info = result.body.scope[0].conflict_information
    assert info is not None and info.conflict_status is ConflictStatus.REQUEST_ACTIVE
    first = store.get(CUID_A, 1, A, now=2.0).scope[0]
    assert first.conflict_information is not None
    assert first.status is Status.ATTACK_MITIGATION_IN_PROGRESS


def test_a_resolver_set_later_decides_the_next_conflict() -> None:
    # What a reload of [mitigation] conflict_policy does: it was silently ignored after the
    # conflict detector took the resolver over.
    store = MitigationStore()
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.resolver = fixed_policy(ConflictDecision.ACCEPT_BOTH)
    result = store.put(CUID_B, 1, scope("192.0.2.0/24"), B, now=1.0)
    assert result is not None and result.created


def test_replace_existing_deactivates_other_client_for_retry_plus_45() -> None:
    store = MitigationStore(resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_B, 1, scope("192.0.2.0/24", lifetime=300), B, now=10.0)
    loser = store.lookup(CUID_A, 1)
    assert loser is not None and loser.state is MitigationState.DEACTIVATED
    view = store.get(CUID_A, 1, A, now=10.0).scope[0]
    assert view.status is Status.ATTACK_MITIGATION_WITHDRAWN
    assert view.conflict_information is not None
    assert view.conflict_information.retry_timer == 300
    assert view.lifetime == 345
    # still conflicting: a refresh keeps it deactivated
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=20.0)
    assert store.lookup(CUID_A, 1).state is MitigationState.DEACTIVATED  # type: ignore[union-attr]
    # the winner goes away; a refresh then reactivates the loser
    store.delete(CUID_B, 1, B, now=30.0)
    store.handle_timer(151.0)
    assert store.lookup(CUID_B, 1) is None
    result = store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=160.0)
    assert result is not None and result.body.scope[0].conflict_information is None
    record = store.lookup(CUID_A, 1)
    assert record is not None and record.state is MitigationState.MITIGATING
    assert record.status is Status.ATTACK_MITIGATION_IN_PROGRESS


def test_refused_transition_leaves_state_unchanged(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    record = store.lookup(CUID_A, 1)
    assert record is not None
    with pytest.raises(TransitionRefused, match="termination-elapsed"):
        store._fire(record, Trigger.TERMINATION_ELAPSED, 1.0)
    assert record.state is MitigationState.AWAIT_SIGNAL_LOSS


def test_granted_lifetime_is_exact_whatever_the_clock(store: MitigationStore) -> None:
    for i, now in enumerate((0.1, 12345.678, 1e6 + 0.3, 987654.321)):
        result = store.put(CUID_A, 100 + i, scope(f"198.51.100.{i}/32"), A, now=now)
        assert result is not None and result.body.scope[0].lifetime == 3600
        assert store.get(CUID_A, 100 + i, A, now=now).scope[0].lifetime == 3600
