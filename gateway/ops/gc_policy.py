"""The daemon's garbage-collection policy, as pure decisions: what to do when CPython's
cyclic collector starts or finishes a collection, and when to audit what has been frozen.

Why a policy at all: a daemon holding 10,000-50,000 sessions keeps ~30 container objects
per session alive for hours. CPython 3.11 runs a full (generation 2) collection whenever the
objects promoted into generation 2 since the last one reach a quarter of those that survived
it (``long_lived_pending >= long_lived_total / 4`` in ``Modules/gcmodule.c``), and that
collection walks every object in generation 2: 0.2-0.7 s of stalled event loop every
~25 s at 10,000 sessions (issue 21), freeing nothing, because those objects are alive.

The policy: right after each full collection, freeze its survivors (``gc.freeze()``: they
move to the permanent generation, which no automatic collection walks). At that moment the
younger generations are empty (a full collection merges them into generation 2), so only
objects that a full collection has just found reachable are frozen, never garbage. Later
full collections walk only what was promoted since the last one; CPython sets
``long_lived_total`` to that smaller number of survivors, so they come more often but each
is short (the oldest generation's threshold is lowered to make them shorter still, see
``FULL_THRESHOLD``), and the total work stays proportional to what is allocated, not to
what is held.
Frozen objects are still freed by reference counting the moment they are no longer used.

The risk: a frozen object that later ends up in a reference cycle (an object that was alive
at a freeze, then dropped while part of a cycle) is never collected. The audit bounds and
shows that: every ``audit_interval`` seconds everything is unfrozen and one full collection
runs (one long pause, as long as the old ones); the objects it frees are cyclic garbage that
had been frozen, reported as a number (event ``gc.audit``, metrics), and its survivors are
frozen again. A leak then shows as a rising count instead of RSS growth.

This module decides; ``gateway.ops.gc_runtime`` touches ``gc``, the clock and the loop.
Imports: the standard library only (no ``gc``, no ``asyncio``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: CPython's oldest generation: its collections are the full ones.
OLDEST = 2

#: The oldest generation's threshold while freezing (CPython's default: 10). A full
#: collection then follows every second generation-1 collection instead of every eleventh,
#: so it walks what two of them promoted instead of eleven: in the in-process reproduction
#: at 10,000 sessions (31 objects each, heartbeat-like timers) full collections went from
#: 29 ms (mean) with 10 to 1.1 ms with 0, about a generation-1 collection, and the total
#: time in the collector went down too (objects that die within a period are never walked).
#: Without freezing this would not be safe to lower: CPython's own rule
#: (``long_lived_pending >= long_lived_total / 4``) is then what keeps full collections of a
#: big heap rare, and it still applies. The cost: objects that live a few seconds are
#: frozen more often, so a cycle they end up in waits for the audit (which counts it).
FULL_THRESHOLD = 0

#: Default seconds between audits. An audit costs one pause as long as a full collection of
#: the whole heap (the 0.2-0.7 s the policy removes elsewhere at 10,000 sessions; ~1 s at
#: 50,000): once an hour that is one slow 5 s window in 720, far inside a p99. What it
#: bounds is the cyclic garbage frozen objects can leave: with no known cycle left (closed
#: sessions are freed by reference counting, tests/integration/test_session_memory.py), an
#: hour's worth of a future leak is small next to the RSS an operator watches, and the
#: audit's count names it within the hour instead of after days of growth.
DEFAULT_AUDIT_INTERVAL = 3600.0
#: Shortest audit interval: more often than this and the audits are the stalls again.
MIN_AUDIT_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Collection:
    """One finished collection: its generation, how long the interpreter was stopped,
    and what it freed (``uncollectable``: unreachable but kept, in ``gc.garbage``)."""

    generation: int
    seconds: float
    collected: int
    uncollectable: int


@dataclass(frozen=True, slots=True)
class Audit:
    """One audit: the objects that had been frozen and were looked at again, what its full
    collection freed (an ordinary one runs just before it, so this is the cyclic garbage
    that had been frozen), how long it stopped the interpreter, and who asked."""

    examined: int
    collected: int
    uncollectable: int
    seconds: float
    trigger: str  # "timer" or "operator"
    at: float  # ``now`` when it finished

    def as_dict(self) -> dict[str, object]:
        return {"examined": self.examined, "collected": self.collected,
                "uncollectable": self.uncollectable, "seconds": round(self.seconds, 6),
                "trigger": self.trigger}


class GcPolicyError(Exception):
    """A call out of order (our own bug): e.g. an audit finished that never started."""


class GcPolicy:
    """Feed it the collector's start/stop callbacks and the loop's timer; it answers whether
    to freeze now and when the next audit is due.

    ``freeze``: False leaves the collector as CPython runs it (no freeze, no audit); the
    pauses are still measured. ``audit_interval``: seconds between audits, None for none
    (``run an audit`` by an operator still works)."""

    def __init__(self, *, freeze: bool, audit_interval: float | None, now: float) -> None:
        if audit_interval is not None and audit_interval < MIN_AUDIT_INTERVAL:
            raise GcPolicyError(f"audit_interval must be at least {MIN_AUDIT_INTERVAL:g} s, "
                                f"got {audit_interval!r}")
        self.freeze = freeze
        self.audit_interval = audit_interval
        self.collections = [0] * (OLDEST + 1)
        self.collected = [0] * (OLDEST + 1)
        self.freezes = 0
        self.audits = 0
        #: Objects freed by all audits together.
        self.audit_collected = 0
        self.last_audit: Audit | None = None
        self._started_at: float | None = None
        self._generation: int | None = None
        self._auditing: tuple[int, str, float] | None = None  # examined, trigger, started
        self._audit_collection: Collection | None = None
        self._next_audit_at = (None if not freeze or audit_interval is None
                               else now + audit_interval)

    # --- the collector's callbacks ------------------------------------------------------

    def collection_started(self, generation: int, now: float) -> None:
        self._generation = generation
        self._started_at = now

    def collection_finished(self, generation: int, collected: int, uncollectable: int,
                            now: float) -> tuple[Collection | None, bool]:
        """(the collection, or None when its start was not seen: the callback was installed
        during it), and whether to freeze now: after every full collection while the policy
        is on, the audit's included (its survivors go back to the permanent generation)."""
        started, self._started_at = self._started_at, None
        if started is None or self._generation != generation or not 0 <= generation <= OLDEST:
            return None, False
        seen = Collection(generation, max(0.0, now - started), collected, uncollectable)
        self.collections[generation] += 1
        self.collected[generation] += collected
        if self._auditing is not None and generation == OLDEST:
            self._audit_collection = seen
        do_freeze = self.freeze and generation == OLDEST
        if do_freeze:
            self.freezes += 1
        return seen, do_freeze

    def thresholds(self, current: tuple[int, int, int]) -> tuple[int, int, int]:
        """The collector's thresholds to run with, from the ones in force."""
        if not self.freeze or current[0] == 0:  # threshold 0: the collector is disabled
            return current
        return (current[0], current[1], FULL_THRESHOLD)

    # --- audits -------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the next audit is due (absolute, the ``now`` clock), None when none is."""
        return self._next_audit_at

    def audit_due(self, now: float) -> bool:
        return self._next_audit_at is not None and now >= self._next_audit_at

    def audit_started(self, frozen: int, now: float, trigger: str = "timer") -> None:
        """The adapter is about to unfreeze ``frozen`` objects and collect everything."""
        if self._auditing is not None:
            raise GcPolicyError("an audit is already running")
        self._auditing = (frozen, trigger, now)
        self._audit_collection = None

    def audit_finished(self, now: float) -> Audit:
        """The audit's full collection returned: its result, and the next one is scheduled
        ``audit_interval`` after this one (whoever asked for this one)."""
        if self._auditing is None:
            raise GcPolicyError("no audit is running")
        (examined, trigger, started), self._auditing = self._auditing, None
        seen, self._audit_collection = self._audit_collection, None
        if seen is None:  # the callback missed it (removed meanwhile): the outer clock
            seen = Collection(OLDEST, max(0.0, now - started), 0, 0)
        audit = Audit(examined, seen.collected, seen.uncollectable, seen.seconds, trigger, now)
        self.audits += 1
        self.audit_collected += audit.collected
        self.last_audit = audit
        if self.freeze and self.audit_interval is not None:
            self._next_audit_at = now + self.audit_interval
        return audit

    @property
    def auditing(self) -> bool:
        return self._auditing is not None

    def snapshot(self, now: float, frozen: int) -> dict[str, object]:
        """The control socket's ``gc`` status section."""
        due = self._next_audit_at
        return {
            "freeze": self.freeze,
            "audit_interval": self.audit_interval,
            "frozen": frozen,
            "collections": {str(g): n for g, n in enumerate(self.collections)},
            "collected": {str(g): n for g, n in enumerate(self.collected)},
            "freezes": self.freezes,
            "audits": self.audits,
            "last_audit": None if self.last_audit is None else {
                **self.last_audit.as_dict(), "ago": round(now - self.last_audit.at, 1)},
            "next_audit_in": None if due is None else round(max(0.0, due - now), 1),
        }
