"""The garbage-collection policy applied to the running daemon: the thin adapter around
``gateway.ops.gc_policy`` that touches ``gc``, the clock and the event loop.

``GcRuntime.start()`` hooks ``gc.callbacks`` (every collection is timed, by generation, and
a full one is followed by ``gc.freeze()`` while ``[gc] freeze`` is on), arms the audit timer
on the loop, and publishes metric families and the control socket's ``gc`` status section
and ``gc-audit`` action. ``stop()`` unhooks it; what is frozen stays frozen (the process is
exiting, and the interpreter's last collection then has less to walk).

Collections run in whichever thread allocates (the handshake workers too), so the callback
only does arithmetic and dict updates on series created up front (a scrape iterating them
from the loop never sees a dict change size); logging and the audit stay on the loop.
Imports: standard library, ``gateway.eventlog``, ``gateway.ops``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping

from gateway.eventlog import log_event
from gateway.ops.control import ControlProviders
from gateway.ops.gc_policy import OLDEST, Audit, GcPolicy
from gateway.ops.metrics import Histogram, Labels, Registry

log = logging.getLogger(__name__)

#: Seconds: a young collection takes tens of microseconds, a full one of a large heap up to
#: seconds (what the policy is there to avoid, and what an audit still costs).
PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0)
_GENERATIONS = tuple(str(g) for g in range(OLDEST + 1))


class GcRuntime:
    """One daemon run's policy. ``clock`` is the monotonic clock (injectable for tests)."""

    def __init__(self, *, freeze: bool, audit_interval: float | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.policy = GcPolicy(freeze=freeze, audit_interval=audit_interval, now=clock())
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pauses: Histogram | None = None
        self._installed = False
        self._thresholds: tuple[int, int, int] = gc.get_threshold()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Hook the collector; with the policy on, collect and freeze once now, so the heap
        built while starting (modules, configuration, a restored relay table) is out of the
        way before the first client arrives."""
        if self._installed:
            return
        gc.callbacks.append(self._on_collection)
        self._installed = True
        self._loop = asyncio.get_running_loop()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(*self.policy.thresholds(self._thresholds))
        if self.policy.freeze:
            gc.collect()  # its stop callback freezes the survivors
            _reset_long_lived_total()
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._installed:
            self._installed = False
            gc.set_threshold(*self._thresholds)
            try:
                gc.callbacks.remove(self._on_collection)
            except ValueError:
                pass  # someone else removed it; nothing left to undo

    # --- operations ---------------------------------------------------------------------

    def register(self, registry: Registry, control: ControlProviders) -> None:
        """Metric families and the control socket's ``gc`` section and ``gc-audit`` action."""
        pauses = registry.histogram(
            "dots_gateway_gc_pause_seconds", "Cyclic garbage collections and how long each "
            "stopped the interpreter, by generation (2: full collections, audits included).",
            ("generation",), buckets=PAUSE_BUCKETS)
        for generation in _GENERATIONS:  # every series exists before a collection thread
            pauses.counts.setdefault((generation,), [0] * (len(PAUSE_BUCKETS) + 1))
            pauses.sums.setdefault((generation,), 0.0)
        self._pauses = pauses
        policy = self.policy
        registry.counter(
            "dots_gateway_gc_collected_objects_total", "Objects freed by the cyclic garbage "
            "collector (reference cycles), by generation.", ("generation",)
        ).add_source(lambda: _by_generation(policy.collected))
        registry.gauge(
            "dots_gateway_gc_frozen_objects", "Objects in the permanent generation, which "
            "automatic collections do not walk ([gc] freeze: the survivors of each full "
            "collection)."
        ).add_source(lambda: {(): float(gc.get_freeze_count())})
        registry.counter(
            "dots_gateway_gc_audits_total", "Audits: all frozen objects unfrozen and one full "
            "collection run ([gc] audit_interval, or the control socket's gc-audit)."
        ).add_source(lambda: {(): float(policy.audits)})
        registry.counter(
            "dots_gateway_gc_audit_collected_objects_total", "Objects the audits freed: "
            "cyclic garbage that had been frozen (a rising count is a reference-cycle leak)."
        ).add_source(lambda: {(): float(policy.audit_collected)})
        registry.gauge(
            "dots_gateway_gc_last_audit_duration_seconds", "How long the last audit stopped "
            "the interpreter."
        ).add_source(lambda: {} if policy.last_audit is None
                     else {(): policy.last_audit.seconds})
        control.status_sections["gc"] = self.snapshot
        control.actions["gc-audit"] = lambda: self.audit("operator").as_dict()

    def snapshot(self) -> dict[str, object]:
        return {**self.policy.snapshot(self.clock(), gc.get_freeze_count()),
                "thresholds": list(gc.get_threshold())}

    def audit(self, trigger: str = "timer") -> Audit:
        """Unfreeze everything and run one full collection now (on the loop: it stops it).
        An ordinary full collection comes first, walking only what is not frozen, so the
        audit's count is the garbage that had been frozen and not the young kind."""
        policy = self.policy
        # (A collection another thread is in the middle of makes gc.collect() return at
        # once: the audit then reports 0 and the next automatic full collection walks, and
        # freezes, what was unfrozen: one long pause, nothing lost.)
        gc.collect()
        policy.audit_started(gc.get_freeze_count(), self.clock(), trigger)
        try:
            gc.unfreeze()
            gc.collect()  # with the policy on, its stop callback freezes the survivors
        finally:
            result = policy.audit_finished(self.clock())
        if policy.freeze:
            _reset_long_lived_total()
        log_event(log, logging.INFO, "gc.audit", "garbage-collection audit",
                  examined=result.examined, collected=result.collected,
                  uncollectable=result.uncollectable, seconds=round(result.seconds, 6),
                  trigger=trigger)
        self._arm()
        return result

    # --- internals ----------------------------------------------------------------------

    def _on_collection(self, phase: str, info: Mapping[str, int]) -> None:
        # Runs inside the collector, in any thread: no logging, no loop calls.
        policy = self.policy
        generation = info["generation"]
        if phase == "start":
            policy.collection_started(generation, self.clock())
            return
        seen, freeze = policy.collection_finished(
            generation, info["collected"], info["uncollectable"], self.clock())
        if seen is not None and self._pauses is not None and generation <= OLDEST:
            self._pauses.observe(seen.seconds, _GENERATIONS[generation])
        if freeze:
            gc.freeze()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.policy.get_timer()
        if due is None or self._loop is None or not self._installed:
            return
        # The policy's clock is perf_counter; the loop's is its own monotonic: a delay.
        self._timer = self._loop.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.policy.audit_due(self.clock()):
            try:
                self.audit("timer")
            except Exception:
                log.exception("garbage-collection audit failed")
                self._arm()
        else:
            self._arm()


def _by_generation(values: list[int]) -> Mapping[Labels, float]:
    return {(g,): float(v) for g, v in zip(_GENERATIONS, values, strict=True)}


def _reset_long_lived_total() -> None:
    """One more full collection right after a freeze: it walks nothing (every generation is
    empty), and CPython sets ``long_lived_total`` to its survivors, none. Otherwise it keeps
    the size of the heap just frozen, and the next full collection would wait for a quarter
    of that to be promoted and then walk it all: one long pause after every audit."""
    gc.collect()
