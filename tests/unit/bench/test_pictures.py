"""The bench pictures of issue 21 §4 drawn from made-up runs: the failover storm's timeline,
the DOTS bench's latency and rate pictures, the relay-at-scale latency panels. Each is a real
PNG next to RESULTS.md and linked from its section; a picture that cannot be drawn costs its
link, never the section's figures."""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.bench import dots_pictures, plots
from tests.bench.bench_dots import Phase, Turn
from tests.bench.bench_gateway import Measure
from tests.bench.bench_storm import STORM_PNG, Storm
from tests.bench.dots_load import Cycles

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    # Axes, curves and labels: far above an empty canvas's few hundred bytes.
    assert len(data) > 10_000, (path, len(data))


def latencies(n: int, scale: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(0, 0.6) * scale for _ in range(n)]


def test_storm_timeline_counts_every_recovered_session_after_the_move(tmp_path: Path) -> None:
    moved = 5000.0
    rng = random.Random(1)
    # Two generator processes; their "ok" times are monotonic instants, like ``moved``.
    storms = [{"ok": sorted(moved + rng.uniform(0.05, 3.0) for _ in range(n)), "resumed": n,
               "missing": 0, "codes": {"get 2.05": n}, "started": moved + 0.001}
              for n in (900, 600)]
    storm = Storm(1500, 1500, 12.0, [{}, {}], 0.4, moved, storms)
    recovered = storm.recovered()
    assert len(recovered) == 1500 and recovered == sorted(recovered)
    assert 0 < recovered[0] and recovered[-1] <= 3.0
    link = plots.drawn("failover storm", tmp_path / STORM_PNG, storm.draw)
    assert link == f"![failover storm]({STORM_PNG})"
    assert_png(tmp_path / STORM_PNG)
    assert "1,500 of 1,500; the last" in "\n".join(storm.lines())


def test_storm_timeline_of_a_storm_that_missed_is_drawn_too(tmp_path: Path) -> None:
    # Nobody back (an empty "ok"), and a straggler long after the target: both drawable.
    for ok in ([], [1.0, 2.0, 95.0]):
        storm = Storm(10, 10, 1.0, [{}], 0.4, 0.0, [{"ok": ok}])
        storm.draw(tmp_path / "s.png")
        assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC


def turn(daemon: str, phase: Phase, rate: float, seed: int) -> Turn:
    t = Turn(daemon, phase, phase.sessions, seconds=1.0)
    if phase.heartbeats:
        t.heartbeats_s = rate
        t.heartbeat_ms = latencies(3000, 0.3, seed)
    else:
        t.cycles = Cycles(1.0, cycles=int(rate), put_ms=latencies(400, 2.0, seed),
                          delete_ms=latencies(400, 1.5, seed + 1),
                          codes=Counter({"PUT 2.01": 400, "DELETE 2.02": 400}))
    return t


def dots_turns() -> list[Turn]:
    phases = [Phase("1 session, saturated", 1), Phase("4 sessions, saturated", 4),
              Phase("4 sessions, paced at 40 cycles/s", 4, 40.0),
              Phase("1 session", 1, heartbeats=True), Phase("16 sessions", 16, heartbeats=True)]
    daemons = ["this checkout", "baseline HEAD", "this checkout, state on tmpfs"]
    return [turn(d, p, 300.0 + 10 * i, i) for i, (p, d) in enumerate(
        (p, d) for p in phases for d in daemons
        if not (p.heartbeats and d.endswith("tmpfs")))]


def test_dots_pictures_have_a_panel_per_phase_and_a_rate_per_daemon(tmp_path: Path) -> None:
    turns = dots_turns()
    panels = dots_pictures.latency_panels(turns)
    assert list(panels) == ["create+delete, 1 session, saturated",
                            "create+delete, 4 sessions, saturated",
                            "create+delete, 4 sessions, paced at 40 cycles/s",
                            "heartbeats, 1 session", "heartbeats, 16 sessions"]
    assert len(panels["create+delete, 4 sessions, saturated"]) == 6  # 3 daemons x PUT, DELETE
    assert list(panels["heartbeats, 16 sessions"]) == ["this checkout: heartbeat",
                                                       "baseline HEAD: heartbeat"]
    rates = dots_pictures.rates(turns)
    # The tmpfs daemon ran no heartbeat phase: no bar there rather than a rate of 0.
    assert len(rates["this checkout"]) == 5 and len(rates["this checkout, state on tmpfs"]) == 3
    line = dots_pictures.draw(tmp_path, turns)
    assert line == ("![DOTS latency per phase](dots-latency.png)"
                    " ![DOTS rates per phase](dots-rates.png)")
    assert_png(tmp_path / dots_pictures.LATENCY_PNG)
    assert_png(tmp_path / dots_pictures.RATES_PNG)


def test_a_panel_without_answers_is_drawn_empty_without_a_warning(tmp_path: Path) -> None:
    # filterwarnings = error: matplotlib's "No artists with labels" would fail this test.
    plots.latency_panels(tmp_path / "p.png", "t", {"answered": {"a": [1.0, 2.0]},
                                                    "none answered": {"a": [], "b": [0.0]},
                                                    "odd one out": {"c": [3.0]}})
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC


def measure(scale: float, seed: int) -> Measure:
    return Measure(ok=500, elapsed=5.0, latencies=latencies(500, scale, seed),
                   codes=Counter({"2.05": 500}))


def scale_results() -> dict[str, dict[str, Measure]]:
    return {label: {kind: measure(scale, seed + (kind == "PUT"))
                    for kind in ("GET", "PUT")}
            for label, scale, seed in (("this checkout", 3.0, 1), ("direct", 1.0, 3),
                                       ("baseline HEAD", 4.0, 5))}


SCALE_ARGS = argparse.Namespace(sessions=10_000, rate=200.0, seconds=5.0)


def test_gateway_scale_section_links_its_latency_panels(tmp_path: Path) -> None:
    from tests.bench.bench_gateway_scale import LATENCY_PNG, latency_panels, write_results

    results = scale_results()
    panels = latency_panels(results)
    assert list(panels) == ["GET mitigate", "PUT refresh"]
    assert [label.split(",")[0] for label in panels["GET mitigate"]] == [
        "this checkout", "direct", "baseline HEAD"]
    get = results["this checkout"]["GET"]
    over99 = get.p(99) - results["direct"]["GET"].p(99)
    assert "this checkout, overhead p50 " in next(iter(panels["GET mitigate"]))
    assert f"p99 {over99:.2f} ms" in next(iter(panels["GET mitigate"]))
    path = tmp_path / "RESULTS.md"
    write_results(path, results, SCALE_ARGS, "a quiet run")
    section = path.read_text().split("## Gateway relay at scale", 1)[1]
    assert f"![relay latency at scale]({LATENCY_PNG})" in section
    assert "| direct | GET |" in section  # the figures are there too
    assert_png(tmp_path / LATENCY_PNG)


def test_a_picture_that_fails_leaves_the_section_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bench.bench_gateway_scale import LATENCY_PNG, write_results

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "latency_panels", broken)
    path = tmp_path / "RESULTS.md"
    write_results(path, scale_results(), SCALE_ARGS, "a quiet run")
    section = path.read_text()
    assert "| direct | GET |" in section and "overhead p99 <= 1 ms" in section
    assert f"({LATENCY_PNG} not drawn: RuntimeError: no fonts today)" in section
    assert not (tmp_path / LATENCY_PNG).exists()


def test_the_transport_pictures_still_draw_with_the_shared_helpers(tmp_path: Path) -> None:
    # bench_transport.py's rates and latencies go through the same helpers (changed here):
    # a server without a measure gets no bar there, not a bar of 0.
    from tests.bench.bench_transport import LATENCY_PNG, RATES_PNG, draw

    table = {"this checkout": {"handshakes/s (full)": "557 (1.7 ms CPU)",
                               "requests/s (16 sessions)": "9000 (61 us CPU)"},
             "libcoap": {"handshakes/s (full)": "500 (1.8 ms CPU)"}}
    draw(tmp_path, table, {"this checkout": latencies(2000, 0.4, 1),
                           "libcoap": latencies(5000, 0.3, 2)})
    assert_png(tmp_path / RATES_PNG)
    assert_png(tmp_path / LATENCY_PNG)
