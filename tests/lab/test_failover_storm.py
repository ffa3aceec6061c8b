"""The failover storm bench at a small scale, as a test: an anycast edge in gateway mode is
killed (-9, with its BIRD) and every client of it resumes on the other edge with the fleet's
shared ticket keys and finds its mitigation there (through the upstream server)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.anycast_lab import missing_tools
from tests.lab.netns import require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_client_resumes_on_the_surviving_edge_and_keeps_its_mitigation(
        tmp_path: Path) -> None:
    why = require_root() or missing_tools()
    if why:
        pytest.skip(why)
    results = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, "tests/bench/bench_storm.py", "--sessions",
                          str(SESSIONS), "--results", str(results), "--profile", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    text = results.read_text()
    assert f"- {SESSIONS} DTLS sessions on one edge" in text
    assert re.search(rf"answered 2\.05 with it\): {SESSIONS} of {SESSIONS};", text), text
    # Shared ticket keys: the other edge reads every ticket the dead one issued.
    assert f"resumed with the shared ticket keys: {SESSIONS} (100.0%)" in text, text
    assert "not working again after the move: 0 (target 0)" in text
    counters = re.search(r"surviving edge's counters after the storm: handshakes completed"
                         r" ([0-9,]+)", text)
    assert counters and int(counters.group(1).replace(",", "")) >= SESSIONS, text
    # Where a miss's time goes: the surviving edge's CPU per session, and its profile.
    cpu = re.search(r"used ([0-9.]+) s of CPU .* ([0-9.]+) ms per session back", text)
    assert cpu and float(cpu.group(1)) > 0 and float(cpu.group(2)) > 0, text
    assert re.search(r"where the surviving edge's time went .*py-spy, [0-9,]+ samples\): "
                     r"\w", text), text
    # Issue 21 §4: the storm's timeline next to RESULTS.md, linked from the section.
    assert "![failover storm](storm.png)" in text
    data = (tmp_path / "storm.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, len(data)
