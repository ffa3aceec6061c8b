"""A client's parallel session while its server is silent during an attack (RFC 9132 §4.7).

Under attack the client's inbound link may be saturated, so unanswered heartbeats do not
mean the server is gone: the client MUST NOT declare the session lost, keeps heartbeating
on it, and SHOULD open a new session alongside (resumption) and send its mitigation
requests on both; once one of them proves alive, the redundant one is dropped. When the
server really died (an anycast edge killed during an attack) the new session lands on
whichever node now holds the route, and it becomes the session.

``ParallelPlan`` decides; the client role opens, probes and closes sessions. Inputs:
``advised`` (the heartbeat monitor's ``ParallelSessionAdvised``), ``established`` /
``attempt_failed`` (the attempt's outcome), ``parallel_answered`` (the new session answered
one of the requests sent on it), ``old_answered`` (the old session answered a heartbeat or
the server's heartbeat arrived on it), ``confirm_expired``, ``handle_timer``. Outputs, pulled
with ``next_event``: ``OpenParallel``, ``ConfirmOld`` (heartbeat the old session once more
before giving up on it), ``PromoteParallel``, ``DropParallel``.

One attempt at a time. The first attempt is immediate; after a failed one the next waits
the ``ReconnectBackoff`` (60 s floor): §4.7 sets that floor for re-establishment failures,
and a client that keeps its old session is still re-establishing one; a client hammering
an anycast address with handshakes while under attack helps nobody.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass

from gateway.dots.errors import DotsUsageError
from gateway.dots.heartbeat import ReconnectBackoff

log = logging.getLogger(__name__)


class ParallelState(enum.Enum):
    IDLE = "idle"  # no parallel session (the old one answers, or we wait out the back-off)
    CONNECTING = "connecting"  # an attempt is under way
    PROBING = "probing"  # the new session is up; waiting for it (or the old) to answer
    CONFIRMING = "confirming"  # the new one answered; one last chance for the old one


class Input(enum.Enum):
    OPEN = "open"
    ESTABLISHED = "established"
    FAILED = "failed"
    PARALLEL_ANSWERED = "parallel-answered"
    OLD_ANSWERED = "old-answered"
    CONFIRM_EXPIRED = "confirm-expired"


_TRANSITIONS: dict[tuple[ParallelState, Input], ParallelState] = {
    (ParallelState.IDLE, Input.OPEN): ParallelState.CONNECTING,
    (ParallelState.CONNECTING, Input.ESTABLISHED): ParallelState.PROBING,
    (ParallelState.CONNECTING, Input.FAILED): ParallelState.IDLE,
    (ParallelState.CONNECTING, Input.OLD_ANSWERED): ParallelState.IDLE,
    (ParallelState.PROBING, Input.PARALLEL_ANSWERED): ParallelState.CONFIRMING,
    (ParallelState.PROBING, Input.OLD_ANSWERED): ParallelState.IDLE,
    (ParallelState.PROBING, Input.FAILED): ParallelState.IDLE,
    (ParallelState.CONFIRMING, Input.OLD_ANSWERED): ParallelState.IDLE,
    (ParallelState.CONFIRMING, Input.CONFIRM_EXPIRED): ParallelState.IDLE,
    (ParallelState.CONFIRMING, Input.FAILED): ParallelState.IDLE,
}


@dataclass(frozen=True, slots=True)
class OpenParallel:
    """Command: open a second session to the same server (resumption first)."""


@dataclass(frozen=True, slots=True)
class ConfirmOld:
    """Command: heartbeat the old session now; ``confirm_expired`` at ``deadline`` if it
    stays silent."""

    deadline: float


@dataclass(frozen=True, slots=True)
class PromoteParallel:
    """Command: the new session answered and the old one stayed silent: the new one becomes
    the session (observations registered again on it); close the old one."""


@dataclass(frozen=True, slots=True)
class DropParallel:
    """Command: close the parallel session (or abandon the attempt): ``reason`` says why."""

    reason: str


ParallelOutput = OpenParallel | ConfirmOld | PromoteParallel | DropParallel


class ParallelPlan:
    """When to open, keep, promote or drop a parallel session (see the module docstring)."""

    def __init__(self, backoff: ReconnectBackoff | None = None, *,
                 confirm_window: float = 3.0) -> None:
        if confirm_window <= 0:
            raise DotsUsageError("the confirmation window must be positive")
        self.state = ParallelState.IDLE
        self.backoff = backoff or ReconnectBackoff()
        #: How long the old session gets to answer once the new one has (RFC 9132 §4.4:
        #: without an RTT estimate a client waits 3 s before sending a NON again).
        self.confirm_window = confirm_window
        #: The old session is silent past missing-hb-allowed (set by ``advised``).
        self.old_silent = False
        self.confirm_at: float | None = None
        self._outputs: deque[ParallelOutput] = deque()

    # --- outputs -----------------------------------------------------------------------------

    def next_event(self) -> ParallelOutput | None:
        return self._outputs.popleft() if self._outputs else None

    def get_timer(self) -> float | None:
        if self.state is ParallelState.CONFIRMING:
            return self.confirm_at
        if self.state is ParallelState.IDLE and self.old_silent:
            return self.backoff.next_attempt_at
        return None

    # --- inputs ------------------------------------------------------------------------------

    def advised(self, now: float) -> None:
        """The old session is silent past missing-hb-allowed while under attack."""
        self.old_silent = True
        self._maybe_open(now)

    def established(self, now: float) -> None:
        self._fire(Input.ESTABLISHED)

    def attempt_failed(self, now: float) -> float:
        """The attempt (or the new session before it answered) failed: the next one waits
        the back-off. Returns when it may run."""
        self._fire(Input.FAILED)
        self.confirm_at = None
        return self.backoff.attempt_failed(now)

    def parallel_answered(self, now: float) -> None:
        if self.state is not ParallelState.PROBING:
            return  # a second answer, or one that arrived after the old session did
        self._fire(Input.PARALLEL_ANSWERED)
        self.confirm_at = now + self.confirm_window
        self._outputs.append(ConfirmOld(self.confirm_at))

    def old_answered(self, now: float) -> None:
        """The old session proved alive: any parallel session is redundant."""
        self.old_silent = False
        self.backoff.succeeded()
        self.confirm_at = None
        if self.state is ParallelState.IDLE:
            return
        stage = self.state
        self._fire(Input.OLD_ANSWERED)
        self._outputs.append(DropParallel(
            "the old session answered" + (" first" if stage is not ParallelState.CONFIRMING
                                          else " when heartbeated once more")))

    def handle_timer(self, now: float) -> None:
        if (self.state is ParallelState.CONFIRMING and self.confirm_at is not None
                and now >= self.confirm_at):
            self._fire(Input.CONFIRM_EXPIRED)
            self.confirm_at = None
            self.old_silent = False
            self.backoff.succeeded()
            self._outputs.append(PromoteParallel())
        elif self.state is ParallelState.IDLE and self.old_silent:
            self._maybe_open(now)

    def promotion_failed(self, now: float) -> float:
        """The new session ended between its answer and its promotion: the old one is still
        silent, so try again after the back-off. Returns when."""
        self.state = ParallelState.IDLE
        self.old_silent = True
        self.confirm_at = None
        return self.backoff.attempt_failed(now)

    def abandon(self) -> None:
        """The old session ended (closed, or replaced by other means): start afresh."""
        self.state = ParallelState.IDLE
        self.old_silent = False
        self.confirm_at = None

    # --- internals ---------------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        if self.state is ParallelState.IDLE and self.backoff.may_attempt(now):
            self._fire(Input.OPEN)
            self._outputs.append(OpenParallel())

    def _fire(self, event: Input) -> None:
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise DotsUsageError(f"parallel session: {event.value} is not allowed in state "
                                 f"{self.state.value}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("parallel session: %s -> %s", self.state.value, new.value)
        self.state = new
