"""bench_dots.py's pictures (issue 21 §4): the latency distributions of every phase (PUT and
DELETE of the create+delete cycles, heartbeat round trips) for each daemon of the run, and
its rates per phase. Drawn with the shared helpers of ``plots``; kept out of bench_dots.py,
which is long enough."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tests.bench import plots

if TYPE_CHECKING:  # bench_dots imports this module
    from tests.bench.bench_dots import Turn

LATENCY_PNG = "dots-latency.png"
RATES_PNG = "dots-rates.png"


def latency_panels(turns: Sequence[Turn]) -> dict[str, dict[str, list[float]]]:
    """Per phase (in the run's order), each daemon's latencies per request kind, the
    daemons in the same order in every panel."""
    daemons = list(dict.fromkeys(t.daemon for t in turns))
    panels: dict[str, dict[str, list[float]]] = {}
    for turn in sorted(turns, key=lambda t: daemons.index(t.daemon)):
        if turn.phase.heartbeats:
            panel = panels.setdefault(f"heartbeats, {turn.phase.name}", {})
            panel[f"{turn.daemon}: heartbeat"] = turn.heartbeat_ms
        elif turn.cycles is not None:
            panel = panels.setdefault(f"create+delete, {turn.phase.name}", {})
            panel[f"{turn.daemon}: PUT"] = turn.cycles.put_ms
            panel[f"{turn.daemon}: DELETE"] = turn.cycles.delete_ms
    return panels


def styles(turns: Sequence[Turn]) -> dict[str, dict[str, str]]:
    """A colour per daemon in every panel (the daemons' order rotates phase by phase), a
    dashed line for DELETE."""
    daemons = list(dict.fromkeys(t.daemon for t in turns))
    return {f"{daemon}: {kind}": {"color": f"C{i}", "linestyle": "--" if kind == "DELETE"
                                  else "-"}
            for i, daemon in enumerate(daemons) for kind in ("PUT", "DELETE", "heartbeat")}


def rates(turns: Sequence[Turn]) -> dict[str, dict[str, float]]:
    """Per daemon, the rate of each phase (cycles/s or heartbeats/s), labelled to fit a bar
    group: the phase's name broken at its commas."""
    out: dict[str, dict[str, float]] = {}
    for turn in turns:
        unit = "heartbeats/s" if turn.phase.heartbeats else "cycles/s"
        value = (turn.heartbeats_s if turn.phase.heartbeats
                 else turn.cycles.rate if turn.cycles is not None else 0.0)
        label = turn.phase.name.replace(", ", ",\n") + f"\n({unit})"
        out.setdefault(turn.daemon, {})[label] = value
    return out


def draw(directory: Path, turns: Sequence[Turn]) -> str:
    """Both pictures next to RESULTS.md; the section's line linking them (or saying which
    could not be drawn)."""
    latency = plots.drawn("DOTS latency per phase", directory / LATENCY_PNG, lambda path:
                          plots.latency_panels(path, "dots-gateway server: latency per phase"
                                               " and daemon", latency_panels(turns),
                                               styles=styles(turns)))
    rate = plots.drawn("DOTS rates per phase", directory / RATES_PNG, lambda path:
                       plots.rates_against(path, "dots-gateway server: rates per phase",
                                           rates(turns), "per second"))
    return f"{latency} {rate}"
