"""RFC 9244 telemetry in dots.sqlite: rows written before the answer, read back at start,
the schema 1 -> 2 upgrade, and what a failed or bad row does."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.dots.telemetry import TelemetryStore, body_from_json
from gateway.server.persistence import DATABASE_NAME, MitigationDatabase

CUID = "dz6pHjaADkaFTbjr0JGBpw"


def _tm(prefix: str) -> bytes:
    return body_from_json({"ietf-dots-telemetry:telemetry": {"pre-or-ongoing-mitigation": [
        {"target": {"target-prefix": [prefix]},
         "total-attack-traffic": [{"unit": "megabit-ps", "peak-g": "900"}]}]}})


def _setup() -> bytes:
    return body_from_json({"ietf-dots-telemetry:telemetry-setup": {"telemetry": [
        {"total-pipe-capacity": [{"link-id": "link1", "capacity": "10",
                                  "unit": "gigabit-ps"}]}]}})


def test_saved_telemetry_comes_back_in_a_new_process(tmp_path: Path) -> None:
    store = TelemetryStore()
    db = MitigationDatabase.in_state_dir(tmp_path)
    for make in (lambda: store.plan_setup_put(CUID, 3, _setup(), "cdid-1"),
                 lambda: store.plan_tm_put(CUID, 7, _tm("192.0.2.0/24")),
                 lambda: store.plan_tm_put(CUID, 8, _tm("192.0.2.0/25"))):  # deletes tmid 7
        plan = make()
        assert db.save_telemetry(plan.changes)
        store.apply(plan)
    db.close()
    again = TelemetryStore()
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_telemetry_into(again)
    db.close()
    assert again.tm_body(CUID, None) == store.tm_body(CUID, None)
    assert again.setup_body(CUID, None) == store.setup_body(CUID, None)
    assert again.clients[CUID].setups[3].cdid == "cdid-1"
    assert list(again.clients[CUID].pre) == [8]


def test_schema_1_files_are_upgraded(tmp_path: Path) -> None:
    MitigationDatabase.in_state_dir(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("DROP TABLE telemetry")
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    db = MitigationDatabase.in_state_dir(tmp_path)
    assert db.save_telemetry(TelemetryStore().plan_tm_put(CUID, 1, _tm("2001:db8::/32")).changes)
    db.close()


def test_a_failed_save_says_so_and_a_bad_row_is_skipped(tmp_path: Path) -> None:
    db = MitigationDatabase.in_state_dir(tmp_path)
    plan = TelemetryStore().plan_tm_put(CUID, 1, _tm("192.0.2.0/24"))
    raw = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None, timeout=0)
    raw.execute("BEGIN EXCLUSIVE")  # another process holds the file: the write fails
    assert not db.save_telemetry(plan.changes)
    assert db.save_failures == 1
    raw.execute("ROLLBACK")
    raw.execute("INSERT INTO telemetry VALUES (?, 'tm', 2, NULL, x'ff', 0)", (CUID,))
    assert db.save_telemetry(plan.changes)
    store = TelemetryStore()
    db.restore_telemetry_into(store)
    assert list(store.clients[CUID].pre) == [1] and db.skipped_rows == 1
    raw.close()
    db.close()
