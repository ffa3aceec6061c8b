"""``make bench``'s DOTS script at a tiny size: real servers (this checkout's, a baseline
exported with ``git archive``, and one with its state on tmpfs) take turns under real DTLS
create+delete cycles and heartbeats, and the section is written with its target lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bench.spy import OTHER, buckets, py_spy

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_dots_writes_its_section_with_targets_and_baseline(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, "tests/bench/bench_dots.py", "--seconds", "0.5", "--sessions", "4",
         "--rate", "40", "--slower-rate", "20", "--fsync-samples", "5", "--baseline", "HEAD",
         "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    text = results.read_text()
    assert "## DOTS (tests/bench/bench_dots.py)" in text
    assert "| measure | this checkout | baseline HEAD | this checkout, state on tmpfs |" in text
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
            for line in text.splitlines() if line.startswith("| ")}
    # Every daemon created and deleted mitigations in every mitigation phase (a refusal, e.g.
    # a reused mid's 4.09, would show here), and answered heartbeats.
    for phase in ("1 session, saturated", "4 sessions, saturated",
                  "4 sessions, paced at 40 cycles/s", "4 sessions, paced at 20 cycles/s"):
        for answers in rows[f"answers ({phase})"]:
            assert "PUT 2.01" in answers and "DELETE 2.02" in answers, (phase, answers)
            assert "4." not in answers and "5." not in answers, (phase, answers)
    assert all(float(v.replace(",", "")) > 0
               for v in rows["heartbeat round trips/s (16 sessions)"][:2])
    assert "- create+delete >= 2,000 cycles/s over 4 sessions: " in text
    assert "- PUT p99 <= 2 ms at 40 cycles/s: " in text
    assert "  - at 20 cycles/s: PUT p99 " in text
    assert "same run (ratio " in text
    assert "fsync p50/p99" in text and "state on tmpfs (same code, fsync free)" in text
    if py_spy() is not None:
        assert "== profile: 4 sessions, saturated" in run.stdout
    # Issue 21 §4: the pictures next to RESULTS.md, linked from the section.
    section = text.split("## DOTS (tests/bench/bench_dots.py)", 1)[1]
    for png in ("dots-latency.png", "dots-rates.png"):
        assert f"]({png})" in section, section
        data = (tmp_path / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, (png, len(data))


def test_profile_samples_go_to_the_deepest_named_bucket() -> None:
    raw = "\n".join([
        # a row's CBOR encoding inside a save counts as CBOR, the save's own SQLite as the save
        "main (gateway/cli.py:1);save (gateway/server/persistence.py:260);"
        "encode_cbor (gateway/dots/codec.py:86) 3",
        "main (gateway/cli.py:1);save (gateway/server/persistence.py:260) 2",
        "main (gateway/cli.py:1);make_durable (gateway/server/persistence.py:289);"
        "fsync_wal (gateway/server/persistence.py:473) 4",
        "_find_and_load (<frozen importlib._bootstrap>:1) 1",
        "not a sample line",
    ])
    total, found = buckets(raw)
    assert total == 10
    assert found == {"CBOR encode/decode": 3, "SQLite save (transaction, rows)": 2,
                     "fsync of the WAL (waiting on the disk)": 4, OTHER: 1}
