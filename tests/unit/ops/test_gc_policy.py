"""The garbage-collection policy's decisions, driven by callbacks and a fake clock (no
``gc`` here; tests/unit/ops/test_gc_runtime.py runs the adapter on the real collector)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.config.operations import GC_AUDIT_DEFAULT, GC_AUDIT_MIN
from gateway.ops.gc_policy import (
    DEFAULT_AUDIT_INTERVAL,
    FULL_THRESHOLD,
    MIN_AUDIT_INTERVAL,
    Collection,
    GcPolicy,
    GcPolicyError,
)


def collect(policy: GcPolicy, generation: int, now: float, seconds: float = 0.01,
            collected: int = 0) -> tuple[Collection | None, bool]:
    policy.collection_started(generation, now)
    return policy.collection_finished(generation, collected, 0, now + seconds)


def test_freezes_after_full_collections_only() -> None:
    policy = GcPolicy(freeze=True, audit_interval=3600, now=0)
    assert collect(policy, 0, 1.0)[1] is False
    assert collect(policy, 1, 2.0)[1] is False
    seen, freeze = collect(policy, 2, 3.0, seconds=0.25, collected=7)
    assert freeze is True
    assert seen == Collection(2, pytest.approx(0.25), 7, 0)
    assert policy.collections == [1, 1, 1] and policy.collected == [0, 0, 7]
    assert policy.freezes == 1


def test_off_never_freezes_nor_audits_but_still_measures() -> None:
    policy = GcPolicy(freeze=False, audit_interval=3600, now=0)
    seen, freeze = collect(policy, 2, 1.0, seconds=0.5)
    assert freeze is False and seen is not None and seen.seconds == pytest.approx(0.5)
    assert policy.get_timer() is None
    assert not policy.audit_due(10**9)


def test_a_stop_without_its_start_is_not_measured() -> None:
    # The callback was hooked while a collection ran: its pause is unknown, not zero.
    policy = GcPolicy(freeze=True, audit_interval=None, now=0)
    assert policy.collection_finished(2, 5, 0, 1.0) == (None, False)
    policy.collection_started(0, 1.0)
    assert policy.collection_finished(1, 0, 0, 1.1) == (None, False)  # not the one started
    assert policy.collections == [0, 0, 0]


def test_audit_is_due_every_interval_after_the_last_one() -> None:
    policy = GcPolicy(freeze=True, audit_interval=600, now=100)
    assert policy.get_timer() == 700
    assert not policy.audit_due(699.9)
    assert policy.audit_due(700)
    policy.audit_started(frozen=50_000, now=700)
    seen, freeze = collect(policy, 2, 700.0, seconds=0.4, collected=12)
    assert freeze is True  # the survivors go back to the permanent generation
    audit = policy.audit_finished(now=700.5)
    assert (audit.examined, audit.collected, audit.trigger) == (50_000, 12, "timer")
    assert audit.seconds == pytest.approx(0.4)  # the collection, not the call around it
    assert policy.get_timer() == pytest.approx(1300.5)
    assert policy.audits == 1 and policy.audit_collected == 12


def test_an_operator_audit_moves_the_next_timed_one() -> None:
    policy = GcPolicy(freeze=True, audit_interval=600, now=0)
    policy.audit_started(frozen=10, now=200, trigger="operator")
    collect(policy, 2, 200.0)
    assert policy.audit_finished(now=201).trigger == "operator"
    assert policy.get_timer() == 801


def test_only_the_audits_full_collection_counts_as_the_audit() -> None:
    policy = GcPolicy(freeze=True, audit_interval=None, now=0)
    policy.audit_started(frozen=10, now=1)
    collect(policy, 0, 1.0, collected=99)  # a young collection in between: not the audit's
    collect(policy, 2, 1.1, collected=3)
    assert policy.audit_finished(now=2).collected == 3
    assert policy.audit_collected == 3
    collect(policy, 2, 3.0, collected=40)  # after the audit: an ordinary one
    assert policy.audit_collected == 3


def test_an_audit_whose_collection_was_not_seen_reports_its_outer_duration() -> None:
    policy = GcPolicy(freeze=True, audit_interval=None, now=0)
    policy.audit_started(frozen=10, now=1)
    audit = policy.audit_finished(now=1.75)
    assert (audit.collected, audit.seconds) == (0, pytest.approx(0.75))


def test_no_interval_means_no_timed_audit_but_operator_audits_work() -> None:
    policy = GcPolicy(freeze=True, audit_interval=None, now=0)
    assert policy.get_timer() is None
    policy.audit_started(frozen=1, now=5, trigger="operator")
    policy.audit_finished(now=6)
    assert policy.get_timer() is None and policy.audits == 1


def test_out_of_order_calls_are_refused_and_change_nothing() -> None:
    policy = GcPolicy(freeze=True, audit_interval=None, now=0)
    with pytest.raises(GcPolicyError, match="no audit"):
        policy.audit_finished(now=1)
    policy.audit_started(frozen=1, now=1)
    with pytest.raises(GcPolicyError, match="already"):
        policy.audit_started(frozen=2, now=2)
    assert policy.auditing
    assert policy.audit_finished(now=3).examined == 1
    with pytest.raises(GcPolicyError, match="at least"):
        GcPolicy(freeze=True, audit_interval=MIN_AUDIT_INTERVAL - 1, now=0)


def test_snapshot_for_the_status_section() -> None:
    policy = GcPolicy(freeze=True, audit_interval=600, now=0)
    collect(policy, 2, 1.0, collected=4)
    policy.audit_started(frozen=8, now=100)
    collect(policy, 2, 100.0, seconds=0.2, collected=2)
    policy.audit_finished(now=101)
    snap = policy.snapshot(now=131, frozen=1234)
    assert snap["frozen"] == 1234 and snap["freeze"] is True
    assert snap["collections"] == {"0": 0, "1": 0, "2": 2}
    assert snap["collected"] == {"0": 0, "1": 0, "2": 6}
    assert snap["last_audit"] == {"examined": 8, "collected": 2, "uncollectable": 0,
                                  "seconds": 0.2, "trigger": "timer", "ago": 30.0}
    assert snap["next_audit_in"] == 570.0


def test_config_default_and_the_policy_default_agree() -> None:
    assert GC_AUDIT_DEFAULT == DEFAULT_AUDIT_INTERVAL
    assert GC_AUDIT_MIN == MIN_AUDIT_INTERVAL


@pytest.mark.parametrize(("text", "freeze", "interval"), [
    ("", True, 3600),
    ("[gc]\nfreeze = false\n", False, 3600),
    ("[gc]\naudit_interval = 0\n", True, 0),
    ("[gc]\naudit_interval = 86400\n", True, 86400),
])
def test_gc_config(text: str, freeze: bool, interval: int) -> None:
    settings = parse_config(text)
    assert (settings.gc.freeze, settings.gc.audit_interval) == (freeze, interval)


@pytest.mark.parametrize(("text", "message"), [
    ("[gc]\nfreeze = 1\n", "gc.freeze: expected a boolean"),
    ("[gc]\naudit_interval = 30\n", "gc.audit_interval: must be 0 (no periodic audit) or at "
                                    "least 60"),
    ("[gc]\naudit_interval = -1\n", "gc.audit_interval: must be from 0 to 604800"),
    ("[gc]\naudit_interval = \"1h\"\n", "gc.audit_interval: expected an integer"),
    ("[gc]\nfreze = true\n", "gc.freze"),
])
def test_gc_config_errors_name_the_key(text: str, message: str) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert message in str(info.value)


def test_freezing_lowers_the_oldest_generations_threshold_only() -> None:
    on = GcPolicy(freeze=True, audit_interval=None, now=0)
    assert on.thresholds((700, 10, 10)) == (700, 10, FULL_THRESHOLD)
    assert on.thresholds((0, 10, 10)) == (0, 10, 10)  # a disabled collector stays disabled
    off = GcPolicy(freeze=False, audit_interval=None, now=0)
    assert off.thresholds((700, 10, 10)) == (700, 10, 10)
