"""Heartbeats and loss detection for one signal-channel session (RFC 9132 §4.7).

Both agents send ``PUT /hb`` every heartbeat-interval and answer the peer's. A session is
lost after missing-hb-allowed consecutive unanswered heartbeats, with two exceptions the
RFC makes: the server never declares loss while any traffic from the client arrives (the
client's downlink is probably saturated), and the client never declares loss while it is
under attack (it keeps the session and opens another in parallel instead).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.dots.errors import DotsUsageError

log = logging.getLogger(__name__)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class HeartbeatState(enum.Enum):
    DISABLED = "disabled"  # heartbeat-interval 0 (§4.5.1)
    AWAIT_RESPONSE = "await-response"  # running; outstanding heartbeats below the threshold
    PEER_SILENT = "peer-silent"  # threshold reached, but loss may not be declared (yet)
    SIGNAL_LOST = "signal-lost"  # final for this session


class Input(enum.Enum):
    ENABLE = "enable"
    DISABLE = "disable"
    THRESHOLD_REACHED = "threshold-reached"
    RESPONSE = "response"
    LOSS = "loss"


_TRANSITIONS: dict[tuple[HeartbeatState, Input], HeartbeatState] = {
    (HeartbeatState.DISABLED, Input.ENABLE): HeartbeatState.AWAIT_RESPONSE,
    (HeartbeatState.AWAIT_RESPONSE, Input.DISABLE): HeartbeatState.DISABLED,
    (HeartbeatState.AWAIT_RESPONSE, Input.THRESHOLD_REACHED): HeartbeatState.PEER_SILENT,
    (HeartbeatState.AWAIT_RESPONSE, Input.LOSS): HeartbeatState.SIGNAL_LOST,
    (HeartbeatState.PEER_SILENT, Input.RESPONSE): HeartbeatState.AWAIT_RESPONSE,
    (HeartbeatState.PEER_SILENT, Input.DISABLE): HeartbeatState.DISABLED,
    (HeartbeatState.PEER_SILENT, Input.LOSS): HeartbeatState.SIGNAL_LOST,
}


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Command: send ``PUT /hb`` with this peer-hb-status."""

    peer_hb_status: bool


@dataclass(frozen=True, slots=True)
class HeartbeatMissed:
    """Event: a heartbeat went unanswered; ``outstanding`` in a row so far."""

    outstanding: int


@dataclass(frozen=True, slots=True)
class SignalLost:
    """Event: the session is considered disconnected (§4.7)."""


@dataclass(frozen=True, slots=True)
class ParallelSessionAdvised:
    """Event (client, under attack): keep this session, and open a new one alongside (§4.7)."""


HeartbeatOutput = SendHeartbeat | HeartbeatMissed | SignalLost | ParallelSessionAdvised

# States as plain globals for the per-request calls (configure, get_timer): in Python 3.11
# every ``HeartbeatState.X`` goes through EnumType.__getattr__'s slot (~0.1-0.2 us each).
_DISABLED, _AWAIT_RESPONSE = HeartbeatState.DISABLED, HeartbeatState.AWAIT_RESPONSE
_PEER_SILENT, _SIGNAL_LOST = HeartbeatState.PEER_SILENT, HeartbeatState.SIGNAL_LOST
_SERVER = Role.SERVER
_NOT_SENDING = (_DISABLED, _SIGNAL_LOST)


class HeartbeatMonitor:
    """One side's heartbeat schedule and loss detector; drive it with events and ``now``."""

    def __init__(self, role: Role, now: float, *, heartbeat_interval: int = 30,
                 missing_hb_allowed: int = 15) -> None:
        self.role = role
        self.state = _DISABLED
        self.interval = 0
        self.missing_hb_allowed = missing_hb_allowed
        self.under_attack = False  # client side: set while the client sees an attack
        self.outstanding = 0
        self.next_send_at: float | None = None
        self.last_traffic_at = now
        self.last_peer_heartbeat_at: float | None = None
        self._advised_parallel = False
        self._outputs: deque[HeartbeatOutput] = deque()
        self.configure(heartbeat_interval, missing_hb_allowed, now)

    # --- outputs -----------------------------------------------------------------------------

    def next_event(self) -> HeartbeatOutput | None:
        return self._outputs.popleft() if self._outputs else None

    def get_timer(self) -> float | None:
        return self.next_send_at if self.state not in _NOT_SENDING else None

    # --- inputs ------------------------------------------------------------------------------

    def configure(self, heartbeat_interval: int, missing_hb_allowed: int, now: float) -> None:
        """Apply the parameter set in force (it changes with mitigation activity, §4.5)."""
        if missing_hb_allowed < 1:
            raise DotsUsageError("missing-hb-allowed must be at least 1")
        if self.state is _SIGNAL_LOST:
            return
        changed = heartbeat_interval != self.interval
        self.interval = heartbeat_interval
        self.missing_hb_allowed = missing_hb_allowed
        if heartbeat_interval == 0:
            if self.state is not _DISABLED:
                self._fire(Input.DISABLE)
            self.next_send_at = None
            self.outstanding = 0
            return
        if self.state is _DISABLED:
            self._fire(Input.ENABLE)
            self.next_send_at = now + heartbeat_interval
        elif changed:
            self.next_send_at = min(self.next_send_at or now + heartbeat_interval,
                                    now + heartbeat_interval)

    def traffic_received(self, now: float) -> None:
        """Any message from the peer arrived (it proves the peer can still reach us)."""
        self.last_traffic_at = now

    def response_received(self, now: float) -> None:
        """The peer answered one of our heartbeats (2.04), or any of our requests."""
        self.last_traffic_at = now
        self.outstanding = 0
        self._advised_parallel = False
        if self.state is _PEER_SILENT:
            self._fire(Input.RESPONSE)

    def peer_heartbeat_received(self, now: float, peer_hb_status: bool) -> None:
        """The peer's own ``PUT /hb`` arrived; we answer it 2.04 elsewhere."""
        self.last_traffic_at = now
        self.last_peer_heartbeat_at = now
        if self.role is _SERVER and not peer_hb_status and self.interval:
            # §4.7: the client does not hear our heartbeats; answer with one right away.
            self._outputs.append(SendHeartbeat(peer_hb_status=True))

    def handle_timer(self, now: float) -> None:
        if self.next_send_at is None or now < self.next_send_at or self.state in _NOT_SENDING:
            return
        if self.outstanding:
            self._outputs.append(HeartbeatMissed(self.outstanding))
        if self.outstanding >= self.missing_hb_allowed:
            self._threshold_reached(now)
            if self.next_send_at is None:  # loss declared: this session sends no more
                return
        self._outputs.append(SendHeartbeat(self.peer_hb_status(now)))
        self.outstanding += 1
        self.next_send_at = now + self.interval

    def peer_hb_status(self, now: float) -> bool:
        """Whether the peer's heartbeats arrived within the last 2 x interval (§4.7)."""
        return (self.last_peer_heartbeat_at is not None
                and now - self.last_peer_heartbeat_at <= 2 * self.interval)

    # --- internals ---------------------------------------------------------------------------

    def _threshold_reached(self, now: float) -> None:
        if self.state is _AWAIT_RESPONSE:
            self._fire(Input.THRESHOLD_REACHED)
        if self.role is _SERVER:
            window = self.missing_hb_allowed * self.interval
            if now - self.last_traffic_at >= window:  # §4.7: no traffic at all in the window
                self._lose()
        elif self.under_attack:
            if not self._advised_parallel:  # §4.7: keep this session, try a new one too
                self._advised_parallel = True
                self._outputs.append(ParallelSessionAdvised())
        else:
            self._lose()

    def _lose(self) -> None:
        self._fire(Input.LOSS)
        self.next_send_at = None
        self._outputs.append(SignalLost())

    def _fire(self, event: Input) -> None:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise DotsUsageError(f"heartbeat {self.role.value}: {event.value} is not allowed in "
                                 f"state {self.state.value}")
        if log.isEnabledFor(logging.DEBUG):  # enum .value lookups cost even when unused
            log.debug("heartbeat %s: %s -> %s", self.role.value, self.state.value, new.value)
        self.state = new


class ReconnectBackoff:
    """When a client may retry a failed (D)TLS session establishment (§4.7 note).

    The first attempt after a loss is immediate (resumption is cheap); after a failed
    attempt the next one waits ``interval`` seconds, never less than 60 (MUST NOT) and by
    default 300 (SHOULD NOT retry more often), plus up to 10% jitter so that many clients
    that lost the same server do not return in lockstep. With a ``maximum`` above
    ``interval`` the wait doubles after each failure up to ``maximum``, which it never
    exceeds: there the jitter shortens the wait instead (never below ``interval``).
    """

    MINIMUM = 60
    RECOMMENDED = 300

    def __init__(self, interval: float = RECOMMENDED,
                 jitter: Callable[[], float] = random.random, *,
                 maximum: float | None = None) -> None:
        if interval < self.MINIMUM:
            raise DotsUsageError(
                f"reconnect interval below {self.MINIMUM} s violates RFC 9132 §4.7")
        if maximum is not None and maximum < interval:
            raise DotsUsageError(f"reconnect maximum {maximum} below the interval {interval}")
        self.interval = interval
        self.maximum = maximum
        self._jitter = jitter
        self.next_attempt_at: float | None = None
        self.failures = 0

    def may_attempt(self, now: float) -> bool:
        return self.next_attempt_at is None or now >= self.next_attempt_at

    def attempt_failed(self, now: float) -> float:
        self.failures += 1
        self.next_attempt_at = now + self.wait()
        return self.next_attempt_at

    def wait(self) -> float:
        """Seconds from a failure (the ``failures``-th) to the next attempt."""
        jitter = 0.1 * self._jitter()
        if self.maximum is None:
            return self.interval * (1 + jitter)
        doublings = max(0, min(self.failures - 1, 32))
        base = min(self.maximum, self.interval * float(1 << doublings))
        wait = base * (1 + jitter)
        if wait > self.maximum:
            wait = max(self.interval, self.maximum * (1 - jitter))
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt_at = None
