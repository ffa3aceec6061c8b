"""Mitigator backends (``gateway/server/mitigator.py``): the JSON-lines journal and operator scripts
run as real subprocesses (small Python scripts written by the tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Backend, ConfigError, default_settings
from gateway.dots.codes import Status
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    Trigger,
    UpdateFilters,
    WithdrawMitigation,
)
from gateway.dots.model import PortRange, Scope, parse_prefix
from gateway.server.mitigator import (
    JOURNAL_NAME,
    CommandMitigator,
    LogMitigator,
    StatusCallback,
    build_mitigator,
    parse_status_report,
)

CUID = "dz6pHjaADkaFTbjr0JGBpw"
SCOPE = Scope(target_prefix=(parse_prefix("192.0.2.0/24"),),
              target_port_range=(PortRange(443),), target_protocol=(6,), lifetime=3600)
EPOCH = 1_714_564_800.0  # 2024-05-01T12:00:00Z

Report = tuple[str, int, Status, Counters | None]


def script(tmp_path: Path, body: str, name: str = "mitigate.py") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def collector() -> tuple[list[Report], StatusCallback]:
    reports: list[Report] = []

    def on_status(cuid: str, mid: int, status: Status, counters: Counters | None) -> None:
        reports.append((cuid, mid, status, counters))

    return reports, on_status


# --- log -----------------------------------------------------------------------------------------


def test_log_backend_appends_one_json_object_per_command(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.server.mitigator")
    journal = tmp_path / JOURNAL_NAME
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    mitigator(ApplyMitigation(CUID, 7, SCOPE))
    mitigator(WithdrawMitigation(CUID, 7, Trigger.WITHDRAWN))
    mitigator(WithdrawMitigation(CUID, 8, Trigger.LIFETIME_EXPIRED))  # never applied here
    apply, withdraw, unknown = (json.loads(line) for line in journal.read_text().splitlines())
    scope_json = {"target-prefix": ["192.0.2.0/24"], "target-port-range": [{"lower-port": 443}],
                  "target-protocol": [6], "lifetime": 3600}
    assert apply == {"action": "apply", "cuid": CUID, "mid": 7, "scope": scope_json,
                     "acls": [], "reason": None, "timestamp": "2024-05-01T12:00:00.000Z"}
    assert withdraw == {**apply, "action": "withdraw", "reason": "withdrawn"}
    assert unknown["scope"] is None and unknown["reason"] == "lifetime-expired"
    assert any(getattr(r, "event", None) == "mitigator.command" and r.action == "apply"
               and r.cuid == CUID and r.mid == 7 for r in caplog.records)
    assert mitigator.stats.commands == 3 and mitigator.stats.failures == 0
    mitigator.close()


def _lines(path: Path) -> list[tuple[str, int]]:
    return [(e["action"], e["mid"]) for e in map(json.loads, path.read_text().splitlines())]


def test_log_backend_keeps_the_journal_open_between_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    journal = tmp_path / JOURNAL_NAME
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    for mid in range(1, 11):
        mitigator(ApplyMitigation(CUID, mid, SCOPE))
    assert opened == [journal]  # before issue 21: opened once per command
    assert [mid for _, mid in _lines(journal)] == list(range(1, 11))
    mitigator.close()


@pytest.mark.parametrize("recreate", [True, False], ids=["move-create", "move"])
def test_log_backend_follows_a_rotation_by_rename(tmp_path: Path, recreate: bool) -> None:
    journal = tmp_path / JOURNAL_NAME
    rotated = tmp_path / (JOURNAL_NAME + ".1")
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    os.rename(journal, rotated)  # what logrotate does, then (``create``) a new empty file
    if recreate:
        journal.touch()
    mitigator(WithdrawMitigation(CUID, 1, Trigger.WITHDRAWN))
    mitigator(ApplyMitigation(CUID, 2, SCOPE))
    assert _lines(rotated) == [("apply", 1)]
    assert _lines(journal) == [("withdraw", 1), ("apply", 2)]
    assert mitigator.stats.failures == 0
    mitigator.close()


def test_log_backend_survives_copytruncate(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL_NAME
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    (tmp_path / "copy").write_bytes(journal.read_bytes())
    with journal.open("r+") as f:
        f.truncate(0)
    mitigator(ApplyMitigation(CUID, 2, SCOPE))
    # Appending: the line starts the truncated file (no hole of NULs before it).
    assert _lines(journal) == [("apply", 2)]
    assert _lines(tmp_path / "copy") == [("apply", 1)]
    mitigator.close()


def test_log_backend_writes_again_once_the_journal_can_be_opened(tmp_path: Path) -> None:
    journal = tmp_path / "sub" / JOURNAL_NAME  # its directory is missing: open() fails
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    assert mitigator.stats.failures == 1
    journal.parent.mkdir()
    mitigator(ApplyMitigation(CUID, 2, SCOPE))
    assert _lines(journal) == [("apply", 2)] and mitigator.stats.failures == 1
    mitigator.close()


def test_a_withdraw_names_the_scope_last_applied(tmp_path: Path) -> None:
    """The scope's JSON is made once per applied scope (issue 21) and follows updates."""
    journal = tmp_path / JOURNAL_NAME
    mitigator = LogMitigator(journal, clock=lambda: EPOCH)
    wider = dataclasses.replace(SCOPE, target_prefix=(parse_prefix("192.0.2.0/23"),))
    mitigator(ApplyMitigation(CUID, 7, SCOPE))
    mitigator(UpdateFilters(CUID, 7, wider))
    mitigator(WithdrawMitigation(CUID, 7, Trigger.WITHDRAWN))
    mitigator(ApplyMitigation(CUID, 7, SCOPE))  # the same mid again, after its withdraw
    mitigator(WithdrawMitigation(CUID, 7, Trigger.WITHDRAWN))
    scopes = [json.loads(line)["scope"]["target-prefix"]
              for line in journal.read_text().splitlines()]
    assert scopes == [["192.0.2.0/24"], ["192.0.2.0/23"], ["192.0.2.0/23"], ["192.0.2.0/24"],
                      ["192.0.2.0/24"]]
    mitigator.close()


def test_log_backend_counts_a_journal_it_cannot_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mitigator = LogMitigator(tmp_path)  # a directory: open() fails
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    assert mitigator.stats.failures == 1
    assert "mitigator journal" in caplog.text and "not written" in caplog.text


# --- command -------------------------------------------------------------------------------------

ECHO = """
    import json, sys
    command = json.loads(sys.stdin.read())
    with open(sys.argv[0] + ".seen", "a") as seen:
        seen.write(json.dumps(command) + "\\n")
    print("not a report, ignored")
    print(json.dumps({"cuid": command["cuid"], "mid": command["mid"],
                      "status": "attack-successfully-mitigated", "bytes-dropped": 123}))
"""


async def test_command_gets_the_json_and_its_status_lines_come_back(tmp_path: Path) -> None:
    reports, on_status = collector()
    argv = script(tmp_path, ECHO)
    mitigator = CommandMitigator(argv, on_status, clock=lambda: EPOCH)
    mitigator(ApplyMitigation(CUID, 7, SCOPE))
    await mitigator.aclose()
    assert reports == [(CUID, 7, Status.ATTACK_SUCCESSFULLY_MITIGATED, Counters(123))]
    (seen,) = (json.loads(line) for line in Path(argv[1] + ".seen").read_text().splitlines())
    assert seen["action"] == "apply" and seen["scope"]["target-prefix"] == ["192.0.2.0/24"]
    assert seen["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert mitigator.stats.status_reports == 1 and mitigator.stats.bad_reports == 1
    assert mitigator.stats.failures == 0


async def test_a_hanging_script_is_killed_with_its_children(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pids = tmp_path / "pids"
    argv = script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{child.pid}}\\n")
        print('{{"status": "attack-mitigation-in-progress"}}', flush=True)
        time.sleep(60)
    """)
    reports, on_status = collector()
    mitigator = CommandMitigator(argv, on_status, timeout=1.0)
    started = time.monotonic()
    mitigator(ApplyMitigation(CUID, 7, SCOPE))
    await mitigator.aclose()
    assert time.monotonic() - started < 5
    assert mitigator.stats.timeouts == 1 and mitigator.stats.failures == 1
    assert "still running after 1 s: killed" in caplog.text
    # What it reported before the timeout counts.
    assert reports == [(CUID, 7, Status.ATTACK_MITIGATION_IN_PROGRESS, None)]
    child = int(pids.read_text())
    await asyncio.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie waiting for a reaper is dead


async def test_a_failing_script_is_logged_with_its_exit_status_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = script(tmp_path, """
        import sys
        sys.stdin.read()
        print("router said no", file=sys.stderr)
        sys.exit(3)
    """)
    mitigator = CommandMitigator(argv, collector()[1])
    mitigator(WithdrawMitigation(CUID, 7, Trigger.WITHDRAWN))
    await mitigator.aclose()
    assert mitigator.stats.failures == 1 and mitigator.stats.timeouts == 0
    assert any(getattr(r, "event", None) == "mitigator.failed" and r.action == "withdraw"
               and r.cuid == CUID and r.mid == 7 and r.exit_status == 3
               for r in caplog.records)
    assert "router said no" in caplog.text


async def test_a_script_that_cannot_start_is_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mitigator = CommandMitigator([str(tmp_path / "missing")], collector()[1])
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    await mitigator.aclose()
    assert mitigator.stats.failures == 1 and "could not start" in caplog.text


async def test_a_script_that_ignores_stdin_is_fine(tmp_path: Path) -> None:
    argv = script(tmp_path, 'print(\'{"status": 4, "pps-dropped": 5}\')\n')
    reports, on_status = collector()
    mitigator = CommandMitigator(argv, on_status)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    await mitigator.aclose()
    assert reports == [(CUID, 1, Status.ATTACK_EXCEEDED_CAPABILITY, Counters(pps_dropped=5))]
    assert mitigator.stats.failures == 0


async def test_bad_status_lines_are_ignored_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = script(tmp_path, """
        import sys
        sys.stdin.read()
        print('[1, 2]')
        print('{"status": "attack-mitigation-terminated"}')
        print('{"status": "attack-stopped", "bytes_dropped": 1}')
        print('{"status": "attack-stopped", "bytes-dropped": -1}')
        print('{"status": "attack-stopped", "mid": "7"}')
        print("x" * 70000)
        print('{"cuid": "other", "mid": 9, "status": "attack-stopped"}')
    """)
    reports, on_status = collector()
    mitigator = CommandMitigator(argv, on_status)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    await mitigator.aclose()
    assert reports == [("other", 9, Status.ATTACK_STOPPED, None)]
    assert mitigator.stats.bad_reports >= 6 and mitigator.stats.failures == 0
    assert "is the server's to set" in caplog.text and "'bytes_dropped'" in caplog.text


async def test_a_failing_status_callback_does_not_stop_the_backend(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = script(tmp_path, ECHO)

    def on_status(*args: object) -> None:
        raise RuntimeError("store is gone")

    mitigator = CommandMitigator(argv, on_status)
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    mitigator(ApplyMitigation(CUID, 2, SCOPE))
    await mitigator.aclose()
    assert caplog.text.count("not applied") == 2 and mitigator.stats.failures == 0


async def test_commands_for_one_request_run_in_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    argv = script(tmp_path, f"""
        import json, sys, time
        command = json.loads(sys.stdin.read())
        if command["action"] == "apply":
            time.sleep(0.3)  # a slow apply must not be overtaken by its withdraw
        with open({str(order)!r}, "a") as f:
            f.write(f"{{command['action']}} {{command['mid']}}\\n")
    """)
    mitigator = CommandMitigator(argv, collector()[1])
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    mitigator(WithdrawMitigation(CUID, 1, Trigger.WITHDRAWN))
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    await mitigator.aclose()
    assert order.read_text().splitlines() == ["apply 1", "withdraw 1", "apply 1"]


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    peaks = tmp_path / "peaks"
    argv = script(tmp_path, f"""
        import json, os, sys, time
        command = json.loads(sys.stdin.read())
        mine = os.path.join({str(running)!r}, str(command["mid"]))
        open(mine, "w").close()
        time.sleep(0.3)
        with open({str(peaks)!r}, "a") as f:
            f.write(f"{{len(os.listdir({str(running)!r}))}}\\n")
        os.unlink(mine)
    """)
    mitigator = CommandMitigator(argv, collector()[1], concurrency=2)
    for mid in range(5):
        mitigator(ApplyMitigation(CUID, mid, SCOPE))
    await mitigator.aclose()
    counts = [int(line) for line in peaks.read_text().splitlines()]
    assert len(counts) == 5 and max(counts) == 2


async def test_closing_cancels_nothing_and_waits_for_queued_commands(tmp_path: Path) -> None:
    argv = script(tmp_path, ECHO)
    reports, on_status = collector()
    mitigator = CommandMitigator(argv, on_status, concurrency=1)
    for mid in range(3):
        mitigator(ApplyMitigation(CUID, mid, SCOPE))
    await mitigator.aclose()
    assert sorted(r[1] for r in reports) == [0, 1, 2]


async def test_cancelling_a_run_kills_its_script(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f"""
        import os, time
        with open({str(pid_file)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    """)
    mitigator = CommandMitigator(argv, collector()[1])
    mitigator(ApplyMitigation(CUID, 1, SCOPE))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if pid_file.exists() and pid_file.read_text():
            break
    (task,) = mitigator._tasks
    task.cancel()
    await mitigator.aclose()
    assert not _alive(int(pid_file.read_text()))


# --- status lines and building -------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ('{"status": "attack-stopped"}', ("c", 5, Status.ATTACK_STOPPED, None)),
    ('{"status": 2, "bytes-dropped": 1, "bps-dropped": 2, "pkts-dropped": 3, '
     '"pps-dropped": 4}', ("c", 5, Status.ATTACK_SUCCESSFULLY_MITIGATED, Counters(1, 2, 3, 4))),
    ('{"cuid": "d", "mid": 0, "status": 1, "bytes-dropped": 18446744073709551615}',
     ("d", 0, Status.ATTACK_MITIGATION_IN_PROGRESS, Counters(2**64 - 1))),
])
def test_status_reports(line: str, expected: tuple[object, ...]) -> None:
    assert parse_status_report(line, "c", 5) == expected


@pytest.mark.parametrize(("line", "error"), [
    ("{", "not JSON"),
    ("3", "not a JSON object"),
    ("{}", "no status"),
    ('{"status": "unknown"}', "not a status label"),
    ('{"status": true}', "not a status label"),
    ('{"status": 8}', "server's to set"),
    ('{"status": 1, "cuid": ""}', "cuid"),
    ('{"status": 1, "mid": 4294967296}', "uint32"),
    ('{"status": 1, "bytes-dropped": 18446744073709551616}', "counter64"),
    ('{"status": 1, "lifetime": 5}', "unknown keys 'lifetime'"),
])
def test_bad_status_reports(line: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_status_report(line, "c", 5)


def test_build_log_backend_writes_into_the_state_dir(tmp_path: Path) -> None:
    mitigator = build_mitigator(default_settings(tmp_path), collector()[1])
    assert isinstance(mitigator, LogMitigator) and mitigator.path == tmp_path / JOURNAL_NAME


def test_build_command_backend_splits_without_a_shell(tmp_path: Path) -> None:
    settings = default_settings(tmp_path)
    command = dataclasses.replace(settings.mitigation, backend=Backend.COMMAND,
                                  command="/usr/local/bin/mitigate --dry-run 'two words' $HOME")
    mitigator = build_mitigator(dataclasses.replace(settings, mitigation=command),
                                collector()[1])
    assert isinstance(mitigator, CommandMitigator)
    assert mitigator.argv == ("/usr/local/bin/mitigate", "--dry-run", "two words", "$HOME")
    assert (mitigator.concurrency, mitigator.timeout) == (4, 30.0)


def test_build_refuses_a_command_that_does_not_split(tmp_path: Path) -> None:
    settings = default_settings(tmp_path)
    command = dataclasses.replace(settings.mitigation, backend=Backend.COMMAND,
                                  command="mitigate 'unclosed")
    with pytest.raises(ConfigError, match="mitigation.command: cannot be split"):
        build_mitigator(dataclasses.replace(settings, mitigation=command),
                        collector()[1])

