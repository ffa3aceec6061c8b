"""The parallel-session plan of a client whose server goes silent during an attack
(RFC 9132 §4.7): one attempt at a time, the 60 s floor after a failure, the old session
kept when it answers, the new one promoted only after the old had one more chance."""

from __future__ import annotations

import pytest

from gateway.dots.errors import DotsUsageError
from gateway.dots.heartbeat import HeartbeatMonitor, ParallelSessionAdvised, ReconnectBackoff, Role
from gateway.dots.parallel import (
    ConfirmOld,
    DropParallel,
    OpenParallel,
    ParallelPlan,
    ParallelState,
    PromoteParallel,
)


def drain(plan: ParallelPlan) -> list[object]:
    out = []
    while (event := plan.next_event()) is not None:
        out.append(event)
    return out


def plan() -> ParallelPlan:
    return ParallelPlan(ReconnectBackoff(60, lambda: 0.0), confirm_window=3.0)


def test_advice_opens_one_attempt_at_a_time() -> None:
    p = plan()
    p.advised(10.0)
    assert drain(p) == [OpenParallel()]
    assert p.state is ParallelState.CONNECTING
    p.advised(11.0)  # the monitor again, or the timer: no second attempt
    p.handle_timer(12.0)
    assert drain(p) == []
    assert p.get_timer() is None


def test_new_session_answers_then_old_stays_silent_promotes() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.established(1.0)
    assert p.state is ParallelState.PROBING
    p.parallel_answered(2.0)
    assert drain(p) == [ConfirmOld(5.0)]
    assert p.get_timer() == 5.0
    p.handle_timer(4.9)
    assert drain(p) == []
    p.handle_timer(5.0)
    assert drain(p) == [PromoteParallel()]
    assert p.state is ParallelState.IDLE and not p.old_silent
    assert p.get_timer() is None


@pytest.mark.parametrize("stage", ["connecting", "probing", "confirming"])
def test_old_session_answering_drops_the_parallel_one(stage: str) -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    if stage != "connecting":
        p.established(1.0)
    if stage == "confirming":
        p.parallel_answered(2.0)
        drain(p)
    p.old_answered(2.5)
    events = drain(p)
    assert len(events) == 1 and isinstance(events[0], DropParallel)
    assert p.state is ParallelState.IDLE and not p.old_silent
    p.handle_timer(100.0)  # nothing more: the old session is alive
    assert drain(p) == [] and p.get_timer() is None


def test_a_late_answer_on_the_parallel_session_changes_nothing() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.established(1.0)
    p.old_answered(2.0)
    drain(p)
    p.parallel_answered(2.1)
    assert drain(p) == [] and p.state is ParallelState.IDLE


def test_failed_attempt_waits_the_60_s_floor_then_retries_while_silent() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    at = p.attempt_failed(1.0)
    assert at == 61.0  # §4.7: never more often than every 60 s
    assert p.get_timer() == 61.0
    p.advised(30.0)  # the monitor may advise again: still held back
    p.handle_timer(30.0)
    assert drain(p) == []
    p.handle_timer(61.0)
    assert drain(p) == [OpenParallel()]


def test_failure_after_establishment_also_backs_off() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.established(1.0)
    assert p.attempt_failed(20.0) == 80.0
    assert p.state is ParallelState.IDLE and p.old_silent


def test_old_answer_resets_the_back_off() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.attempt_failed(1.0)
    p.old_answered(5.0)
    assert p.backoff.next_attempt_at is None and p.get_timer() is None
    p.advised(7.0)  # silent again later: at once
    assert drain(p) == [OpenParallel()]


def test_promotion_failing_keeps_the_old_session_silent_and_backs_off() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.established(1.0)
    p.parallel_answered(2.0)
    drain(p)
    p.handle_timer(5.0)
    assert drain(p) == [PromoteParallel()]
    assert p.promotion_failed(5.5) == 65.5
    assert p.old_silent and p.get_timer() == 65.5
    p.handle_timer(65.5)
    assert drain(p) == [OpenParallel()]


def test_abandon_returns_to_idle() -> None:
    p = plan()
    p.advised(0.0)
    drain(p)
    p.abandon()
    assert p.state is ParallelState.IDLE and not p.old_silent and p.get_timer() is None


def test_transitions_not_in_the_table_are_usage_errors() -> None:
    p = plan()
    with pytest.raises(DotsUsageError, match="established is not allowed in state idle"):
        p.established(0.0)
    assert p.state is ParallelState.IDLE
    with pytest.raises(DotsUsageError):
        ParallelPlan(confirm_window=0)


def test_monitor_advises_only_under_attack() -> None:
    # The input the plan reacts to: the client monitor under attack advises a parallel
    # session at missing-hb-allowed instead of declaring loss (§4.7).
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=1, missing_hb_allowed=2)
    m.under_attack = True
    events = []
    for t in range(1, 6):
        m.handle_timer(float(t))
        while (e := m.next_event()) is not None:
            events.append(e)
    assert events.count(ParallelSessionAdvised()) == 1
    assert m.get_timer() is not None  # it keeps heartbeating on the old session
