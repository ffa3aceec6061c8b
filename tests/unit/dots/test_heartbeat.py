"""Heartbeat scheduling and loss detection with the RFC's exceptions (RFC 9132 §4.7)."""

from __future__ import annotations

import pytest

from gateway.dots.errors import DotsUsageError
from gateway.dots.heartbeat import (
    HeartbeatMissed,
    HeartbeatMonitor,
    HeartbeatState,
    Input,
    ParallelSessionAdvised,
    ReconnectBackoff,
    Role,
    SendHeartbeat,
    SignalLost,
)


def events(m: HeartbeatMonitor) -> list[object]:
    out = []
    while (e := m.next_event()) is not None:
        out.append(e)
    return out


def run(m: HeartbeatMonitor, until: float) -> list[object]:
    out: list[object] = []
    while (t := m.get_timer()) is not None and t <= until:
        m.handle_timer(t)
        out.extend(events(m))
    return out


def test_sends_every_interval_and_answers_reset_the_count() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=30, missing_hb_allowed=3)
    assert m.get_timer() == 30
    m.handle_timer(30.0)
    assert events(m) == [SendHeartbeat(peer_hb_status=False)]
    m.response_received(31.0)
    m.peer_heartbeat_received(40.0, True)
    m.handle_timer(60.0)
    assert events(m) == [SendHeartbeat(peer_hb_status=True)]
    assert m.outstanding == 1


def test_client_declares_loss_after_missing_hb_allowed() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=10, missing_hb_allowed=3)
    out = run(m, 40.0)
    assert out == [SendHeartbeat(False), HeartbeatMissed(1), SendHeartbeat(False),
                   HeartbeatMissed(2), SendHeartbeat(False), HeartbeatMissed(3), SignalLost()]
    assert m.state is HeartbeatState.SIGNAL_LOST and m.get_timer() is None


def test_client_under_attack_never_declares_loss_but_advises_parallel_session() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=10, missing_hb_allowed=2)
    m.under_attack = True
    out = run(m, 100.0)
    assert SignalLost() not in out
    assert out.count(ParallelSessionAdvised()) == 1
    assert m.state is HeartbeatState.PEER_SILENT
    assert out.count(SendHeartbeat(False)) == 10  # it keeps heartbeating on the old session
    m.response_received(101.0)
    assert m.state is HeartbeatState.AWAIT_RESPONSE


def test_server_does_not_declare_loss_while_client_traffic_arrives() -> None:
    m = HeartbeatMonitor(Role.SERVER, 0.0, heartbeat_interval=10, missing_hb_allowed=3)
    for t in range(10, 200, 10):
        m.traffic_received(t - 5.0)  # e.g. client heartbeats; our heartbeats go unanswered
        m.handle_timer(float(t))
    assert SignalLost() not in events(m)
    assert m.state is HeartbeatState.PEER_SILENT


def test_server_declares_loss_only_after_a_whole_silent_window() -> None:
    m = HeartbeatMonitor(Role.SERVER, 0.0, heartbeat_interval=10, missing_hb_allowed=3)
    m.traffic_received(25.0)
    out = run(m, 54.0)
    assert SignalLost() not in out  # 3 unanswered at t=40, but traffic 15 s ago
    out = run(m, 60.0)
    assert out[-1] == SignalLost()  # 35 s of silence >= 3 x 10 s


def test_server_answers_peer_hb_status_false_with_an_immediate_heartbeat() -> None:
    m = HeartbeatMonitor(Role.SERVER, 0.0, heartbeat_interval=30, missing_hb_allowed=3)
    m.peer_heartbeat_received(5.0, peer_hb_status=False)
    assert events(m) == [SendHeartbeat(True)]
    m.peer_heartbeat_received(6.0, peer_hb_status=True)
    assert events(m) == []


def test_interval_zero_disables_and_reenables() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=0, missing_hb_allowed=3)
    assert m.state is HeartbeatState.DISABLED and m.get_timer() is None
    m.handle_timer(1000.0)
    assert events(m) == []
    m.configure(20, 3, now=1000.0)
    assert m.state is HeartbeatState.AWAIT_RESPONSE and m.get_timer() == 1020.0
    m.configure(0, 3, now=1001.0)
    assert m.state is HeartbeatState.DISABLED


def test_shorter_interval_pulls_the_next_heartbeat_forward() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=240, missing_hb_allowed=3)
    m.configure(15, 3, now=10.0)
    assert m.get_timer() == 25.0


def test_refused_transition_leaves_state_unchanged() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=0)
    with pytest.raises(DotsUsageError, match="loss is not allowed in state disabled"):
        m._fire(Input.LOSS)
    assert m.state is HeartbeatState.DISABLED
    with pytest.raises(DotsUsageError):
        m.configure(30, 0, now=0.0)


def test_lost_session_ignores_reconfiguration() -> None:
    m = HeartbeatMonitor(Role.CLIENT, 0.0, heartbeat_interval=10, missing_hb_allowed=1)
    run(m, 30.0)
    m.configure(30, 3, now=31.0)
    assert m.state is HeartbeatState.SIGNAL_LOST and m.get_timer() is None


def test_reconnect_backoff_respects_the_60_s_floor() -> None:
    with pytest.raises(DotsUsageError):
        ReconnectBackoff(30)
    b = ReconnectBackoff(jitter=lambda: 0.5)
    assert b.may_attempt(0.0)  # first attempt right after loss
    assert b.attempt_failed(0.0) == pytest.approx(315.0)
    assert not b.may_attempt(314.0) and b.may_attempt(315.0)
    b.succeeded()
    assert b.may_attempt(0.0) and b.failures == 0


def test_reconnect_backoff_doubles_up_to_a_maximum_it_never_exceeds() -> None:
    # Issue 20 §7: the next attempt was 327 s away after an upstream restart (a flat 300 s
    # plus jitter); with a maximum the wait starts at the 60 s floor and is capped.
    b = ReconnectBackoff(60, lambda: 1.0, maximum=300)
    waits = []
    for _ in range(6):
        at = b.attempt_failed(1000.0)
        waits.append(at - 1000.0)
    assert waits == pytest.approx([66.0, 132.0, 264.0, 270.0, 270.0, 270.0])
    assert all(60 <= w <= 300 for w in waits)
    flat = ReconnectBackoff(60, lambda: 0.0, maximum=60)
    assert [flat.attempt_failed(0.0) for _ in range(3)] == [60.0, 60.0, 60.0]
    with pytest.raises(DotsUsageError):
        ReconnectBackoff(120, maximum=60)
