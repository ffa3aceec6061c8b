"""The demo's picture: routes, the client's session and mitigations over time, as a PNG.

Three panels share the time axis (seconds since the demo started): which edge the router
forwards the anycast address to; where the client's signal session is (on which daemon, on
the anycast or a unicast address); how many mitigations the provider has active and each edge
relays. The narrated steps of the failure and the drain are marked on every panel.
matplotlib (the ``demo`` extra) draws it with its non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from gateway.demo.timeline import Timeline

#: Steps marked with a vertical line on every panel.
MARKED = {"redirect": "redirected to unicast", "failure": "edge fails",
          "drain": "drain"}


def draw(timeline: Timeline, edges: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = timeline.samples
    times = [s.at for s in samples]
    rows = ["none", *edges]
    colours = {"edge1": "tab:blue", "edge2": "tab:orange", "edge3": "tab:green",
               "provider": "tab:red"}
    figure, (routes, sessions, mitigations) = plt.subplots(
        3, 1, sharex=True, figsize=(11, 7.5), gridspec_kw={"height_ratios": [1, 1.2, 1]})
    figure.suptitle("dots-gateway demo: anycast edges, redirect, failure and drain")

    routes.step(times, [rows.index(s.route or "none") for s in samples], where="post",
                color="black")
    routes.set_yticks(range(len(rows)), rows)
    routes.set_ylim(-0.5, len(rows) - 0.5)
    routes.set_ylabel("anycast route\n(router next hop)")

    daemons = [*edges]
    for row, daemon in enumerate(daemons):
        for kind, style in (("anycast", {"hatch": "//", "alpha": 0.5}),
                            ("unicast", {"alpha": 0.9})):
            spans = _spans(times, [s.client_session.get(daemon) == kind for s in samples])
            sessions.broken_barh(spans, (row - 0.35, 0.7), color=colours.get(daemon),
                                 label=f"on {kind}" if row == 0 else None, **style)
    sessions.set_yticks(range(len(daemons)), daemons)
    sessions.set_ylim(-0.6, len(daemons) - 0.4)
    sessions.set_ylabel("client session\n(hatched: anycast)")
    sessions.legend(loc="upper left", fontsize="small")

    for daemon in ["provider", *edges]:
        values = [s.mitigations.get(daemon, 0) for s in samples]
        label = "provider (active)" if daemon == "provider" else f"{daemon} (relayed)"
        mitigations.step(times, values, where="post", color=colours.get(daemon), label=label,
                         linewidth=2.5 if daemon == "provider" else 1.2)
    mitigations.set_ylabel("mitigations")
    mitigations.set_xlabel("seconds since the demo started")
    mitigations.legend(loc="upper left", fontsize="small")
    top = max([1, *(v for s in samples for v in s.mitigations.values())])
    mitigations.set_ylim(-0.2, top + 0.5)

    marked: set[str] = set()
    for step in timeline.steps:
        if step.name in MARKED and step.name not in marked:  # the first of each
            marked.add(step.name)
            for axis in (routes, sessions, mitigations):
                axis.axvline(step.at, color="grey", linestyle="--", linewidth=0.8)
            routes.annotate(MARKED[step.name], (step.at, len(rows) - 0.5), fontsize="small",
                            xytext=(3, -10 - 11 * (len(marked) - 1)),
                            textcoords="offset points")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _spans(times: list[float], flags: list[bool]) -> list[tuple[float, float]]:
    """(start, width) of each run of True samples; a run lasts until the next sample."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = times[index]
        elif not flag and start is not None:
            spans.append((start, times[index] - start))
            start = None
    if start is not None and times:
        spans.append((start, max(times[-1] - start, 0.25)))
    return spans
