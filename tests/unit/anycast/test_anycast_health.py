"""The anycast health machine, driven by a fake clock: rise/fall, damping, drain, refusals."""

from __future__ import annotations

import ast
import itertools
import logging
from pathlib import Path

import pytest

from anycast.health import (
    TRANSITIONS,
    Announce,
    HealthEvent,
    HealthMachine,
    HealthPolicy,
    HealthState,
    TransitionRefused,
    Withdraw,
)

POLICY = HealthPolicy(rise=3, fall=2, hold_down=10.0, max_hold_down=80.0, half_life=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def feed(machine: HealthMachine, clock: Clock, verdicts: str, step: float = 1.0,
         ) -> list[Announce | Withdraw | None]:
    """'+' a passed check, '-' a failed one, one per ``step`` seconds."""
    return [machine.observe(v == "+", clock.tick(step)) for v in verdicts]


def commands(results: list[Announce | Withdraw | None]) -> str:
    return "".join("A" if isinstance(r, Announce) else "W" if isinstance(r, Withdraw) else "."
                   for r in results)


def announced_machine(clock: Clock, policy: HealthPolicy = POLICY) -> HealthMachine:
    machine = HealthMachine(policy)
    assert commands(feed(machine, clock, "+" * policy.rise))[-1] == "A"
    return machine


def test_starts_withdrawn_and_announces_after_rise_passes() -> None:
    clock = Clock()
    machine = HealthMachine(POLICY)
    assert machine.state is HealthState.AWAIT_RISE and not machine.announced
    assert commands(feed(machine, clock, "++")) == ".."
    result = machine.observe(True, clock.tick())
    assert isinstance(result, Announce)
    assert machine.state is HealthState.ANNOUNCED


def test_a_failure_restarts_the_rise_count() -> None:
    clock = Clock()
    machine = HealthMachine(POLICY)
    assert commands(feed(machine, clock, "++-++")) == "....."
    assert commands(feed(machine, clock, "+")) == "A"


def test_withdraws_after_fall_failures_only() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    assert commands(feed(machine, clock, "-+-+-")) == "....."  # never two in a row
    assert machine.announced
    result = feed(machine, clock, "-")[0]
    assert isinstance(result, Withdraw) and "2 failed checks" in result.reason
    assert machine.state is HealthState.AWAIT_RISE and machine.flaps == 1


def test_first_fall_holds_down_for_hold_down_seconds() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    feed(machine, clock, "--")
    fell_at = clock.now
    assert machine.hold_until == pytest.approx(fell_at + 10.0)
    # Healthy again at once: the rise count is met after 3 s, but the hold-down runs 10 s.
    assert commands(feed(machine, clock, "+++")) == "..."
    assert machine.state is HealthState.HOLD_DOWN
    assert machine.get_timer() == pytest.approx(fell_at + 10.0)
    results = feed(machine, clock, "+" * 7)
    assert commands(results) == "......A"
    assert clock.now == pytest.approx(fell_at + 10.0)


def test_a_failure_during_hold_down_needs_a_new_rise() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    feed(machine, clock, "--")
    feed(machine, clock, "+++")
    assert machine.state is HealthState.HOLD_DOWN
    assert commands(feed(machine, clock, "-")) == "."
    assert machine.state is HealthState.AWAIT_RISE
    # Hold-down long over: still three passes in a row are needed.
    clock.tick(100)
    assert commands(feed(machine, clock, "++")) == ".."
    assert commands(feed(machine, clock, "+")) == "A"


def flap_hold_downs(machine: HealthMachine, clock: Clock, count: int, gap: float) -> list[float]:
    """Let the node fall ``count`` times, each ``gap`` seconds after it came back; return
    how long it stayed withdrawn each time."""
    withdrawn_for = []
    for _ in range(count):
        clock.tick(gap)
        feed(machine, clock, "--", step=0.0)
        fell_at = clock.now
        while not machine.announced:
            machine.observe(True, clock.tick(0.5))
        withdrawn_for.append(clock.now - fell_at)
    return withdrawn_for


def test_damping_grows_with_each_rapid_flap_up_to_the_cap() -> None:
    clock = Clock()
    slow_decay = HealthPolicy(rise=3, fall=2, hold_down=10.0, max_hold_down=80.0,
                              half_life=3600.0)
    machine = announced_machine(clock, slow_decay)
    held = flap_hold_downs(machine, clock, 6, gap=1.0)
    # Penalty ~1, ~2, ~3, ~4: the hold-down doubles per extra flap (10, 20, 40, 80 s), then
    # stays at max_hold_down.
    for expected, got in zip([10.0, 20.0, 40.0, 80.0, 80.0, 80.0], held, strict=True):
        assert got == pytest.approx(expected, rel=0.05, abs=0.6)
    assert machine.flaps == 6


def test_damping_growth_is_slowed_by_decay_while_withdrawn() -> None:
    clock = Clock()
    machine = announced_machine(clock)  # half-life 60 s
    held = flap_hold_downs(machine, clock, 6, gap=1.0)
    assert held[0] == pytest.approx(10.0, abs=0.6)
    for shorter, longer in itertools.pairwise(held):
        assert longer >= shorter
    assert held[1] > 15.0 and held[2] > 25.0
    # The penalty decays during the long hold-downs: it levels off below the cap.
    assert held[-1] < 80.0


def test_damping_decays_back_to_the_base_hold_down() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    flap_hold_downs(machine, clock, 3, gap=1.0)
    assert machine.penalty(clock.now) > 1.5
    # Ten half-lives of good health later the penalty is almost gone...
    clock.tick(600.0)
    assert machine.penalty(clock.now) < 0.01
    # ...and the next fall costs the base hold-down again.
    assert flap_hold_downs(machine, clock, 1, gap=0.0)[0] == pytest.approx(10.0, abs=0.6)


def test_penalty_halves_every_half_life() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    feed(machine, clock, "--")
    assert machine.penalty(clock.now) == pytest.approx(1.0)
    assert machine.penalty(clock.now + 60.0) == pytest.approx(0.5)
    assert machine.penalty(clock.now + 120.0) == pytest.approx(0.25)


def test_an_alternating_check_never_flaps_the_announcement() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    # Announced: alternating failures never reach fall = 2.
    assert set(commands(feed(machine, clock, "-+" * 50))) == {"."}
    # Withdrawn (two real failures): alternating passes never reach rise = 3.
    assert commands(feed(machine, clock, "--")) == ".W"
    assert set(commands(feed(machine, clock, "+-" * 50))) == {"."}
    assert not machine.announced


def test_with_rise_and_fall_of_one_damping_bounds_the_flapping() -> None:
    # The most nervous policy: each verdict could flip the route. Damping keeps the node out
    # longer each time, so an alternating check gives few announcements, not one per check.
    clock = Clock()
    policy = HealthPolicy(rise=1, fall=1, hold_down=5.0, max_hold_down=60.0, half_life=60.0)
    machine = HealthMachine(policy)
    results = commands(feed(machine, clock, "+-" * 150))  # 300 s
    announcements = results.count("A")
    assert results.count("W") in (announcements, announcements - 1)
    assert 3 <= announcements <= 15  # of the 150 an undamped rise = fall = 1 would give
    # Later announcements are further apart than earlier ones.
    gaps = [b - a for a, b in itertools.pairwise(i for i, c in enumerate(results) if c == "A")]
    assert gaps[-1] > gaps[0]


def test_drain_withdraws_an_announced_route_and_ignores_later_checks() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    result = machine.drain(clock.tick())
    assert isinstance(result, Withdraw) and result.reason == "drain"
    assert machine.state is HealthState.DRAINING
    assert commands(feed(machine, clock, "+" * 10 + "-" * 10)) == "." * 20
    assert machine.state is HealthState.DRAINING


def test_drain_while_withdrawn_gives_no_command() -> None:
    clock = Clock()
    machine = HealthMachine(POLICY)
    assert machine.drain(clock.tick()) is None
    assert machine.state is HealthState.DRAINING


def test_a_refused_transition_leaves_the_state_unchanged() -> None:
    clock = Clock()
    machine = HealthMachine(POLICY)
    machine.drain(clock.tick())
    with pytest.raises(TransitionRefused, match="'drain' is not allowed in state 'draining'"):
        machine.drain(clock.tick())
    assert machine.state is HealthState.DRAINING
    # The same through the internal entry point for an event that is never valid there.
    machine = announced_machine(clock)
    with pytest.raises(TransitionRefused) as refused:
        machine._fire(HealthEvent.HOLD_EXPIRED, clock.tick())
    assert refused.value.state is HealthState.ANNOUNCED
    assert machine.state is HealthState.ANNOUNCED and machine.flaps == 0


def test_transition_table_only_announces_from_withdrawn_states() -> None:
    into_announced = {state for (state, _), new in TRANSITIONS.items()
                      if new is HealthState.ANNOUNCED}
    assert into_announced == {HealthState.AWAIT_RISE, HealthState.HOLD_DOWN}
    assert not any(state is HealthState.DRAINING for state, _ in TRANSITIONS)


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="anycast.health"):
        machine = announced_machine(clock)
        feed(machine, clock, "--")
    messages = [r.getMessage() for r in caplog.records]
    assert any("await-rise -> announced on risen" in m for m in messages)
    assert any("announced -> await-rise on fell" in m for m in messages)


def test_snapshot_reports_state_and_damping() -> None:
    clock = Clock()
    machine = announced_machine(clock)
    feed(machine, clock, "--")
    snap = machine.snapshot(clock.now)
    assert snap["state"] == "await-rise" and snap["announced"] is False
    assert snap["flaps"] == 1 and snap["penalty"] == 1.0
    assert snap["hold_down_remaining"] == 10.0


@pytest.mark.parametrize("kwargs", [
    {"rise": 0}, {"fall": 0}, {"hold_down": 0.0}, {"hold_down": 20.0, "max_hold_down": 10.0},
    {"half_life": 0.0},
])
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]


def test_health_module_is_pure() -> None:
    path = Path(__file__).resolve().parents[3] / "anycast" / "health.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "enum", "logging", "math", "dataclasses"}
