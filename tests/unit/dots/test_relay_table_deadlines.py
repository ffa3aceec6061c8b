"""The relay table's expiry and "in force" answers without a pass over the table (issue 21:
a gateway holding 1,000,000 relayed requests ticks every second)."""

from __future__ import annotations

import random

import pytest

from gateway.dots.codes import Status
from gateway.dots.model import MitigationScope, Scope
from gateway.dots.relay import RelayTable
from tests.unit.dots.test_relay_rules import record


class NoScan(dict):  # type: ignore[type-arg]
    """The records, refusing to be walked past their first few: what must cost O(due)
    finds out here."""

    READ_AT_MOST = 10

    def values(self):  # type: ignore[no-untyped-def]
        for n, value in enumerate(dict.values(self)):
            if n >= self.READ_AT_MOST:
                raise AssertionError("a pass over every record")
            yield value

    items = keys = __iter__ = values  # type: ignore[assignment]


def brute_expired(table: RelayTable, now: float) -> set[tuple[str, int]]:
    return {r.key for r in table if r.confirmed and r.expires_at is not None
            and r.expires_at <= now}


def brute_next(table: RelayTable) -> float | None:
    times = [r.expires_at for r in table if r.confirmed and r.expires_at is not None]
    return min(times) if times else None


def brute_active(table: RelayTable, now: float) -> bool:
    return any(table.is_mitigating(c, now) for c in table.cuids())


def brute_counts(table: RelayTable, now: float) -> tuple[dict[str, int], dict[str, int], int]:
    states = {"installed": 0, "pending": 0, "withdrawing": 0}
    statuses: dict[str, int] = {}
    in_force = 0
    for r in table:
        states["withdrawing" if r.withdrawing else "installed" if r.confirmed
               else "pending"] += 1
        if r.confirmed:
            label = r.status.label if r.status is not None else "unknown"
            statuses[label] = statuses.get(label, 0) + 1
        if (r.confirmed and not r.withdrawing and (r.trigger_mitigation or r.activated_by_loss)
                and (r.expires_at is None or r.expires_at > now)):
            in_force += 1
    return states, statuses, in_force


def test_timer_calls_never_walk_the_table() -> None:
    table = RelayTable()
    for i in range(2000):
        r = record(f"c{i % 500}", i, trigger_mitigation=i % 3 != 0)
        table.put(r)
        table.accepted(r, "coaps://up", 100 + i, now=0.0)
    table._records = NoScan(table._records)
    assert table.next_expiry() == 100.0
    assert table.expire(now=50.0) == []
    assert [r.mid for r in table.expire(now=104.0)] == [0, 1, 2, 3, 4]
    assert table.next_expiry() == 105.0
    assert table.active(now=104.0)
    # The metrics too: 1,995 left, a third of them preconfigured (not in force), and those
    # whose expiry is due but not yet handled do not count.
    assert table.by_state() == {"installed": 1995, "pending": 0, "withdrawing": 0}
    assert table.by_status() == {"unknown": 1995}
    assert table.in_force(now=104.0) == sum(1 for i in range(5, 2000) if i % 3)
    assert table.in_force(now=110.0) == sum(1 for i in range(11, 2000) if i % 3)
    # The status command's view: clients with a request in force, and the first rows
    # (those read the records' start only).
    assert table.clients_in_force(now=104.0) == 500
    assert [r.mid for r in table.first(3)] == [5, 6, 7]


def test_refreshes_do_not_grow_the_heap_without_bound() -> None:
    table = RelayTable()
    rs = [record("c", i) for i in range(100)]
    for r in rs:
        table.put(r)
    for round_ in range(200):  # every record refreshed 200 times, each a new expiry
        for r in rs:
            table.accepted(r, "coaps://up", 600, now=float(round_))
    assert len(table._expiry) <= max(1024, 2 * len(rs)) + 1
    assert table.next_expiry() == 199.0 + 600
    assert len(table.expire(now=798.9)) == 0 and len(table.expire(now=799.0)) == 100


def test_preconfigured_activated_withdrawn_and_removed_records_leave_in_force() -> None:
    table = RelayTable()
    pre = record("c", 1, trigger_mitigation=False)
    table.put(pre)
    table.accepted(pre, "coaps://up", -1, now=0.0)
    assert pre.expires_at is None and not table.active(now=0.0)
    pre.activated_by_loss = True
    table.touch(pre)
    assert table.active(now=1e9)  # indefinite
    pre.withdrawing = True
    table.touch(pre)
    assert not table.active(now=0.0)
    pre.withdrawing = False  # a DELETE that could not be saved is undone
    table.touch(pre)
    assert table.active(now=0.0)
    table.remove("c", 1)
    assert not table.active(now=0.0) and table.next_expiry() is None


@pytest.mark.parametrize("seed", range(12))
def test_answers_match_a_full_scan_under_random_changes(seed: int) -> None:
    rng = random.Random(seed)
    table = RelayTable()
    now = 0.0
    for _ in range(3000):
        op = rng.random()
        key = (f"c{rng.randrange(20)}", rng.randrange(15))
        existing = table.get(*key)
        if op < 0.3:
            table.put(record(*key, trigger_mitigation=rng.random() < 0.6))
        elif op < 0.6 and existing is not None:
            table.accepted(existing, "coaps://up", rng.choice([-1, None, 1, 5, 30, 300]),
                           now)
        elif op < 0.7 and existing is not None:
            existing.withdrawing = not existing.withdrawing
            table.touch(existing)
        elif op < 0.75 and existing is not None:
            existing.activated_by_loss = True
            table.touch(existing)
        elif op < 0.8:
            table.remove(*key)
        elif op < 0.85:
            scope = Scope(mid=key[1], status=rng.choice(list(Status)))
            table.note_statuses(key[0], MitigationScope((scope,)))
        else:
            now += rng.choice([0.5, 1.0, 7.0, 40.0])
            due = brute_expired(table, now)
            assert {r.key for r in table.expire(now)} == due
        assert table.next_expiry() == brute_next(table)
        assert table.active(now) == brute_active(table, now)
        later = now + rng.choice([0.0, 3.0, 100.0])  # some due, not yet expired
        states, statuses, in_force = brute_counts(table, later)
        assert (table.by_state(), table.by_status(), table.in_force(later)) == \
            (states, statuses, in_force)
        assert table.clients_in_force(later) == sum(
            table.is_mitigating(c, later) for c in table.cuids())
