"""The policy's adapter on the real collector, in this process: frozen survivors, the
pauses measured, and the audit reclaiming a reference cycle that freezing had hidden."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.ops.control import ControlProviders
from gateway.ops.gc_runtime import GcRuntime
from gateway.ops.metrics import Registry


class Node:
    peer: Node | None = None


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Whatever a test freezes is unfrozen afterwards: the rest of the suite may count on
    ``gc.collect()`` reaching its cycles."""
    callbacks = list(gc.callbacks)
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def sample(registry: Registry, name: str, labels: tuple[str, ...] = ()) -> float:
    family = registry.get(name)
    assert family is not None
    return family.samples().get(labels, 0.0)


async def test_audit_reclaims_a_cycle_among_frozen_objects(restore_gc: None) -> None:
    runtime = GcRuntime(freeze=True, audit_interval=None)
    registry, control = Registry(), ControlProviders()
    runtime.register(registry, control)
    a, b = Node(), Node()
    a.peer, b.peer = b, a  # a cycle, alive for now
    ref = weakref.ref(a)
    runtime.start()  # one full collection: its survivors, the pair among them, are frozen
    try:
        assert gc.get_freeze_count() > 0
        assert sample(registry, "dots_gateway_gc_frozen_objects") == gc.get_freeze_count()
        del a, b  # now garbage, but frozen: no collection walks it...
        gc.collect()
        assert ref() is not None  # ...which is the risk the audit bounds
        audit = control.actions["gc-audit"]()
        assert ref() is None
        assert audit["collected"] >= 2 and audit["trigger"] == "operator"
        assert audit["examined"] > 0
        assert gc.get_freeze_count() > 0  # the survivors are frozen again
        assert sample(registry, "dots_gateway_gc_audits_total") == 1
        assert sample(registry, "dots_gateway_gc_audit_collected_objects_total") >= 2
        assert sample(registry, "dots_gateway_gc_last_audit_duration_seconds") > 0
        status = control.status_sections["gc"]()
        assert status["audits"] == 1 and status["last_audit"]["collected"] >= 2
    finally:
        runtime.stop()
    assert runtime._on_collection not in gc.callbacks


async def test_thresholds_lowered_while_running_and_restored_at_stop(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    runtime = GcRuntime(freeze=True, audit_interval=None)
    runtime.register(Registry(), ControlProviders())
    runtime.start()
    try:
        assert gc.get_threshold() == (700, 10, 0)
    finally:
        runtime.stop()
    assert gc.get_threshold() == (700, 10, 10)


async def test_pauses_are_measured_by_generation_and_off_freezes_nothing(
        restore_gc: None) -> None:
    gc.unfreeze()
    runtime = GcRuntime(freeze=False, audit_interval=3600)
    registry, control = Registry(), ControlProviders()
    runtime.register(registry, control)
    runtime.start()
    try:
        gc.collect(0)
        gc.collect(2)
        assert gc.get_freeze_count() == 0  # off: CPython's own behaviour
        text = registry.render()
        assert 'dots_gateway_gc_pause_seconds_count{generation="0"} ' in text
        assert 'dots_gateway_gc_pause_seconds_count{generation="2"} ' in text
        pauses = registry.get("dots_gateway_gc_pause_seconds")
        assert pauses is not None
        assert sum(pauses.counts[("2",)]) >= 1  # type: ignore[attr-defined]
        assert control.status_sections["gc"]()["next_audit_in"] is None
    finally:
        runtime.stop()


async def test_a_full_collection_leaves_later_ones_only_the_new_objects(
        restore_gc: None) -> None:
    # What the policy is for: after the freeze, a full collection walks only what came
    # since, so a big long-lived heap no longer lengthens it.
    runtime = GcRuntime(freeze=True, audit_interval=None)
    runtime.register(Registry(), ControlProviders())
    held = [Node() for _ in range(50_000)]  # long-lived state, like sessions
    runtime.start()
    try:
        assert gc.get_freeze_count() >= len(held)
        before = len(gc.get_objects(2))
        assert before < len(held)  # generation 2 no longer holds them
        gc.collect()
        assert len(gc.get_objects(2)) < len(held)
    finally:
        runtime.stop()
    del held


async def test_the_audit_runs_on_the_loop_when_its_time_comes(restore_gc: None) -> None:
    import asyncio

    now = [0.0]
    runtime = GcRuntime(freeze=True, audit_interval=60, clock=lambda: now[0])
    registry, control = Registry(), ControlProviders()
    runtime.register(registry, control)
    now[0] = 60.0  # due as the runtime starts: the timer fires at the next turn
    runtime.start()
    try:
        for _ in range(100):
            if runtime.policy.audits:
                break
            await asyncio.sleep(0.01)
        assert runtime.policy.audits == 1
        assert runtime.policy.last_audit is not None
        assert runtime.policy.last_audit.trigger == "timer"
        assert runtime.policy.get_timer() == 120.0  # the next one, armed again
        assert runtime._timer is not None
    finally:
        runtime.stop()
    assert runtime._timer is None
