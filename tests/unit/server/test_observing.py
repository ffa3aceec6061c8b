"""The server's tick and status changes look at the sessions that observe something, not at
every session (issue 21: the soak's 50,000 sessions cost ~19 ms per full scan, twice a
second, on this VM): ``ServerRole.observing`` holds each session that got an observation,
and the tick forgets those left with none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.dots.mitigation import MitigationStore
from gateway.dots.server import DotsServerCore
from gateway.server.observe import PERIODIC_NOTIFICATION
from gateway.server.role import ServerRole
from tests.unit.server.test_observe_limits import BASE, Client, mitigation

HB_PATH = (".well-known", "dots", "hb")
HB = bytes.fromhex("a11831a11833f5")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked() -> Iterator[tuple[ServerRole, Clock]]:
    clock = Clock()
    role = ServerRole(DotsServerCore(MitigationStore()), clock=clock)
    yield role, clock
    if role._tick is not None:
        role._tick.cancel()
    for session in list(role.sessions.values()):
        session.connection_lost("test over")


async def test_only_observers_are_looked_at_and_they_still_get_notified(
        clocked: tuple[ServerRole, Clock]) -> None:
    role, clock = clocked
    quiet = [Client(role) for _ in range(20)]
    for client in quiet:
        (answer,) = client.request(3, HB_PATH, HB)
        assert answer.code == 0x44
    observer = Client(role)
    observer.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    (registered,) = observer.request(1, (*BASE, "mid=1"), observe=0)
    assert registered.observe is not None
    assert set(role.observing) == {observer.session.dots.id}

    # A periodic notification (RFC 9132 §4.4.2.1) still leaves from the tick.
    clock.now += PERIODIC_NOTIFICATION + 1
    role._on_tick()
    notes = observer.take() + observer.turn()
    assert any(m.token == registered.token for m in notes)
    # the quiet sessions got the server's heartbeats (PUT), no notification
    assert all(m.code == 3 for c in quiet for m in c.take())

    # Deregistered: the next tick forgets the session.
    observer.request(1, (*BASE, "mid=1"), observe=1, token=registered.token)
    assert not observer.session.observations
    role._on_tick()
    assert role.observing == {}


async def test_a_closed_observer_leaves_observing(clocked: tuple[ServerRole, Clock]) -> None:
    role, _ = clocked
    observer = Client(role)
    observer.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    observer.request(1, (*BASE, "mid=1"), observe=0)
    assert observer.session.dots.id in role.observing
    observer.session.connection_lost("peer gone")
    assert role.observing == {}
    role._on_tick()  # nothing left to look at, nothing raised
