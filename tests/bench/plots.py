"""PNG pictures next to RESULTS.md (issue 21 §4): rates against a reference peer and latency
distributions. matplotlib is imported only here, and only when a picture is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    return plt


def rates_against(path: Path, title: str, rates: Mapping[str, Mapping[str, float]],
                  unit: str) -> None:
    """Grouped bars: one group per measure (the inner keys), one bar per server."""
    plt = pyplot()
    servers = list(rates)
    measures = list(dict.fromkeys(m for per in rates.values() for m in per))
    width = 0.8 / max(len(servers), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, server in enumerate(servers):
        xs = [m + (i - (len(servers) - 1) / 2) * width for m in range(len(measures))]
        values = [rates[server].get(name, 0.0) for name in measures]
        bars = ax.bar(xs, values, width, label=server)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(measures)), measures, fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def latency_distributions(path: Path, title: str,
                          series: Mapping[str, Sequence[float]]) -> None:
    """One cumulative distribution per series (milliseconds, log scale): where the p50 and
    the tail of each phase lie, side by side."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, values in series.items():
        ordered = sorted(v for v in values if v > 0)
        if not ordered:
            continue
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.plot(ordered, share, label=f"{name} (n={len(ordered):,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("share of requests answered within")
    ax.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
