"""PNG pictures next to RESULTS.md (issue 21 §4): rates against a reference peer, latency
distributions, a recovery timeline. matplotlib is imported only here, and only when a
picture is drawn."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: A distribution with more samples than this is drawn through this many of its order
#: statistics (the first and the last kept): the curve looks the same, while a window of
#: heartbeats holds ~10^5 samples that would only slow the drawing and swell the file.
CDF_POINTS = 2000


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    return plt


def drawn(alt: str, path: Path, draw: Callable[[Path], None]) -> str:
    """The Markdown link to the picture ``draw`` writes at ``path`` (named relative to
    RESULTS.md, which lies beside it); if drawing fails, a note saying why instead, so that
    the bench's section and figures are written either way."""
    try:
        draw(path)
    except Exception as exc:  # noqa: BLE001 - a picture must never cost the run's figures
        print(f"picture {path.name} not drawn: {exc!r}", file=sys.stderr, flush=True)
        return f"({path.name} not drawn: {type(exc).__name__}: {exc})"
    return f"![{alt}]({path.name})"


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rates_against(path: Path, title: str, rates: Mapping[str, Mapping[str, float]],
                  unit: str) -> None:
    """Grouped bars: one group per measure (the inner keys), one bar per server (none where
    a server lacks that measure: a phase it did not run is not a rate of 0)."""
    plt = pyplot()
    servers = list(rates)
    measures = list(dict.fromkeys(m for per in rates.values() for m in per))
    width = 0.8 / max(len(servers), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, server in enumerate(servers):
        offset = (i - (len(servers) - 1) / 2) * width
        present = [(m + offset, rates[server][name]) for m, name in enumerate(measures)
                   if name in rates[server]]
        bars = ax.bar([x for x, _ in present], [v for _, v in present], width, label=server)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(measures)), measures, fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend()
    _save(plt, fig, path)


def _distributions(ax: Any, title: str, series: Mapping[str, Sequence[float]],
                   styles: Mapping[str, Mapping[str, Any]]) -> None:
    """One cumulative distribution per series on ``ax`` (milliseconds, log scale), drawn
    with its ``styles`` entry (matplotlib line properties) if it has one."""
    from matplotlib.ticker import FuncFormatter

    curves = 0
    for name, values in series.items():
        ordered = sorted(v for v in values if v > 0)
        n = len(ordered)
        if not n:
            continue
        curves += 1
        picks = list(range(0, n, max(1, n // CDF_POINTS)))
        if picks[-1] != n - 1:
            picks.append(n - 1)
        ax.plot([ordered[i] for i in picks], [(i + 1) / n for i in picks],
                label=f"{name} (n={n:,})", **styles.get(name, {}))
    ax.set_xscale("log")
    # Plain numbers ("0.5", "20"), not "5x10^-1"; a range within two decades also gets
    # its 2s and 5s, or it would show one label or none.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _few_decades(ax)
                                               and f"{v:e}"[0] in "25" else ""))
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("share answered within")
    ax.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    ax.set_title(title, fontsize=10)
    if curves:  # an empty panel (a phase with no answers) has nothing to name
        # Below the axes: inside, a long legend hides the curves' tails, the point of it.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), frameon=False)
    ax.grid(True, which="both", alpha=0.3)


def _few_decades(ax: Any) -> bool:
    low, high = ax.get_xlim()
    return bool(low > 0 and high / low < 100)


def latency_distributions(path: Path, title: str,
                          series: Mapping[str, Sequence[float]]) -> None:
    """One cumulative distribution per series (milliseconds, log scale): where the p50 and
    the tail of each phase lie, side by side."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _distributions(ax, title, series, {})
    _save(plt, fig, path)


def latency_panels(path: Path, title: str,
                   panels: Mapping[str, Mapping[str, Sequence[float]]],
                   columns: int = 2, styles: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> None:
    """``latency_distributions`` per panel (one per phase, say), in a grid of ``columns``:
    the series of one phase share axes, different phases need not share a scale. ``styles``
    per series name (matplotlib line properties): the same daemon in the same colour in
    every panel, say."""
    plt = pyplot()
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.8 * rows),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, series) in zip(flat, panels.items(), strict=False):
        _distributions(ax, name, series, styles or {})
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    _save(plt, fig, path)


def recovery_timeline(path: Path, title: str, times: Sequence[float], ceiling: int,
                      target_s: float, what: str = "sessions working again",
                      after: str = "the event") -> None:
    """How many have recovered by each moment after an event (``times``: seconds after it,
    one per recovered item), against all of them (``ceiling``) and the target; below, how
    many recovered per second."""
    plt = pyplot()
    ordered = sorted(times)
    end = max(ordered[-1] if ordered else 0.0, target_s)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.step([0.0, *ordered], range(len(ordered) + 1), where="post", color="tab:blue",
             label=f"{what}: {len(ordered):,}")
    top.axhline(ceiling, color="gray", linestyle="--", label=f"all: {ceiling:,}")
    top.axvline(target_s, color="tab:red", linestyle="--", label=f"target: {target_s:g} s")
    top.set_ylim(0, max(ceiling, len(ordered), 1) * 1.05)
    top.set_ylabel(what)
    top.legend(loc="lower right", fontsize=8)
    top.grid(True, alpha=0.3)
    # Bins of 1 s as asked; a recovery over in a few seconds gets 50 bins, scaled to /s.
    width = 1.0 if end >= 20 else end / 50
    if ordered:
        bottom.hist(ordered, bins=max(1, math.ceil(end / width)), range=(0.0, end),
                    weights=[1 / width] * len(ordered), color="tab:green")
    bottom.axvline(target_s, color="tab:red", linestyle="--")
    bottom.set_ylabel(f"per second ({width:.2g} s bins)")
    bottom.set_xlabel(f"seconds after {after}")
    bottom.grid(True, alpha=0.3)
    fig.suptitle(title)
    _save(plt, fig, path)
