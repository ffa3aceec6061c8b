"""Who may start a DTLS handshake (Admission): caps, fairness between sources, deadline."""

from __future__ import annotations

import pytest

from gateway.transport.dtls_admission import (
    HANDSHAKE_LIMIT,
    RATE_LIMIT,
    SESSION_LIMIT,
    SOURCE_LIMIT,
    Admission,
    Limits,
)

LIMITS = Limits(max_handshakes=6, max_handshakes_per_source=3, handshake_burst=1000,
                handshake_deadline=20.0, handshake_deadline_min=4.0)


def admit(admission: Admission[str], source: str, item: str, now: float = 0.0) -> str | None:
    """Start ``item`` if admitted (evicting as told); the evicted item, or None."""
    verdict = admission.check(source, 0, now, consume=True)
    assert verdict.refusal is None, verdict.refusal
    if verdict.evict is not None:
        admission.ended(source_of(verdict.evict), verdict.evict)
    admission.started(source, item)
    return verdict.evict


def source_of(item: str) -> str:
    return item.split("#")[0]


def test_a_source_holds_at_most_its_share() -> None:
    admission: Admission[str] = Admission(LIMITS)
    for i in range(3):
        admit(admission, "a", f"a#{i}")
    assert admission.check("a", 0, 0.0, consume=False).refusal == SOURCE_LIMIT
    assert admission.check("a", 0, 0.0, consume=True).refusal == SOURCE_LIMIT
    admission.ended("a", "a#1")
    assert admission.check("a", 0, 0.0, consume=True).refusal is None


def test_at_the_cap_a_source_with_none_pending_takes_the_oldest_of_the_busiest() -> None:
    admission: Admission[str] = Admission(LIMITS)
    for item in ("a#0", "b#0", "a#1", "b#1", "a#2", "c#0"):  # a: 3, b: 2, c: 1
        admit(admission, source_of(item), item)
    assert admission.handshaking == 6
    probe = admission.check("d", 0, 0.0, consume=False)
    assert probe.refusal is None and probe.evict is None  # no choice made before the cookie
    assert admit(admission, "d", "d#0") == "a#0"
    assert admission.pending_of("a") == 2 and admission.handshaking == 6
    # Now a: 2, b: 2, c: 1, d: 1. "c" holding 1 may take from a 2-holder only if that
    # leaves it no better off than the one it took from: 2 > 1 + 1 is false.
    assert admission.check("c", 0, 0.0, consume=True).refusal == HANDSHAKE_LIMIT
    assert admit(admission, "e", "e#0") == "a#1"  # e has none: 2 > 0 + 1


def test_equals_never_evict_each_other() -> None:
    admission: Admission[str] = Admission(Limits(max_handshakes=3, max_handshakes_per_source=3))
    for item in ("a#0", "b#0", "c#0"):
        admit(admission, source_of(item), item)
    assert admission.check("d", 0, 0.0, consume=True).refusal == HANDSHAKE_LIMIT


def test_the_session_cap_and_the_rate_still_apply() -> None:
    admission: Admission[str] = Admission(Limits(max_sessions=5, handshake_burst=2,
                                                 handshakes_per_source_per_second=1.0))
    assert admission.check("a", 5, 0.0, consume=False).refusal == SESSION_LIMIT
    assert admission.check("a", 0, 0.0, consume=True).refusal is None
    assert admission.check("a", 0, 0.0, consume=True).refusal is None
    assert admission.check("a", 0, 0.0, consume=True).refusal == RATE_LIMIT
    assert admission.check("a", 0, 0.0, consume=False).refusal is None  # no token taken
    assert admission.check("a", 0, 1.0, consume=True).refusal is None  # refilled


def test_ended_is_idempotent_and_forgets_empty_sources() -> None:
    admission: Admission[str] = Admission(LIMITS)
    admit(admission, "a", "a#0")
    admission.ended("a", "a#0")
    admission.ended("a", "a#0")
    admission.ended("z", "z#0")
    assert admission.handshaking == 0 and admission._pending == {}


@pytest.mark.parametrize(("pending", "deadline"), [
    (0, 20.0), (3, 20.0), (4, 20.0 - 16.0 / 3), (5, 20.0 - 2 * 16.0 / 3), (6, 4.0),
])
def test_the_deadline_shrinks_as_the_table_fills(pending: int, deadline: float) -> None:
    admission: Admission[str] = Admission(Limits(max_handshakes=6, max_handshakes_per_source=6,
                                                 handshake_deadline=20.0,
                                                 handshake_deadline_min=4.0))
    for i in range(pending):
        admit(admission, "a", f"a#{i}")
    assert admission.deadline() == pytest.approx(deadline)


def test_a_minimum_above_the_deadline_does_not_lengthen_it() -> None:
    admission: Admission[str] = Admission(Limits(max_handshakes=1, handshake_deadline=2.0,
                                                 handshake_deadline_min=4.0))
    admit(admission, "a", "a#0")
    assert admission.deadline() == 2.0
