"""``make soak``'s script at a small scale: the generator opens real DTLS sessions to a real
server and gateway, heartbeats flow both ways, and the section and timelines are written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_soak_script_writes_its_section_and_timelines(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, "tests/bench/soak.py", "--sessions", "40", "--minutes", "0.17",
         "--interval", "1", "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    text = results.read_text()
    assert "## Soak (make soak)" in text
    for phase, sessions in (("server", 40), ("gateway", 20)):
        section = text.split(f"### {phase}\n", 1)[1].split("###", 1)[0]
        assert f"- sessions: {sessions} of {sessions} up" in section
        assert "- lost: 0 (target 0: met)" in section
        answered = int(section.split("- heartbeats: ", 1)[1].split(" ", 1)[0].replace(",", ""))
        # 10 s at one heartbeat per second per session: most of them, whatever the machine's load.
        assert answered >= sessions * 3
        assert (tmp_path / f"soak-{phase}.png").read_bytes().startswith(PNG_MAGIC)
