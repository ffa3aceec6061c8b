"""The storm bench's reading of the surviving edge's counters from its metrics text."""

from __future__ import annotations

from tests.bench.bench_storm import Storm, parse_counters

METRICS = """\
# HELP dots_gateway_datagrams_dropped_total Datagrams dropped.
# TYPE dots_gateway_datagrams_dropped_total counter
dots_gateway_datagrams_dropped_total{reason="garbage"} 3
dots_gateway_datagrams_dropped_total{reason="resend"} 1500
dots_gateway_handshakes_total{side="downstream",transport="dtls",result="completed"} 1000
dots_gateway_handshakes_total{side="downstream",transport="tls",result="completed"} 7
dots_gateway_handshake_deadlines_extended_total{transport="dtls"} 20
"""


def test_the_counters_named_are_read_and_others_ignored() -> None:
    assert parse_counters(METRICS) == {
        'dots_gateway_datagrams_dropped_total{reason="resend"}': 1500.0,
        'dots_gateway_handshakes_total{side="downstream",transport="dtls",result="completed"}':
            1000.0,
        'dots_gateway_handshake_deadlines_extended_total{transport="dtls"}': 20.0,
    }


def test_the_section_gives_each_counter_per_session_back() -> None:
    storm = Storm(1000, 1000, 5.0, [{}], 0.4, 0.0, [{"ok": [1.0] * 1000}], 2.0,
                  parse_counters(METRICS))
    (line,) = [line for line in storm.lines() if "counters" in line]
    assert "handshakes completed 1,000 (1.00 per session back)" in line
    assert "waited for the workers (dropped) 1,500 (1.50 per session back)" in line
    assert "handshakes timed out 0 (0.00 per session back)" in line
    unread = Storm(1000, 1000, 5.0, [{}], 0.4, 0.0, [{"ok": [1.0]}])
    assert any("not read" in line for line in unread.lines())
