"""Anycast failover timing in the netns lab (root, bird2): numbers, not pass/fail.

    .venv/bin/python tests/bench/bench_anycast.py [ROUNDS]

Per round: edge1's operator check starts failing -> (a) the router forwards to edge2,
(b) a new DTLS session from the client lands on edge2; then edge1 recovers (after its
damped hold-down). The check interval is 0.1 s with fall 2, so detection alone is up to
~0.2-0.3 s; the rest is BGP (a few ms) and the probe's own handshake/timeouts.
Part of ``make bench``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.results import machine_lines, update_section  # noqa: E402
from tests.lab.anycast_lab import AnycastLab, missing_tools  # noqa: E402
from tests.lab.netns import Lab, cleanup_stale, require_root  # noqa: E402


def main(rounds: int) -> int:
    why = require_root() or missing_tools()
    if why:
        print(f"skipped: {why}")
        return 0
    cleanup_stale()
    lab = Lab()
    alab = AnycastLab(lab)
    routed, session = [], []
    try:
        started = time.monotonic()
        alab.up()
        print(f"lab up in {time.monotonic() - started:.2f} s")
        for _ in range(rounds):
            alab.wait_next_hop("edge1", timeout=60.0)
            t0 = time.monotonic()
            alab.fail_flag("edge1").touch()
            alab.wait_next_hop("edge2", timeout=5.0)
            routed.append(time.monotonic() - t0)
            while True:
                answer = alab.hb("udp", 4, timeout=0.3)
                if answer["ok"] and answer["edge"] == "edge2":
                    break
            session.append(time.monotonic() - t0)
            alab.fail_flag("edge1").unlink()
    finally:
        for process in alab.gateways.values():
            if process.poll() is None:
                process.terminate()
                time.sleep(0.05)
                process.terminate()
        lab.close()
    rows = []
    for name, values in (("check fails -> router forwards to edge2", routed),
                         ("check fails -> new DTLS session on edge2", session)):
        ms = [1000 * v for v in values]
        line = (f"median {statistics.median(ms):.0f} ms, min {min(ms):.0f}, "
                f"max {max(ms):.0f} ({len(ms)} rounds)")
        print(f"{name}: {line}")
        rows.append(f"| {name} | {line} |")
    update_section(Path("tests/bench/RESULTS.md"),
                   "Anycast failover (tests/bench/bench_anycast.py)",
                   [*machine_lines(),
                    "- netns lab: router + two edges running BIRD 2 and dots-gateway run;"
                    " check interval 0.1 s, fall 2; drain of 1,000 sessions not measured yet",
                    "", "| measure | result |", "|---|---|", *rows])
    return 0


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[2])
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
