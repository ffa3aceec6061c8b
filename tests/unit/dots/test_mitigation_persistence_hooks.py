"""The store's persistence hooks: dirty tracking (``take_changes``) and ``restore``.

A restart is simulated by deep-copying records out of one store (what the database would
give back) into a fresh one, with a fake clock.
"""

from __future__ import annotations

import copy

import pytest

from gateway.dots.codes import Code, ConflictStatus, Status
from gateway.dots.conflict import ConflictDecision, ConflictingRequest, fixed_policy
from gateway.dots.errors import DotsUsageError
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    Mitigation,
    MitigationPolicy,
    MitigationRemoved,
    MitigationState,
    Owner,
    Trigger,
    WithdrawMitigation,
)
from gateway.dots.model import Scope, parse_prefix

CUID_A, CUID_B = "dz6pHjaADkaFTbjr0JGBpw", "f30d281ce6b64fc5a0b91e"
A, B = Owner("cred-a"), Owner("cred-b", "cdid-b")
WALL = 1_700_000_000


def scope(*prefixes: str, lifetime: int = 3600, trigger: bool | None = None) -> Scope:
    return Scope(target_prefix=tuple(parse_prefix(p) for p in prefixes), lifetime=lifetime,
                 trigger_mitigation=trigger)


def drain(store: MitigationStore) -> list[object]:
    out: list[object] = []
    while (e := store.next_event()) is not None:
        out.append(e)
    return out


def keys(changes: tuple[list[Mitigation], list[tuple[str, int]]]) -> tuple[set[tuple[str, int]],
                                                                              set[tuple[str, int]]]:
    changed, removed = changes
    return {(r.cuid, r.mid) for r in changed}, set(removed)


def restarted(old: MitigationStore, now: float, **kw: object) -> MitigationStore:
    """A new store holding copies of ``old``'s records, as a database load would give them."""
    new = MitigationStore(wall_offset=WALL, **kw)  # type: ignore[arg-type]
    new.restore(copy.deepcopy(list(old.records())), now)
    return new


@pytest.fixture
def store() -> MitigationStore:
    return MitigationStore(wall_offset=WALL)


# --- take_changes --------------------------------------------------------------------------------


def test_created_record_is_reported_once(store: MitigationStore) -> None:
    assert store.take_changes() == ([], [])
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    changed, removed = store.take_changes()
    assert changed == [store.lookup(CUID_A, 1)] and removed == []
    assert store.take_changes() == ([], [])


def test_refresh_is_a_change(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=0.0)
    store.take_changes()
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=500), A, now=50.0)
    changed, _ = store.take_changes()
    assert [(r.lifetime, r.expires_at) for r in changed] == [(500, 550.0)]


def test_reads_and_ignored_requests_are_no_change(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.take_changes()
    store.get(CUID_A, None, A, now=1.0)
    store.get(CUID_A, 1, A, now=1.0)
    assert store.put(CUID_A, 9, scope("192.0.2.0/24"), A, now=1.0, efficacy_update=True) is None
    store.update_status(CUID_A, 1, Status.ATTACK_MITIGATION_IN_PROGRESS, now=1.0)  # same
    store.handle_timer(2.0)
    assert store.take_changes() == ([], [])


def test_withdrawal_is_a_change_and_its_end_a_removal(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.take_changes()
    store.delete(CUID_A, 1, A, now=10.0)
    changed, removed = store.take_changes()
    assert [(r.state, r.status, r.terminate_at) for r in changed] == [
        (MitigationState.TERMINATING, Status.DOTS_CLIENT_WITHDRAWN_MITIGATION, 130.0)]
    assert removed == []
    store.handle_timer(130.0)
    assert store.take_changes() == ([], [(CUID_A, 1)])


def test_preconfigured_withdrawal_is_a_removal(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.take_changes()
    store.delete(CUID_A, 1, A, now=1.0)
    assert store.take_changes() == ([], [(CUID_A, 1)])


def test_rerequest_during_terminating_is_a_change_and_a_client_change(
        store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.delete(CUID_A, 1, A, now=10.0)
    store.take_changes()
    assert store.take_client_changes() == {}
    # §4.4.4: requested again with the same mid during active-but-terminating: the old
    # record ends and a new one takes its key; the period for the next withdrawal doubles.
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=20.0)
    changed, removed = store.take_changes()
    assert [(r.mid, r.state) for r in changed] == [(1, MitigationState.MITIGATING)]
    assert removed == []
    assert store.take_client_changes() == {CUID_A: 240}
    assert store.take_client_changes() == {}
    store.delete(CUID_A, 1, A, now=30.0)
    store.handle_timer(30.0 + 240)
    assert keys(store.take_changes()) == (set(), {(CUID_A, 1)})
    assert store.take_client_changes() == {CUID_A: None}  # back to the default


def test_lower_mid_superseded_is_removed(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("192.0.2.0/24"), A, now=1.0)
    assert keys(store.take_changes()) == ({(CUID_A, 2)}, {(CUID_A, 1)})


def test_counters_are_a_change_only_when_they_change(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.take_changes()
    store.update_status(CUID_A, 1, Status.ATTACK_MITIGATION_IN_PROGRESS, 1.0, Counters(10))
    changed, _ = store.take_changes()
    assert [r.counters for r in changed] == [Counters(10)]
    store.update_status(CUID_A, 1, Status.ATTACK_MITIGATION_IN_PROGRESS, 2.0, Counters(10))
    assert store.take_changes() == ([], [])
    store.update_status(CUID_A, 1, Status.ATTACK_SUCCESSFULLY_MITIGATED, 3.0)
    changed, _ = store.take_changes()
    assert [r.status for r in changed] == [Status.ATTACK_SUCCESSFULLY_MITIGATED]


def test_replaced_conflict_loser_is_a_change() -> None:
    store = MitigationStore(resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.take_changes()
    store.put(CUID_B, 7, scope("192.0.2.0/24"), B, now=10.0)
    changed, removed = store.take_changes()
    by_key = {(r.cuid, r.mid): r for r in changed}
    assert set(by_key) == {(CUID_A, 1), (CUID_B, 7)} and removed == []
    loser = by_key[(CUID_A, 1)]
    assert loser.state is MitigationState.DEACTIVATED and loser.conflict is not None
    assert loser.conflict.conflict_status is ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE


def test_accepted_conflict_marks_the_existing_request() -> None:
    store = MitigationStore(resolver=fixed_policy(ConflictDecision.ACCEPT_BOTH))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.take_changes()
    store.put(CUID_B, 7, scope("192.0.2.0/24"), B, now=10.0)
    changed, _ = store.take_changes()
    existing = next(r for r in changed if r.cuid == CUID_A)
    assert existing.conflict is not None
    assert existing.conflict.conflict_status is ConflictStatus.REQUEST_ACTIVE


def test_signal_loss_marks_armed_and_withdrawn_requests(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.put(CUID_A, 2, scope("192.0.2.0/25"), A, now=1.0)
    store.take_changes()
    store.signal_lost(CUID_A, now=100.0)
    assert keys(store.take_changes()) == ({(CUID_A, 1)}, {(CUID_A, 2)})


def test_lifetime_expiry_is_a_removal(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=60), A, now=0.0)
    store.take_changes()
    store.handle_timer(60.0)
    assert store.take_changes() == ([], [(CUID_A, 1)])


def test_each_report_of_a_transient_status_is_a_change(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.signal_lost(CUID_A, now=10.0)
    store.update_status(CUID_A, 1, Status.ATTACK_STOPPED, now=20.0)
    store.take_changes()
    store.get(CUID_A, 1, A, now=21.0)
    changed, _ = store.take_changes()
    assert [(r.transient_status, r.transient_reports_left) for r in changed] == [
        (Status.ATTACK_STOPPED, 3)]


# --- restore -------------------------------------------------------------------------------------


def test_restore_rebuilds_owners_and_per_client_index(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24", trigger=False), A, now=0.0)
    store.put(CUID_B, 5, scope("203.0.113.0/24"), B, now=0.0)
    new = restarted(store, now=10.0)
    assert new.owner_of(CUID_A) == A and new.owner_of(CUID_B) == B
    assert [r.mid for r in new.records(CUID_A)] == [1, 2]
    assert new.is_mitigating(CUID_B)
    with pytest.raises(ConflictingRequest) as info:  # §4.4.1.1: the cuid is still taken
        new.put(CUID_A, 3, scope("192.0.2.0/24"), B, now=11.0)
    assert info.value.code is Code.CONFLICT
    assert [s.mid for s in new.get(CUID_A, None, A, now=11.0).scope] == [1, 2]


def test_restore_reapplies_what_the_mitigator_was_acting_on() -> None:
    store = MitigationStore(wall_offset=WALL,
                            resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)  # deactivated below
    store.put(CUID_A, 2, scope("198.51.100.0/24", trigger=False), A, now=0.0)  # standby
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=0.0)  # terminating
    store.delete(CUID_A, 3, A, now=5.0)
    store.put(CUID_B, 7, scope("192.0.2.0/24"), B, now=6.0)  # mitigating
    new = restarted(store, now=10.0)
    applied = {(e.cuid, e.mid) for e in drain(new) if isinstance(e, ApplyMitigation)}
    assert applied == {(CUID_A, 3), (CUID_B, 7)}


def test_restore_keeps_statuses_conflicts_counters_and_transients() -> None:
    store = MitigationStore(wall_offset=WALL,
                            resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_B, 7, scope("192.0.2.0/24"), B, now=6.0)
    store.update_status(CUID_B, 7, Status.ATTACK_SUCCESSFULLY_MITIGATED, 7.0,
                        Counters(100, 2, 3, 4))
    store.put(CUID_A, 2, scope("198.51.100.0/24", trigger=False), A, now=8.0)
    store.signal_lost(CUID_A, now=9.0)
    store.update_status(CUID_A, 2, Status.ATTACK_STOPPED, now=9.5)
    before = {(r.cuid, r.mid): copy.deepcopy(r) for r in store.records()}
    new = restarted(store, now=10.0)
    after = {(r.cuid, r.mid): r for r in new.records()}
    assert after == before
    assert new.get(CUID_A, 2, A, now=10.0).scope[0].status is Status.ATTACK_STOPPED
    view = new.get(CUID_A, 1, A, now=10.0).scope[0]
    assert view.status is Status.ATTACK_MITIGATION_WITHDRAWN
    assert view.conflict_information == before[(CUID_A, 1)].conflict
    assert new.get(CUID_B, 7, B, now=10.0).scope[0].bytes_dropped == 100


def test_restore_ends_what_ran_out_while_down(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=0.0)  # active, expired
    store.put(CUID_A, 2, scope("198.51.100.0/24", lifetime=100, trigger=False), A, now=0.0)
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=0.0)
    store.delete(CUID_A, 3, A, now=10.0)  # terminating until 130
    store.put(CUID_B, 5, scope("100.64.0.0/24", lifetime=1000), B, now=0.0)  # still running
    new = restarted(store, now=500.0)
    events = drain(new)
    assert WithdrawMitigation(CUID_A, 1, Trigger.LIFETIME_EXPIRED) in events
    assert WithdrawMitigation(CUID_A, 3, Trigger.TERMINATION_ELAPSED) in events
    assert not any(isinstance(e, WithdrawMitigation) and e.mid == 2 for e in events)
    assert {(e.cuid, e.mid) for e in events if isinstance(e, MitigationRemoved)} == {
        (CUID_A, 1), (CUID_A, 2), (CUID_A, 3)}
    assert [e for e in events if isinstance(e, ApplyMitigation)] == [
        ApplyMitigation(CUID_B, 5, store.lookup(CUID_B, 5).scope)]  # type: ignore[union-attr]
    assert [r.mid for r in new.records()] == [5]
    assert new.owner_of(CUID_A) is None  # nothing left of that client
    # The database must forget them; the restored record itself is unchanged.
    assert keys(new.take_changes()) == (set(), {(CUID_A, 1), (CUID_A, 2), (CUID_A, 3)})


def test_restored_records_keep_their_deadlines(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24"), A, now=0.0)
    store.delete(CUID_A, 2, A, now=20.0)
    new = restarted(store, now=30.0)
    assert new.get_timer() == 100.0
    assert new.get(CUID_A, 1, A, now=30.0).scope[0].lifetime == 70
    assert new.get(CUID_A, 2, A, now=30.0).scope[0].lifetime == 110
    new.handle_timer(100.0)
    assert [r.mid for r in new.records()] == [2]
    new.handle_timer(140.0)
    assert list(new.records()) == []


def test_restore_brings_back_termination_periods_within_policy(store: MitigationStore) -> None:
    policy = MitigationPolicy(active_but_terminating_max=200)
    new = MitigationStore(policy, wall_offset=WALL)
    new.restore([], 0.0, {CUID_A: 240, CUID_B: 150})
    new.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    new.put(CUID_B, 1, scope("198.51.100.0/24"), B, now=0.0)
    new.delete(CUID_A, 1, A, now=10.0)
    new.delete(CUID_B, 1, B, now=10.0)
    assert new.lookup(CUID_A, 1).terminate_at == 210.0  # type: ignore[union-attr]
    assert new.lookup(CUID_B, 1).terminate_at == 160.0  # type: ignore[union-attr]
    assert new.take_client_changes() == {}  # restoring is not a change


def test_restore_reports_no_changes_for_kept_records(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    new = restarted(store, now=1.0)
    assert new.take_changes() == ([], [])


def test_restore_onto_an_existing_key_is_our_bug(store: MitigationStore) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    with pytest.raises(DotsUsageError, match="already in the store"):
        store.restore(copy.deepcopy(list(store.records())), 1.0)


def test_restore_skips_ended_records_and_foreign_owners(
        store: MitigationStore, caplog: pytest.LogCaptureFixture) -> None:
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24"), A, now=0.0)
    records = copy.deepcopy(list(store.records()))
    records[0].state = MitigationState.ENDED
    records[1].owner = B  # two credentials for one cuid: the first one saved wins
    records.append(copy.deepcopy(records[1]))
    records[2].mid, records[2].owner = 3, A
    new = MitigationStore(wall_offset=WALL)
    new.restore(records, 1.0)
    assert [r.mid for r in new.records()] == [2]
    assert new.owner_of(CUID_A) == B
    assert "it had ended" in caplog.text and "another credential owns the cuid" in caplog.text
