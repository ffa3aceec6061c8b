"""SQLite persistence of the mitigation store (``gateway/server/persistence.py``), on a temp dir."""

from __future__ import annotations

import dataclasses
import errno
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dots.codes import ConflictStatus, Status
from gateway.dots.conflict import ConflictDecision, fixed_policy
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    Mitigation,
    MitigationState,
    Owner,
    Trigger,
    WithdrawMitigation,
)
from gateway.dots.model import PortRange, Scope, parse_prefix
from gateway.server.persistence import (
    DATABASE_NAME,
    SCHEMA_VERSION,
    MitigationDatabase,
    PersistenceError,
    SchemaTooNew,
)

ROOT = Path(__file__).resolve().parents[3]
CUID_A, CUID_B, CUID_C = "dz6pHjaADkaFTbjr0JGBpw", "f30d281ce6b64fc5a0b91e", "cuid-c"
A, B, C = Owner("cred-a"), Owner("gw-cred", "cdid-b"), Owner("cred-c")
WALL = 1_700_000_000.25
S = MitigationState


def scope(*prefixes: str, lifetime: int = 3600, trigger: bool | None = None,
          **kw: object) -> Scope:
    return Scope(target_prefix=tuple(parse_prefix(p) for p in prefixes), lifetime=lifetime,
                 trigger_mitigation=trigger, **kw)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[MitigationDatabase]:
    database = MitigationDatabase.in_state_dir(tmp_path / "state")
    yield database
    database.close()


def every_state() -> MitigationStore:
    """A store with a record in each state, with conflicts, counters and a transient status."""
    store = MitigationStore(wall_offset=WALL,
                            resolver=fixed_policy(ConflictDecision.REPLACE_EXISTING))
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=-1), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24", trigger=False, extensions=((200, "x"),)),
              A, now=1.0)  # preconfigured, waiting for signal loss
    store.put(CUID_A, 3, scope("203.0.113.0/24"), A, now=2.0)
    store.delete(CUID_A, 3, A, now=3.0)  # terminating
    store.put(CUID_B, 7, scope("192.0.2.0/25", target_port_range=(PortRange(80, 443),),
                               target_protocol=(6, 17), target_fqdn=("www.example.com",)),
              B, now=4.0)  # wins: (A, 1) is deactivated, (B, 7) carries conflict info
    store.update_status(CUID_B, 7, Status.ATTACK_SUCCESSFULLY_MITIGATED, 5.0,
                        Counters(2**64 - 1, 2, None, 4))
    store.put(CUID_C, 1, scope("100.64.0.0/24", trigger=False), C, now=6.0)
    store.put(CUID_C, 2, scope("100.64.1.0/24", trigger=False), C, now=6.0)
    store.signal_lost(CUID_C, now=7.0)  # both preconfigured requests mitigating
    store.update_status(CUID_C, 1, Status.ATTACK_STOPPED, now=8.0)  # back to 8, transient 3
    while store.next_event() is not None:
        pass
    return store


def assert_same(loaded: list[Mitigation], original: list[Mitigation]) -> None:
    assert [(r.cuid, r.mid) for r in loaded] == [(r.cuid, r.mid) for r in original]
    for new, old in zip(loaded, original, strict=True):
        for f in dataclasses.fields(Mitigation):
            a, b = getattr(new, f.name), getattr(old, f.name)
            if f.name in ("expires_at", "terminate_at") and b is not None:
                assert a == pytest.approx(b, abs=1e-6), f.name
            else:
                assert a == b, f.name
        assert new.scope.extensions == old.scope.extensions


def test_every_state_round_trips(db: MitigationDatabase) -> None:
    store = every_state()
    original = list(store.records())
    assert {r.state for r in original} == {S.MITIGATING, S.AWAIT_SIGNAL_LOSS, S.TERMINATING,
                                           S.DEACTIVATED}
    assert db.sync(store)
    assert_same(db.load(WALL), original)
    deactivated = next(r for r in db.load(WALL) if (r.cuid, r.mid) == (CUID_A, 1))
    assert deactivated.state is S.DEACTIVATED and deactivated.conflict is not None
    assert deactivated.conflict.conflict_status is ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE
    assert deactivated.conflict.conflict_scope is not None


def test_saved_times_are_epoch_seconds(db: MitigationDatabase) -> None:
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=100), A, now=10.0)
    db.sync(store)
    raw = sqlite3.connect(db.path)
    expires, start = raw.execute("SELECT expires_at, mitigation_start FROM mitigation").fetchone()
    raw.close()
    assert expires == WALL + 110 and start == int(WALL + 10)


def test_lifetimes_continue_across_a_restart(tmp_path: Path) -> None:
    """Process 1 (monotonic clock at 100) saves; process 2 starts 50 s later with its
    monotonic clock at 5: a different wall_offset, the same epoch deadlines."""
    first = MitigationStore(wall_offset=WALL)
    first.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=3600), A, now=100.0)
    first.put(CUID_A, 2, scope("198.51.100.0/24"), A, now=100.0)
    first.delete(CUID_A, 2, A, now=100.0)  # terminating for 120 s
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.sync(first)
    db.close()

    offset = WALL + 100 + 50 - 5
    second = MitigationStore(wall_offset=offset)
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_into(second, now=5.0)
    assert second.get(CUID_A, 1, A, now=5.0).scope[0].lifetime == 3600 - 50
    assert second.get(CUID_A, 2, A, now=5.0).scope[0].lifetime == 120 - 50
    restored = second.lookup(CUID_A, 1)
    assert restored is not None and restored.mitigation_start == int(WALL + 100)
    assert {e.mid for e in iter(second.next_event, None) if isinstance(e, ApplyMitigation)} == {
        1, 2}
    second.handle_timer(5.0 + 70)  # the active-but-terminating period ends on time
    assert second.lookup(CUID_A, 2) is None
    second.handle_timer(5.0 + 3550 - 0.5)
    assert second.lookup(CUID_A, 1) is not None
    second.handle_timer(5.0 + 3550)
    assert second.lookup(CUID_A, 1) is None
    db.sync(second)
    assert db.load(offset) == []
    db.close()


def test_records_expired_while_down_are_withdrawn_and_deleted(tmp_path: Path) -> None:
    first = MitigationStore(wall_offset=WALL)
    first.put(CUID_A, 1, scope("192.0.2.0/24", lifetime=60), A, now=0.0)
    first.put(CUID_A, 2, scope("198.51.100.0/24", lifetime=-1), A, now=0.0)
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.sync(first)
    db.close()

    second = MitigationStore(wall_offset=WALL + 3600)  # an hour later, clock at 0 again
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_into(second, now=0.0)
    events = list(iter(second.next_event, None))
    assert WithdrawMitigation(CUID_A, 1, Trigger.LIFETIME_EXPIRED) in events
    assert [r.mid for r in db.load(second.wall_offset)] == [2]
    db.close()


def test_removed_keys_are_deleted(db: MitigationDatabase) -> None:
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24", trigger=False), A, now=0.0)
    store.put(CUID_A, 2, scope("198.51.100.0/24"), A, now=0.0)
    db.sync(store)
    store.delete(CUID_A, 1, A, now=1.0)  # preconfigured: gone at once
    db.sync(store)
    assert [r.mid for r in db.load(WALL)] == [2]
    db.save([], [(CUID_A, 2), ("nobody", 5)], wall_offset=WALL)  # unknown keys are fine
    assert db.load(WALL) == []


def test_termination_periods_round_trip(db: MitigationDatabase) -> None:
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    store.delete(CUID_A, 1, A, now=1.0)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=2.0)  # re-requested: period doubles
    db.sync(store)
    assert db.load_termination_periods() == {CUID_A: 240}
    store.delete(CUID_A, 1, A, now=3.0)
    store.handle_timer(3.0 + 240)  # ran out: back to the default
    db.sync(store)
    assert db.load_termination_periods() == {}


def test_one_transaction_per_save(db: MitigationDatabase) -> None:
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)
    store = every_state()
    records, _ = store.take_changes()
    db.save(records, [("x", 1), ("y", 2)], wall_offset=WALL, termination_periods={"z": 240})
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1
    assert verbs[0] == "BEGIN" and verbs[-1] == "COMMIT"
    assert len(records) == 6 and db.saves == 1


def test_a_failed_save_writes_nothing(db: MitigationDatabase) -> None:
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    db.sync(store)
    good = store.lookup(CUID_A, 1)
    assert good is not None
    broken = dataclasses.replace(good, mid=2, owner=Owner(None))  # type: ignore[arg-type]
    with pytest.raises(PersistenceError, match="save failed"):  # NOT NULL, after the DELETE
        db.save([broken], [(CUID_A, 1)], wall_offset=WALL)
    assert [r.mid for r in db.load(WALL)] == [1]


def failing_save(*args: object, **kw: object) -> None:
    raise PersistenceError("disk full")


def test_sync_keeps_failed_changes_for_the_next_try(
        db: MitigationDatabase, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    real_save = db.save
    monkeypatch.setattr(db, "save", failing_save)
    assert not db.sync(store)
    assert db.save_failures == 1 and "disk full" in caplog.text
    monkeypatch.setattr(db, "save", real_save)
    store.put(CUID_A, 2, scope("198.51.100.0/24"), A, now=1.0)
    assert db.sync(store)
    assert [r.mid for r in db.load(WALL)] == [1, 2]


def test_close_writes_what_a_failed_sync_kept(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = MitigationDatabase.in_state_dir(tmp_path)
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, now=0.0)
    real_save = db.save
    monkeypatch.setattr(db, "save", failing_save)
    assert not db.sync(store)
    monkeypatch.setattr(db, "save", real_save)
    db.close()
    db = MitigationDatabase.in_state_dir(tmp_path)
    assert [r.mid for r in db.load(WALL)] == [1]
    db.close()


# --- the file ------------------------------------------------------------------------------------


def test_new_file_is_wal_owner_only_and_versioned(db: MitigationDatabase) -> None:
    assert db.path.name == DATABASE_NAME
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # NORMAL: commits are not fsynced one by one; make_durable fsyncs the WAL (group commit).
    assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    version = db._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    store = every_state()
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.sync(store)
    db.close()
    db = MitigationDatabase.in_state_dir(tmp_path)
    assert_same(db.load(WALL), list(store.records()))
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    MitigationDatabase.in_state_dir(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1} .* newer"):
        MitigationDatabase.in_state_dir(tmp_path)


def test_bad_schema_version_is_refused(tmp_path: Path) -> None:
    MitigationDatabase.in_state_dir(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("UPDATE meta SET value = 'two' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(PersistenceError, match="'two', not a number"):
        MitigationDatabase.in_state_dir(tmp_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DATABASE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PersistenceError, match="not a usable SQLite database.*move it aside"):
        MitigationDatabase.in_state_dir(tmp_path)


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(PersistenceError, match=r"has tables \(t\) but no meta"):
        MitigationDatabase.in_state_dir(tmp_path)


def test_corrupt_rows_are_skipped_with_a_log_line(
        db: MitigationDatabase, caplog: pytest.LogCaptureFixture) -> None:
    store = every_state()
    db.sync(store)
    raw = sqlite3.connect(db.path)
    raw.execute("UPDATE mitigation SET scope = x'ff00' WHERE cuid = ? AND mid = 1", (CUID_A,))
    raw.execute("UPDATE mitigation SET state = 'dancing' WHERE cuid = ? AND mid = 2", (CUID_A,))
    raw.execute("UPDATE mitigation SET mid = 'seven' WHERE cuid = ?", (CUID_B,))
    raw.execute("UPDATE mitigation SET counters = '[1]' WHERE cuid = ? AND mid = 1", (CUID_C,))
    raw.execute("UPDATE mitigation SET terminate_at = NULL WHERE cuid = ? AND mid = 3",
                (CUID_A,))
    raw.execute("INSERT INTO client VALUES (?, 'long')", (CUID_A,))
    raw.commit()
    raw.close()
    loaded = db.load(WALL)
    assert [(r.cuid, r.mid) for r in loaded] == [(CUID_C, 2)]
    assert db.load_termination_periods() == {}
    assert db.skipped_rows == 6
    assert f"skipping saved mitigation cuid='{CUID_A}' mid=1" in caplog.text
    assert "'dancing' is not a valid MitigationState" in caplog.text
    assert "terminating without terminate_at" in caplog.text


def test_saves_survive_a_crash_of_the_process(tmp_path: Path) -> None:
    """synchronous=NORMAL: a committed save is in the WAL when the process dies."""
    script = textwrap.dedent(f"""
        import os
        from gateway.dots.mitigation import MitigationStore
        from gateway.dots.mitigation_lifecycle import Owner
        from gateway.dots.model import Scope, parse_prefix
        from gateway.server.persistence import MitigationDatabase
        store = MitigationStore(wall_offset={WALL})
        store.put("c", 1, Scope(target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=600),
                  Owner("cred"), 0.0)
        db = MitigationDatabase({str(tmp_path / DATABASE_NAME)!r})
        assert db.sync(store)
        os._exit(9)  # no close, no checkpoint, no atexit
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 9, done.stderr
    assert (tmp_path / f"{DATABASE_NAME}-wal").exists()
    db = MitigationDatabase.in_state_dir(tmp_path)
    assert [(r.cuid, r.mid, r.expires_at) for r in db.load(WALL)] == [("c", 1, 600.0)]
    db.close()


def test_make_durable_fsyncs_the_wal_once_for_the_saves_before_it(
        db: MitigationDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store = MitigationStore(wall_offset=WALL)
    for mid in (1, 2):
        store.put("c", mid, scope(f"192.0.2.{mid}/32"), Owner("cred"), 0.0)
        assert db.sync(store)
    assert db.unsynced and synced == []  # committed, not yet durable
    db.make_durable()
    # The WAL, then (a WAL file not seen before) its directory, so that its name survives.
    assert synced == [f"{db.path}-wal", str(db.path.parent)]
    assert not db.unsynced and db.fsyncs == 1
    db.make_durable()  # nothing new: no fsync
    store.put("c", 3, scope("192.0.2.3/32"), Owner("cred"), 0.0)
    assert db.sync(store)
    db.make_durable()
    assert synced[2:] == [f"{db.path}-wal"] and db.fsyncs == 2


def test_a_failed_fsync_is_an_error_and_the_saves_stay_unsynced(
        db: MitigationDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    store = MitigationStore(wall_offset=WALL)
    store.put("c", 1, scope("192.0.2.1/32"), Owner("cred"), 0.0)
    assert db.sync(store)
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(PersistenceError, match="fsync failed"):
        db.make_durable()
    assert db.unsynced
def test_acl_list_is_stored_with_the_mitigation_and_its_changes(tmp_path: Path) -> None:
    """RFC 9133: the acl-list (as changed by a later PUT) survives a restart, and the
    re-apply after it carries it."""
    from gateway.dots.filters import AclActivation, acl_list_of, with_acl_list

    first = MitigationStore(wall_offset=WALL)
    first.put(CUID_A, 1, with_acl_list(scope("192.0.2.0/24"), (AclActivation("a", "immediate"),)),
              A, now=100.0)
    first.put(CUID_A, 1, with_acl_list(scope("192.0.2.0/24"), (AclActivation("a", "deactivate"),
                                                               AclActivation("b"))), A, now=101.0)
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.sync(first)
    db.close()
    second = MitigationStore(wall_offset=WALL)
    db = MitigationDatabase.in_state_dir(tmp_path)
    db.restore_into(second, now=102.0)
    db.close()
    expected = (AclActivation("a", "deactivate"), AclActivation("b"))
    assert acl_list_of(second.get(CUID_A, 1, A, now=102.0).scope[0]) == expected
    [apply] = [e for e in iter(second.next_event, None) if isinstance(e, ApplyMitigation)]
    assert acl_list_of(apply.scope) == expected


def test_a_record_saved_again_with_its_scope_reuses_the_encoded_scope(
        db: MitigationDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: a DELETE (active-but-terminating) or a status change saves the record again
    with the same scope: encoded once. A PUT with a new scope is encoded anew, and what is
    loaded back is always the record's current scope."""
    from gateway.server import persistence

    encoded: list[Scope] = []
    real = persistence.encode_scope

    def counting(s: Scope) -> bytes:
        encoded.append(s)
        return real(s)

    monkeypatch.setattr(persistence, "encode_scope", counting)
    store = MitigationStore(wall_offset=WALL)
    store.put(CUID_A, 1, scope("192.0.2.0/24"), A, 0.0)
    assert db.sync(store) and len(encoded) == 1
    store.delete(CUID_A, 1, A, 1.0)  # terminating: saved again, same scope
    assert db.sync(store) and len(encoded) == 1
    (loaded,) = db.load(WALL)
    assert loaded.state is S.TERMINATING and loaded.scope == scope("192.0.2.0/24")
    store.put(CUID_A, 1, scope("198.51.100.0/24"), A, 2.0)  # the same mid, a new scope
    assert db.sync(store) and len(encoded) == 2
    (loaded,) = db.load(WALL)
    assert loaded.scope.target_prefix == (parse_prefix("198.51.100.0/24"),)


async def test_durable_fsyncs_in_one_worker_thread_that_close_stops(tmp_path: Path) -> None:
    import threading

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "dots-db-fsync"]

    db = MitigationDatabase.in_state_dir(tmp_path / "state")
    store = MitigationStore(wall_offset=WALL)
    for mid in (1, 2, 3):
        store.put("c", mid, scope(f"192.0.2.{mid}/32"), Owner("cred"), 0.0)
        assert db.sync(store) and db.unsynced
        await db.durable()
        assert not db.unsynced and db.fsyncs == mid
    assert len(workers()) == 1  # started once, reused
    db.close()
    assert workers() == []
