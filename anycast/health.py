"""When a node announces its anycast route: a pure health state machine with damping.

The machine is fed one verdict per health check, ``observe(ok, now)``, and answers with the
command to carry out: ``Announce``, ``Withdraw`` or None. It owns the hysteresis (``rise``
consecutive passes before announcing, ``fall`` consecutive failures before withdrawing) and
the flap damping: every fall adds 1 to a penalty that halves every ``half_life`` seconds,
and a node that falls stays withdrawn for ``hold_down * 2 ** (penalty - 1)`` seconds (at most
``max_hold_down``), so a node that keeps flapping is kept out longer each time and earns its
way back as the penalty decays. ``drain(now)`` withdraws for good.

All transitions are in ``TRANSITIONS``; a state change goes through ``_set_state``, which logs
``old -> new``; an event the table does not list raises ``TransitionRefused`` and leaves the
state as it was.

Pure: time arrives as ``now`` (monotonic seconds); no clock, no I/O, no asyncio. Imports:
standard library only.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)


class HealthState(enum.Enum):
    """What the machine waits for. Only ANNOUNCED has the route announced."""

    AWAIT_RISE = "await-rise"  # withdrawn; counting consecutive passed checks
    HOLD_DOWN = "hold-down"  # withdrawn; checks pass, the damped hold-down still runs
    ANNOUNCED = "announced"  # announced; counting consecutive failed checks
    DRAINING = "draining"  # withdrawn for good (drain or shutdown); checks are ignored


class HealthEvent(enum.Enum):
    RISEN = "risen"  # `rise` passes in a row, no hold-down running
    RISEN_HELD = "risen-during-hold-down"  # `rise` passes in a row, hold-down still running
    HOLD_EXPIRED = "hold-down-expired"  # a pass after the hold-down ended
    CHECK_FAILED = "check-failed"  # a failure while held down: count the rises again
    FELL = "fell"  # `fall` failures in a row while announced
    DRAIN = "drain"  # operator drain or shutdown


S, E = HealthState, HealthEvent
#: (state, event) -> new state. Anything missing is refused.
TRANSITIONS: dict[tuple[HealthState, HealthEvent], HealthState] = {
    (S.AWAIT_RISE, E.RISEN): S.ANNOUNCED,
    (S.AWAIT_RISE, E.RISEN_HELD): S.HOLD_DOWN,
    (S.HOLD_DOWN, E.HOLD_EXPIRED): S.ANNOUNCED,
    (S.HOLD_DOWN, E.CHECK_FAILED): S.AWAIT_RISE,
    (S.ANNOUNCED, E.FELL): S.AWAIT_RISE,
    (S.AWAIT_RISE, E.DRAIN): S.DRAINING,
    (S.HOLD_DOWN, E.DRAIN): S.DRAINING,
    (S.ANNOUNCED, E.DRAIN): S.DRAINING,
}


class TransitionRefused(Exception):
    """An event the table has no entry for in the current state (the state is unchanged)."""

    def __init__(self, event: HealthEvent, state: HealthState) -> None:
        super().__init__(f"health event {event.value!r} is not allowed in state {state.value!r}")
        self.event = event
        self.state = state


@dataclass(frozen=True, slots=True)
class Announce:
    """Command: announce the anycast route."""

    reason: str


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Command: withdraw the anycast route (the addresses stay, sessions are still served)."""

    reason: str


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    rise: int = 3
    fall: int = 2
    hold_down: float = 10.0  # seconds withdrawn after a fall with penalty 1
    max_hold_down: float = 300.0
    half_life: float = 120.0  # seconds for the flap penalty to halve

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if not 0 < self.hold_down <= self.max_hold_down:
            raise ValueError("need 0 < hold_down <= max_hold_down")
        if self.half_life <= 0:
            raise ValueError("half_life must be positive")


class HealthMachine:
    """One node's announcement decision. Starts withdrawn, in AWAIT_RISE, with no penalty."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self.state = HealthState.AWAIT_RISE
        self.passes = 0  # consecutive passed checks
        self.failures = 0  # consecutive failed checks
        self.flaps = 0  # falls since start
        self.hold_until = -math.inf  # end of the running hold-down (monotonic seconds)
        self._penalty = 0.0
        self._penalty_at = 0.0

    @property
    def announced(self) -> bool:
        return self.state is HealthState.ANNOUNCED

    def penalty(self, now: float) -> float:
        """The flap penalty at ``now``: +1 per fall, halving every ``half_life`` seconds."""
        age = max(0.0, now - self._penalty_at)
        return self._penalty * math.pow(0.5, age / self.policy.half_life)

    def hold_down_for(self, penalty: float) -> float:
        """Seconds a fall with this (already incremented) penalty keeps the node out."""
        p = self.policy
        return min(p.max_hold_down, p.hold_down * math.pow(2.0, max(0.0, penalty - 1.0)))

    def observe(self, ok: bool, now: float) -> Announce | Withdraw | None:
        """Feed one check verdict; the command to carry out, if the announcement changes."""
        if self.state is HealthState.DRAINING:
            return None
        if ok:
            self.passes, self.failures = self.passes + 1, 0
        else:
            self.passes, self.failures = 0, self.failures + 1
        state = self.state
        if state is HealthState.AWAIT_RISE and ok and self.passes >= self.policy.rise:
            held = now < self.hold_until
            return self._fire(HealthEvent.RISEN_HELD if held else HealthEvent.RISEN, now)
        if state is HealthState.HOLD_DOWN:
            if not ok:
                return self._fire(HealthEvent.CHECK_FAILED, now)
            if now >= self.hold_until:
                return self._fire(HealthEvent.HOLD_EXPIRED, now)
        if state is HealthState.ANNOUNCED and not ok and self.failures >= self.policy.fall:
            return self._fire(HealthEvent.FELL, now)
        return None

    def drain(self, now: float) -> Withdraw | None:
        """Withdraw for good; Withdraw when the route was announced. Raises
        ``TransitionRefused`` when already draining."""
        command = self._fire(HealthEvent.DRAIN, now)
        return command if isinstance(command, Withdraw) else None

    def get_timer(self) -> float | None:
        """When the hold-down ends (the next check after it may announce), or None."""
        return self.hold_until if self.state is HealthState.HOLD_DOWN else None

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "state": self.state.value,
            "announced": self.announced,
            "passes": self.passes,
            "failures": self.failures,
            "flaps": self.flaps,
            "penalty": round(self.penalty(now), 3),
            "hold_down_remaining": round(max(0.0, self.hold_until - now), 3),
        }

    # --- transitions -------------------------------------------------------------------------

    def _fire(self, event: HealthEvent, now: float) -> Announce | Withdraw | None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise TransitionRefused(event, self.state)
        was_announced = self.announced
        if event is HealthEvent.FELL:
            self._penalty = self.penalty(now) + 1.0
            self._penalty_at = now
            self.flaps += 1
            self.hold_until = now + self.hold_down_for(self._penalty)
        if event is HealthEvent.CHECK_FAILED:
            self.passes = 0
        self._set_state(new, event, now)
        if new is HealthState.ANNOUNCED:
            return Announce(f"{self.passes} passed checks in a row")
        if was_announced:
            if event is HealthEvent.DRAIN:
                return Withdraw("drain")
            return Withdraw(f"{self.failures} failed checks in a row; hold-down "
                            f"{self.hold_until - now:.1f} s (penalty {self._penalty:.2f})")
        return None

    def _set_state(self, new: HealthState, event: HealthEvent, now: float) -> None:
        old, self.state = self.state, new
        # The fields of gateway.eventlog's "anycast.health" event, given to logging directly:
        # this module imports nothing but the standard library.
        log.info("anycast health %s -> %s on %s", old.value, new.value, event.value, extra={
            "event": "anycast.health", "old": old.value, "new": new.value, "cause": event.value,
            "penalty": round(self.penalty(now), 2),
            "hold_down": round(max(0.0, self.hold_until - now), 1)})
