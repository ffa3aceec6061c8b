"""Per-client limits of the mitigation store (issue 17 item 3): the cap on the requests a
client holds, and overlap searches whose work does not grow with what clients hold.

The work of a search is counted, not timed: every comparison of two target sets goes
through ``Targets.overlap``, so counting its calls counts the records a PUT looked at.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.dots.codes import Code, Status
from gateway.dots.errors import ServiceUnavailable
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import MitigationPolicy, MitigationState, Owner
from gateway.dots.model import Scope, Targets, parse_prefix

CUID_A, CUID_B = "dz6pHjaADkaFTbjr0JGBpw", "f30d281ce6b64fc5a0b91e"
A, B = Owner("cred-a"), Owner("cred-b")


def scope(*prefixes: str, trigger: bool | None = None) -> Scope:
    return Scope(target_prefix=tuple(parse_prefix(p) for p in prefixes), lifetime=3600,
                 trigger_mitigation=trigger)


def disjoint(i: int) -> str:
    """The i-th of 65,536 /24s in 10.0.0.0/8, none overlapping another."""
    return f"10.{i >> 8 & 255}.{i & 255}.0/24"


def fill(store: MitigationStore, cuid: str, owner: Owner, count: int) -> None:
    for i in range(count):
        assert store.put(cuid, i + 1, scope(disjoint(i)), owner, now=0.0) is not None
    while store.next_event() is not None:
        pass


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts ``Targets.overlap`` calls (one per record a search compares with)."""
    count = [0]
    original = Targets.overlap

    def counting(self: Targets, other: Targets) -> Targets | None:
        count[0] += 1
        return original(self, other)

    monkeypatch.setattr(Targets, "overlap", counting)
    yield count


# --- the work of a PUT -----------------------------------------------------------------------


def test_put_does_not_compare_with_every_request_of_its_client(
        comparisons: list[int]) -> None:
    store = MitigationStore()
    fill(store, CUID_A, A, 900)
    comparisons[0] = 0
    result = store.put(CUID_A, 5_000, scope("172.16.0.0/24"), A, now=1.0)
    assert result is not None and result.created
    assert comparisons[0] == 0  # nothing overlaps: nothing to look at (was 900)


def test_put_of_another_client_does_not_compare_with_the_first_clients_requests(
        comparisons: list[int]) -> None:
    store = MitigationStore()
    fill(store, CUID_A, A, 900)
    comparisons[0] = 0
    result = store.put(CUID_B, 1, scope("172.16.0.0/24"), B, now=1.0)
    assert result is not None and result.created
    assert comparisons[0] == 0  # (was 900)


def test_put_looks_only_at_the_requests_it_overlaps(comparisons: list[int]) -> None:
    store = MitigationStore()
    fill(store, CUID_A, A, 900)
    comparisons[0] = 0
    # Covers 10.0.1.0/24 (mid 2) and 10.0.2.0/24 (mid 3): the higher mid supersedes both.
    result = store.put(CUID_A, 5_000, scope("10.0.1.0/24", "10.0.2.0/25"), A, now=1.0)
    assert result is not None and result.created
    assert store.lookup(CUID_A, 2) is None and store.lookup(CUID_A, 3) is None
    assert store.lookup(CUID_A, 4) is not None
    assert comparisons[0] <= 2
    # Another client's request over 10.0.0.0/22 is compared with the three of A's requests
    # inside it (mids 1, 4 and 5,000) and refused (reject-new).
    comparisons[0] = 0
    with pytest.raises(Exception, match="another DOTS client"):
        store.put(CUID_B, 1, scope("10.0.0.0/22"), B, now=2.0)
    assert comparisons[0] == 3  # (was 899)


def test_signal_loss_preemption_looks_only_at_overlapping_requests(
        comparisons: list[int]) -> None:
    store = MitigationStore()
    fill(store, CUID_A, A, 900)
    store.put(CUID_A, 9_000, scope("10.0.7.0/24", trigger=False), A, now=0.0)
    comparisons[0] = 0
    store.signal_lost(CUID_A, now=1.0)
    assert store.lookup(CUID_A, 8) is None  # 10.0.7.0/24, withdrawn for the preconfigured one
    assert comparisons[0] <= 1


# --- the per-client cap ----------------------------------------------------------------------


def test_default_cap_is_1000_requests_per_client() -> None:
    store = MitigationStore()
    fill(store, CUID_A, A, 1_000)
    with pytest.raises(ServiceUnavailable) as info:
        store.put(CUID_A, 1_001, scope(disjoint(1_000)), A, now=1.0)
    # RFC 9132 §9: 5.03, the server cannot handle the request; the diagnostic names the cap.
    response = info.value.to_response()
    assert response.code is Code.SERVICE_UNAVAILABLE
    assert "1000" in response.diagnostic and "max_requests_per_client" in response.diagnostic
    assert store.lookup(CUID_A, 1_001) is None
    assert store.next_event() is None  # nothing happened
    # Another client is not affected by the first one's count.
    assert store.put(CUID_B, 1, scope("172.16.0.0/24"), B, now=1.0) is not None


def test_cap_counts_every_state_the_client_holds_requests_in() -> None:
    store = MitigationStore(MitigationPolicy(max_requests_per_client=3))
    store.put(CUID_A, 1, scope("10.0.0.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("10.0.1.0/24", trigger=False), A, now=0.0)  # preconfigured
    store.put(CUID_A, 3, scope("10.0.2.0/24"), A, now=0.0)
    with pytest.raises(ServiceUnavailable, match="3 mitigation requests"):
        store.put(CUID_A, 4, scope("10.0.3.0/24"), A, now=1.0)
    # Withdrawn but still mitigated (active-but-terminating, RFC 9132 §4.4.4): still held.
    store.delete(CUID_A, 1, A, now=1.0)
    assert store.lookup(CUID_A, 1).state is MitigationState.TERMINATING  # type: ignore[union-attr]
    with pytest.raises(ServiceUnavailable):
        store.put(CUID_A, 4, scope("10.0.3.0/24"), A, now=2.0)
    store.handle_timer(now=1.0 + 120)  # the period ends; the request is gone
    assert store.put(CUID_A, 4, scope("10.0.3.0/24"), A, now=122.0) is not None


def test_at_the_cap_refreshes_and_superseding_requests_are_accepted() -> None:
    store = MitigationStore(MitigationPolicy(max_requests_per_client=2))
    store.put(CUID_A, 1, scope("10.0.0.0/24"), A, now=0.0)
    store.put(CUID_A, 2, scope("10.0.1.0/24"), A, now=0.0)
    refreshed = store.put(CUID_A, 2, scope("10.0.1.0/24"), A, now=1.0)
    assert refreshed is not None and not refreshed.created
    # A higher mid over both replaces them (RFC 9132 §4.4.1.3): the count goes down.
    created = store.put(CUID_A, 3, scope("10.0.0.0/23"), A, now=2.0)
    assert created is not None and created.created
    assert [r.mid for r in store.records(CUID_A)] == [3]
    # A re-request during active-but-terminating replaces the withdrawn one.
    store.put(CUID_A, 4, scope("10.1.0.0/24"), A, now=3.0)
    store.delete(CUID_A, 4, A, now=4.0)
    again = store.put(CUID_A, 5, scope("10.1.0.0/24"), A, now=5.0)
    assert again is not None and again.created
    assert store.lookup(CUID_A, 5).status is Status.ATTACK_MITIGATION_IN_PROGRESS  # type: ignore[union-attr]
