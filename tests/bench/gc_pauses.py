"""Garbage-collection pauses with and without the daemon's GC policy, in one process each: a
cheap reproduction of the full collections behind issue 21's 10,000-session p99.

    .venv/bin/python tests/bench/gc_pauses.py [--sessions 10000] [--events 300000]

Not part of ``make bench`` (seconds, not minutes). Each mode runs in a fresh interpreter:
``--sessions`` sessions' worth of long-lived objects (31 GC-tracked objects each, what a
real ``dots-gateway server`` holds per established DTLS session: the ``examined`` count of
``gc-audit`` before and after 300 sessions), then a heartbeat-like load of ``--events``
events handled in turns of 64: each event replaces its session's timer (3 objects, alive
one rotation, so they are promoted like the daemon's per-session asyncio timers) and
allocates the request's objects, alive until the turn ends. Every collection is timed with
``gc.callbacks``. ``off``: CPython's defaults; ``on``: ``gateway.ops.gc_runtime.GcRuntime``
as the daemon runs it (``[gc] freeze = true``), with one audit at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TURN = 64


class Obj:
    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def make_session(i: int) -> Obj:
    """31 tracked objects with back references, like a session's layers."""
    root = Obj(id=i)
    parts = [Obj(owner=root, n=j, cache={"k": [j]}, seen=[]) for j in range(7)]
    root.parts = parts
    root.index = dict(enumerate(parts))
    return root


async def one_mode(mode: str, sessions: int, events: int) -> dict[str, Any]:
    from gateway.ops.control import ControlProviders
    from gateway.ops.gc_runtime import GcRuntime
    from gateway.ops.metrics import Registry

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    held = [make_session(i) for i in range(sessions)]
    timers: list[Obj | None] = [None] * sessions
    runtime = None
    if mode == "on":
        runtime = GcRuntime(freeze=True, audit_interval=None)
        runtime.register(Registry(), ControlProviders())
        runtime.start()
    gc.callbacks.append(timed)
    t0 = time.perf_counter()
    for turn in range(events // TURN):
        alive = []
        for e in range(turn * TURN, (turn + 1) * TURN):
            i = e % sessions
            alive.append(timers[i])  # the old timer dies when the turn ends
            timers[i] = Obj(when=e + 30, args=[i], ctx={"s": i})
            alive.append([Obj(x=k, y=[k]) for k in range(6)])
        del alive
    wall = time.perf_counter() - t0
    gc.callbacks.remove(timed)
    audit = runtime.audit("operator").as_dict() if runtime is not None else None
    if runtime is not None:
        runtime.stop()
    del held
    return {"mode": mode, "wall": wall, "pauses": {str(g): p for g, p in pauses.items()},
            "audit": audit}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: dict[str, Any]) -> None:
    every = [p for ps in result["pauses"].values() for p in ps]
    print(f"{result['mode']:>3}: {result['wall']:.2f} s of load, {sum(every):.3f} s in the "
          f"collector, longest pause {max(every, default=0) * 1000:.1f} ms")
    for generation, ps in result["pauses"].items():
        if ps:
            print(f"     generation {generation}: {len(ps):5d} collections, mean "
                  f"{statistics.mean(ps) * 1000:8.2f} ms, p99 {quantile(ps, 0.99) * 1000:8.2f} "
                  f"ms, max {max(ps) * 1000:8.2f} ms, total {sum(ps):.3f} s")
    if result["audit"]:
        audit = result["audit"]
        print(f"     audit at the end: {audit['examined']} frozen objects examined, "
              f"{audit['collected']} freed, {audit['seconds'] * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--mode", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # the child: one mode, JSON on stdout
        print(json.dumps(asyncio.run(one_mode(args.mode, args.sessions, args.events))))
        return 0
    print(f"{args.sessions} sessions' worth of objects, {args.events} events")
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--sessions", str(args.sessions),
             "--events", str(args.events)], cwd=ROOT, check=True, capture_output=True,
            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=1800)
        report(json.loads(out.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
