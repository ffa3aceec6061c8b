"""A request's changes are undone exactly when they cannot be saved (issue 17, item 1).

The store's ``begin``/``rollback`` must give back the state before the request: every
record field, the indexes, the owners, the per-client periods and the queued outputs; the
server core answers 5.03 with Max-Age and tells nobody of the change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from gateway.dots.codec import encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method
from gateway.dots.conflict import ConflictDecision, fixed_policy
from gateway.dots.errors import DotsProtocolError, DotsUsageError
from gateway.dots.message import DotsRequest, Requester
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import ApplyMitigation, Owner
from gateway.dots.model import MitigationScope, Scope, parse_prefix
from gateway.dots.server import SAVE_RETRY_AFTER, DotsServerCore
from gateway.dots.uri import Resource, build_path

CUID_A, CUID_B = "dz6pHjaADkaFTbjr0JGBpw", "f30d281ce6b64fc5a0b91e"
A, B = Owner("cred-a"), Owner("cred-b")


def scope(*prefixes: str, lifetime: int = 3600, trigger: bool | None = None) -> Scope:
    return Scope(target_prefix=tuple(parse_prefix(p) for p in prefixes), lifetime=lifetime,
                 trigger_mitigation=trigger)


def state(store: MitigationStore) -> object:
    """Everything a rollback must give back, as plain comparable values."""
    return (
        [copy.copy(r) for r in store.records()],
        {c: [copy.copy(r) for r in store.records(c)] for c in (CUID_A, CUID_B)},
        {c: store.owner_of(c) for c in (CUID_A, CUID_B)},
        dict(store._termination_period),
        list(store._outputs),
        store.get_timer(),
    )


def populated() -> MitigationStore:
    store = MitigationStore(resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24", trigger=False), A, now=0.0)
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=0.0)
    store.delete(CUID_A, 3, A, now=5.0)  # terminating
    store.take_changes()
    store.take_client_changes()
    return store


OPERATIONS: dict[str, Callable[[MitigationStore], object]] = {
    "create": lambda s: s.put(CUID_A, 4, scope("10.0.0.0/8"), A, now=10.0),
    "create-new-client": lambda s: s.put(CUID_B, 9, scope("10.0.0.0/8"), B, now=10.0),
    "refresh": lambda s: s.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=60), A, now=10.0),
    "delete": lambda s: s.delete(CUID_A, 1, A, now=10.0),
    "delete-standby": lambda s: s.delete(CUID_A, 2, A, now=10.0),
    # a re-request during active-but-terminating: same mid replaced, period doubled
    "rerequest": lambda s: s.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=10.0),
    # a higher mid with the same scope supersedes mid 1
    "supersede": lambda s: s.put(CUID_A, 5, scope("192.0.2.0/24"), A, now=10.0),
    # another client wins the conflict: mid 1 of A is deactivated
    "conflict": lambda s: s.put(CUID_B, 7, scope("192.0.2.0/24"), B, now=10.0),
    # an immediate request preempts the client's own activated preconfigured one (the
    # signal loss that activated it happens before the request, see SETUP)
    "preempt": lambda s: s.put(CUID_A, 6, scope("198.51.100.0/24"), A, now=10.0),
}
SETUP: dict[str, Callable[[MitigationStore], object]] = {
    "preempt": lambda s: (s.signal_lost(CUID_A, 8.0), s.take_changes()),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_rollback_restores_exactly_the_state_before(name: str) -> None:
    store = populated()
    SETUP.get(name, lambda _s: None)(store)
    before = state(store)
    store.begin()
    OPERATIONS[name](store)
    assert state(store) != before  # the operation did change something
    store.rollback()
    assert state(store) == before
    # every key the request touched is handed to persistence again, with its old value
    changed, removed = store.take_changes()
    assert changed or removed
    assert all(store.lookup(r.cuid, r.mid) is r for r in changed)
    assert all(store.lookup(*key) is None for key in removed)


def test_rolled_back_state_keeps_working() -> None:
    store = populated()
    store.begin()
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=10.0)  # rerequest
    store.rollback()
    # the same request again, committed this time, behaves as if nothing had happened
    store.begin()
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=11.0)
    store.commit()
    assert store._termination_period[CUID_A] == 240  # doubled once, not twice
    assert store.lookup(CUID_A, 3) is not None


def test_transactions_do_not_nest_and_need_begin() -> None:
    store = MitigationStore()
    with pytest.raises(DotsUsageError):
        store.rollback()
    with pytest.raises(DotsUsageError):
        store.commit()
    store.begin()
    with pytest.raises(DotsUsageError):
        store.begin()


# --- the core: no success answer before the save -------------------------------------------


def put_request(mid: int, prefix: str = "192.0.2.0/24") -> DotsRequest:
    body = encode_message(MitigationScope((scope(prefix),)))
    return DotsRequest(Method.PUT, build_path(Resource.MITIGATE, cuid=CUID_A, mid=mid),
                       payload=body, content_format=CONTENT_FORMAT_DOTS_CBOR)


def delete_request(mid: int) -> DotsRequest:
    return DotsRequest(Method.DELETE, build_path(Resource.MITIGATE, cuid=CUID_A, mid=mid))


def test_unsaved_put_and_delete_are_503_with_max_age_and_undone() -> None:
    core = DotsServerCore()
    session = core.open_session(Requester(CUID_A), 0.0)
    disk = {"ok": True, "calls": 0}

    def save() -> bool:
        disk["calls"] += 1
        return disk["ok"]

    core.save = save
    assert core.receive_request(session, put_request(1), 1.0).code is Code.CREATED  # type: ignore[union-attr]
    list(core.events())

    disk["ok"] = False
    refused = core.receive_request(session, put_request(2, "198.51.100.0/24"), 2.0)
    assert refused is not None and refused.code is Code.SERVICE_UNAVAILABLE
    assert refused.max_age == SAVE_RETRY_AFTER
    assert "cannot save" in refused.diagnostic and "retry" in refused.diagnostic
    assert core.store.lookup(CUID_A, 2) is None
    assert not [e for e in core.events() if isinstance(e, ApplyMitigation)]

    gone = core.receive_request(session, delete_request(1), 3.0)
    assert gone is not None and gone.code is Code.SERVICE_UNAVAILABLE
    record = core.store.lookup(CUID_A, 1)
    assert record is not None and record.state.value == "mitigating"
    # reads are served meanwhile
    got = core.receive_request(session, DotsRequest(Method.GET, build_path(
        Resource.MITIGATE, cuid=CUID_A)), 4.0)
    assert got is not None and got.code is Code.CONTENT
    assert core.unsaved_requests == 2

    disk["ok"] = True
    again = core.receive_request(session, put_request(2, "198.51.100.0/24"), 5.0)
    assert again is not None and again.code is Code.CREATED
    assert [e.mid for e in core.events() if isinstance(e, ApplyMitigation)] == [2]


def test_refused_request_is_not_saved_and_leaves_nothing() -> None:
    core = DotsServerCore()
    session = core.open_session(Requester(CUID_A), 0.0)
    calls: list[int] = []
    core.save = lambda: calls.append(1) is None
    bad = DotsRequest(Method.DELETE, build_path(Resource.MITIGATE, cuid=CUID_A))
    response = core.receive_request(session, bad, 1.0)
    assert response is not None and response.code is Code.BAD_REQUEST
    assert calls == []


def test_error_class_renders_503() -> None:
    from gateway.dots.errors import ServiceUnavailable

    exc = ServiceUnavailable("x", SAVE_RETRY_AFTER)
    assert isinstance(exc, DotsProtocolError)
    assert exc.to_response().max_age == SAVE_RETRY_AFTER
