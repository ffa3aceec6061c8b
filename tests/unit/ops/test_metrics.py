"""The metrics registry and the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest

from gateway.ops.metrics import (
    Histogram,
    Registry,
    daemon_metrics,
    escape_help,
    escape_label,
    format_value,
)

# One sample line of the 0.0.4 text format: name, optional {label="value",...}, value.
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    rf"(\{{[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE}(,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*\}})?"
    r" (NaN|[+-]Inf|-?[0-9.e+-]+)\Z")


def check_exposition(text: str) -> None:
    """Every line is a HELP, a TYPE (once per name, before its samples) or a sample."""
    assert text.endswith("\n")
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert "\n" not in line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "untyped") and name not in typed
            typed.add(name)
            if kind == "histogram":
                typed.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            assert _SAMPLE.match(line), line
            assert line.split("{")[0].split(" ")[0] in typed


def test_counter_and_gauge_render_with_help_type_and_labels() -> None:
    r = Registry()
    requests = r.counter("x_requests_total", "Requests by code.", ("code",))
    requests.inc("2.01")
    requests.inc("2.01")
    requests.inc("4.00", by=3)
    up = r.gauge("x_up", "Up.")
    up.set(1)
    text = r.render()
    assert text == (
        "# HELP x_requests_total Requests by code.\n"
        "# TYPE x_requests_total counter\n"
        'x_requests_total{code="2.01"} 2\n'
        'x_requests_total{code="4.00"} 3\n'
        "# HELP x_up Up.\n"
        "# TYPE x_up gauge\n"
        "x_up 1\n")
    check_exposition(text)


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    g = r.gauge("x_health", 'Help with a backslash \\ and\na newline "quoted".', ("upstream",))
    g.set(0, 'srv "a"\\b\nc')
    text = r.render()
    assert '# HELP x_health Help with a backslash \\\\ and\\na newline "quoted".\n' in text
    assert 'x_health{upstream="srv \\"a\\"\\\\b\\nc"} 0\n' in text
    check_exposition(text)
    assert escape_label('a"b') == 'a\\"b'
    assert escape_help("a\\b\nc") == "a\\\\b\\nc"


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (3.0, "3"), (-2, "-2"), (0.25, "0.25"), (1795642619.51, "1795642619.51"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (2.0**60, "1.152921504606847e+18"),
])
def test_values(value: float, text: str) -> None:
    assert format_value(value) == text


def test_gauge_operations() -> None:
    r = Registry()
    g = r.gauge("x_g", "G.", ("a",))
    g.set(5, "one")
    g.inc("one")
    g.dec("one", by=2)
    g.inc("two")
    g.remove("two")
    g.remove("absent")
    assert g.samples() == {("one",): 4}


def test_sources_add_to_stored_values_and_a_failing_source_is_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Registry()
    hb = r.counter("x_heartbeats_total", "Heartbeats.", ("side", "event"))
    hb.add_source(lambda: {("downstream", "sent"): 4})
    hb.inc("upstream", "sent")
    hb.inc("downstream", "sent")  # the same series from both: they add up

    def broken() -> dict[tuple[str, ...], float]:
        raise RuntimeError("boom")

    hb.add_source(broken)
    with caplog.at_level(logging.ERROR):
        text = r.render()
    assert 'x_heartbeats_total{side="downstream",event="sent"} 5\n' in text
    assert 'x_heartbeats_total{side="upstream",event="sent"} 1\n' in text
    assert "a source failed" in caplog.text
    check_exposition(text)


def test_source_label_values_may_be_any_type() -> None:
    r = Registry()
    g = r.gauge("x_codes", "C.", ("code",))
    g.add_source(lambda: {(404,): 1})  # type: ignore[dict-item]
    assert 'x_codes{code="404"} 1\n' in r.render()


def test_a_sample_with_the_wrong_number_of_labels_is_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Registry()
    c = r.counter("x_total", "X.", ("code",))
    c.inc()  # a bug in the caller: no label value
    c.inc("2.04")
    with caplog.at_level(logging.ERROR):
        text = r.render()
        r.render()
    assert text.endswith('x_total{code="2.04"} 1\n')
    assert caplog.text.count("does not match labels") == 1  # logged once, not per scrape
    check_exposition(text)


def test_registration_is_idempotent_for_the_same_shape_and_refused_otherwise() -> None:
    r = Registry()
    first = r.counter("x_total", "X.", ("code",))
    assert r.counter("x_total", "X again.", ("code",)) is first
    assert "x_total" in r and r.get("x_total") is first
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("x_total", "X.", ("code",))
    with pytest.raises(ValueError, match="already registered"):
        r.counter("x_total", "X.", ("reason",))


@pytest.mark.parametrize(("name", "labels"), [
    ("1x", ()), ("x-y", ()), ("x", ("bad-label",)), ("x", ("__reserved",)), ("x", ("a", "a")),
])
def test_invalid_names_are_refused(name: str, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Registry().gauge(name, "help", labels)


def test_daemon_metrics_declares_every_family_once() -> None:
    r = Registry()
    m = daemon_metrics(r)
    again = daemon_metrics(r)
    assert again.relayed_requests is m.relayed_requests
    m.relayed_requests.inc("2.01")
    m.upstream_health.set(1, "coaps://192.0.2.1:4646")
    m.sessions.add_source(lambda: {("downstream", "dtls"): 2})
    text = r.render()
    check_exposition(text)
    for name in ("dots_gateway_sessions", "dots_gateway_handshakes_total",
                 "dots_gateway_heartbeats_total", "dots_gateway_requests_total",
                 "dots_gateway_relayed_requests_total", "dots_gateway_upstream_health",
                 "dots_gateway_redirects_total", "dots_gateway_mitigations",
                 "dots_gateway_mitigations_active"):
        assert f"# TYPE {name} " in text
    assert 'dots_gateway_relayed_requests_total{code="2.01"} 1\n' in text
    assert 'dots_gateway_upstream_health{upstream="coaps://192.0.2.1:4646"} 1\n' in text
    assert 'dots_gateway_sessions{side="downstream",transport="dtls"} 2\n' in text


def test_the_readme_lists_every_metric_family_the_code_registers() -> None:
    root = Path(__file__).resolve().parents[3]
    registered = set()
    for path in [*root.joinpath("gateway").rglob("*.py"), *root.joinpath("anycast").rglob("*.py")]:
        registered.update(re.findall(r'"(dots_gateway_[a-z_]+)"', path.read_text()))
    listed = set(re.findall(r"^  \| `(dots_gateway_[a-z_]+)` \|", (root / "README.md").read_text(),
                            re.M))
    assert len(registered) > 20
    assert sorted(registered - listed) == []


def test_a_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    r = Registry()
    h = r.histogram("x_seconds", "Durations.", ("op",), buckets=(0.1, 1.0, 5.0))
    for value in (0.05, 0.1, 0.7, 3.0, 60.0):
        h.observe(value, "put")
    h.observe(0.2, "get")
    text = r.render()
    check_exposition(text)
    assert text == (
        "# HELP x_seconds Durations.\n"
        "# TYPE x_seconds histogram\n"
        'x_seconds_bucket{op="get",le="0.1"} 0\n'
        'x_seconds_bucket{op="get",le="1"} 1\n'
        'x_seconds_bucket{op="get",le="5"} 1\n'
        'x_seconds_bucket{op="get",le="+Inf"} 1\n'
        'x_seconds_sum{op="get"} 0.2\n'
        'x_seconds_count{op="get"} 1\n'
        'x_seconds_bucket{op="put",le="0.1"} 2\n'  # le: 0.1 itself counts in le="0.1"
        'x_seconds_bucket{op="put",le="1"} 3\n'
        'x_seconds_bucket{op="put",le="5"} 4\n'
        'x_seconds_bucket{op="put",le="+Inf"} 5\n'
        'x_seconds_sum{op="put"} 63.85\n'
        'x_seconds_count{op="put"} 5\n')
    unlabelled = r.histogram("y_seconds", "Y.", buckets=(1.0,))
    unlabelled.observe(2.0)
    assert 'y_seconds_bucket{le="+Inf"} 1\ny_seconds_sum 2\ny_seconds_count 1\n' in r.render()


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf)])
def test_histogram_buckets_must_be_finite_and_increasing(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Histogram("x_seconds", "X.", (), buckets)
    with pytest.raises(ValueError):
        Histogram("x_seconds", "X.", ("le",), (1.0,))


def test_process_metrics_from_a_proc_tree(tmp_path: Path) -> None:
    import os

    from gateway.ops.process_metrics import register_process_metrics

    proc = tmp_path / "proc"
    (proc / "self" / "fd").mkdir(parents=True)
    for n in range(7):
        (proc / "self" / "fd" / str(n)).touch()
    (proc / "self" / "statm").write_text("2500 1000 300 10 0 800 0\n")
    # A command name with spaces and parentheses must not shift the fields.
    (proc / "self" / "stat").write_text(
        "4242 (dots gw (x)) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12)
        + f" {1234 * os.sysconf('SC_CLK_TCK')} 99 99\n")
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    r = Registry()
    register_process_metrics(r, proc)
    text = r.render()
    check_exposition(text)
    page = os.sysconf("SC_PAGE_SIZE")
    assert f"process_resident_memory_bytes {1000 * page}\n" in text
    assert f"process_virtual_memory_bytes {2500 * page}\n" in text
    assert "process_open_fds 7\n" in text
    assert "process_start_time_seconds 1700001234\n" in text
    assert "# TYPE process_cpu_seconds_total counter\n" in text

    empty = Registry()
    register_process_metrics(empty, tmp_path / "no-proc")  # not Linux: no samples, no error
    text = empty.render()
    check_exposition(text)
    assert "\nprocess_open_fds " not in text and "\nprocess_cpu_seconds_total " in text
