"""The DTLS server's deadline bookkeeping: handshakes in creation order, idle checks only
when due, closed connections released at once and their entries compacted away."""

from __future__ import annotations

import gc

from gateway.transport.session_deadlines import SessionDeadlines


class Conn:
    def __init__(self, created_at: float) -> None:
        self.created_at = created_at
        self.last_activity = created_at


def test_handshake_deadlines_pop_oldest_first_and_stop_at_the_first_in_time() -> None:
    deadlines = SessionDeadlines()
    conns = [Conn(t) for t in (0.0, 1.0, 2.0, 5.0)]
    for conn in conns:
        deadlines.started(conn)
    assert list(deadlines.past_handshake_deadline(now=3.5, deadline=2.0)) == conns[:2]
    assert list(deadlines.past_handshake_deadline(now=3.5, deadline=2.0)) == []  # each once
    # The deadline shrinks when the handshake table fills: more are due at the same time.
    assert list(deadlines.past_handshake_deadline(now=3.5, deadline=1.0)) == conns[2:3]


def test_a_handshake_looked_at_again_gets_a_whole_deadline_and_keeps_the_order() -> None:
    deadlines = SessionDeadlines()
    early, late = Conn(0.0), Conn(3.0)
    deadlines.started(early)
    deadlines.started(late)
    assert list(deadlines.past_handshake_deadline(now=2.0, deadline=2.0)) == [early]
    deadlines.look_again(early, now=4.0)  # its step waited for our workers
    assert list(deadlines.past_handshake_deadline(now=5.5, deadline=2.0)) == [late]
    assert list(deadlines.past_handshake_deadline(now=5.9, deadline=2.0)) == []
    assert list(deadlines.past_handshake_deadline(now=6.0, deadline=2.0)) == [early]


def test_idle_checks_come_due_in_order_and_only_when_due() -> None:
    deadlines = SessionDeadlines()
    a, b = Conn(0.0), Conn(0.0)
    deadlines.watch_idle(a, 10.0)
    deadlines.watch_idle(b, 5.0)
    assert list(deadlines.idle_candidates(4.0)) == []
    assert list(deadlines.idle_candidates(6.0)) == [b]
    assert list(deadlines.idle_candidates(20.0)) == [a]


def test_a_closed_connection_is_released_at_once_and_compacted_away() -> None:
    deadlines = SessionDeadlines()
    conn = Conn(0.0)
    deadlines.started(conn)
    deadlines.watch_idle(conn, 100.0)
    del conn
    gc.collect()
    assert list(deadlines.past_handshake_deadline(now=50.0, deadline=1.0)) == []
    assert list(deadlines.idle_candidates(200.0)) == []
    live = [Conn(0.0) for _ in range(10)]
    dead = [Conn(0.0) for _ in range(3000)]
    for conn in [*live, *dead]:
        deadlines.watch_idle(conn, 100.0)
    dead.clear()
    gc.collect()
    deadlines.compact(len(live), lambda c: c in live)
    assert len(deadlines) == len(live)
