"""The endpoints' rate-limited warnings: one line per reason per interval, and the next line
says how many were left out (a flood stays visible without flooding the log)."""

from __future__ import annotations

import logging

import pytest

from gateway.transport.endpoint import LOG_INTERVAL, EndpointBase
from gateway.transport.tls_context import Kind


class Endpoint(EndpointBase):
    KIND = Kind.DTLS

    def __init__(self) -> None:  # no context, no workers: only the log state
        self.now = 100.0
        self.clock = lambda: self.now
        self._log_suppressed_until = {}
        self._log_suppressed = {}


def test_rate_limited_events_count_what_they_left_out(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = Endpoint()
    caplog.set_level(logging.WARNING, "gateway.transport.endpoint")
    for _ in range(5):
        endpoint._rate_limited_event("handshake-failed", "handshake.failed", "handshake failed",
                                     peer="192.0.2.1:1", reason="bad")
    endpoint._rate_limited_event("other", "handshake.refused", "handshake refused",
                                 peer="192.0.2.2:1", reason="rate")
    endpoint.now += LOG_INTERVAL + 0.1
    endpoint._rate_limited_event("handshake-failed", "handshake.failed", "handshake failed",
                                 peer="192.0.2.3:1", reason="bad")
    records = [(r.event, r.peer, getattr(r, "suppressed", None))  # type: ignore[attr-defined]
               for r in caplog.records]
    assert records == [("handshake.failed", "192.0.2.1:1", None),
                       ("handshake.refused", "192.0.2.2:1", None),
                       ("handshake.failed", "192.0.2.3:1", 4)]
    assert all(r.transport == "dtls" for r in caplog.records)  # type: ignore[attr-defined]
