"""RFC 9244 telemetry in dots.sqlite: rows written before the answer, read back at start,
the schema 1 -> 2 -> 3 upgrades, and what a failed or bad row does."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.dots.telemetry import DomainConflict, TelemetryStore, body_from_json
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
    raw.execute("INSERT INTO telemetry VALUES (?, 'tm', 2, NULL, x'ff', 0, NULL)", (CUID,))
    assert db.save_telemetry(plan.changes)
    store = TelemetryStore()
    db.restore_telemetry_into(store)
    assert list(store.clients[CUID].pre) == [1] and db.skipped_rows == 1
    raw.close()
    db.close()


def test_the_client_domain_of_a_setup_is_saved_and_conflicts_after_a_restart(
        tmp_path: Path) -> None:
    store = TelemetryStore()
    db = MitigationDatabase.in_state_dir(tmp_path)
    plan = store.plan_setup_put(CUID, 3, _setup(), None, domain="gateway-credential")
    assert db.save_telemetry(plan.changes)
    db.close()
    again = TelemetryStore()
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_telemetry_into(again)
    db.close()
    assert again.clients[CUID].setups[3].domain == "gateway-credential"
    # Another client behind the same client-domain gateway, same link: 4.09 (RFC 9244 §7.2).
    with pytest.raises(DomainConflict):
        again.plan_setup_put("other-cuid-xxxxxxxxxxxx", 1, _setup(), None,
                             domain="gateway-credential")


def test_schema_2_files_are_upgraded_and_their_rows_have_no_domain(tmp_path: Path) -> None:
    MitigationDatabase.in_state_dir(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("DROP TABLE telemetry")
    raw.execute("CREATE TABLE telemetry (cuid TEXT NOT NULL, kind TEXT NOT NULL, ident "
                "INTEGER NOT NULL, cdid TEXT, body BLOB NOT NULL, updated_at REAL NOT NULL, "
                "PRIMARY KEY (cuid, kind, ident))")
    setup = TelemetryStore().plan_setup_put(CUID, 3, _setup()).changes[0]
    assert setup.body is not None
    raw.execute("INSERT INTO telemetry VALUES (?, 'setup', 3, NULL, ?, 0)", (CUID, setup.body))
    raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    store = TelemetryStore()
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_telemetry_into(store)
    assert store.clients[CUID].setups[3].domain is None  # compared with no other client
    assert db.save_telemetry(store.plan_setup_put("other-cuid-xxxxxxxxxxxx", 1, _setup(),
                                                  None, domain="d").changes)
    db.close()
