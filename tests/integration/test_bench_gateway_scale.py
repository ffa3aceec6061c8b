"""``make bench``'s relay-at-scale script at a tiny size: real processes (upstream server,
this checkout's gateway, a baseline's gateway exported with ``git archive``) under real DTLS,
and the section written with its table, its target lines and its latency picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_gateway_scale_writes_its_section_and_latency_picture(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, "tests/bench/bench_gateway_scale.py", "--sessions", "8", "--rate",
         "20", "--seconds", "1", "--baseline", "HEAD", "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    section = results.read_text().split(
        "## Gateway relay at scale (tests/bench/bench_gateway_scale.py)", 1)[1]
    for path in ("direct", "this checkout", "baseline HEAD"):
        assert f"| {path} | GET |" in section and f"| {path} | PUT |" in section, section
    assert "- overhead p99 <= 1 ms at 8 sessions (worst of GET and PUT): " in section
    assert "- same run, baseline HEAD: " in section
    # Issue 21 §4: the overhead's picture next to RESULTS.md, linked from the section.
    assert "![relay latency at scale](gateway-scale-latency.png)" in section
    data = (tmp_path / "gateway-scale-latency.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, len(data)
