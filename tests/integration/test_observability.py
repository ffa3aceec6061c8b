"""Structured logs and metrics of a real ``dots-gateway server`` process.

Logs: in both formats every line parses (JSON, logfmt), the key events carry their fields,
and a client presenting a certificate from a CA the server does not trust produces exactly
one line (``handshake.failed``) per attempt: before, the DTLS side logged it twice (the
session's "secure session failed" and the endpoint's warning).

Metrics: process metrics, the latency histograms (request handling, handshake duration)
and their buckets, scraped from the live endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.dots.telemetry import body_from_json
from gateway.eventlog import EVENTS
from gateway.transport.dtls_client import HandshakeError, connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from gateway.transport.tls_stream import connect_tls
from tests.integration.test_operations import (
    CHANGED,
    CREATED,
    Daemon,
    call,
    dev_daemon,
    heartbeat,
    http_get,
    mitigate,
)
from tests.support.daemon import open_session
from tests.unit.ops.test_eventlog import parse_logfmt

BAD_REQUEST = 0x80


@pytest.fixture(params=["json", "kv"])
def logging_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    with dev_daemon(tmp_path, f'[logging]\nformat = "{request.param}"\n') as running:
        running.log_format = request.param  # type: ignore[attr-defined]
        yield running


def parsed_lines(daemon: Daemon) -> list[dict[str, Any]]:
    fmt = daemon.log_format  # type: ignore[attr-defined]
    out = []
    for line in daemon.stderr.read_text().splitlines():
        out.append(json.loads(line) if fmt == "json" else parse_logfmt(line))
    return out


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == name]


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def wrong_certificate(daemon: Daemon, cert: Path, key: Path, kind: Kind) -> None:
    """A handshake with a client certificate the server refuses (the client trusts the
    server)."""
    credentials = ClientCredentials(cert, key, daemon.pki / "ca.pem")
    connect = connect_dtls if kind is Kind.DTLS else connect_tls
    with pytest.raises((HandshakeError, ConnectionError, OSError)):
        conn = await connect("127.0.0.1", daemon.port, ClientContext(kind, credentials),
                             lambda _data: None, server_name="localhost", timeout=10)
        # TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
        await asyncio.sleep(1)
        conn.send(b"\x00")
        await asyncio.sleep(1)
        conn.send(b"\x00")


async def test_events_are_fields_and_a_failed_handshake_is_one_line(
        logging_daemon: Daemon, tmp_path: Path) -> None:
    daemon = logging_daemon
    other = tmp_path / "other-pki"
    init_dev_pki(other)

    conn, replies = await open_session(daemon.port, daemon.pki)
    try:
        assert await heartbeat(conn, replies, 1) == CHANGED
        assert await mitigate(conn, replies, daemon.cuid, 2) == CREATED
        bad = await call(conn, replies, 3, (".well-known", "dots", "mitigate",
                                            f"cuid={daemon.cuid}", "mid=3"), b"\xff\x00")
        assert bad == BAD_REQUEST
    finally:
        conn.close()

    # DTLS: a certificate from a CA the server does not know. TLS: one from the right CA
    # whose extended key usage is serverAuth only (refused by our verify callback, whose
    # reason used to be a line of its own).
    await wrong_certificate(daemon, other / "client.pem", other / "client.key", Kind.DTLS)
    await wrong_certificate(daemon, daemon.pki / "server.pem", daemon.pki / "server.key",
                            Kind.TLS)
    await until(lambda: len(events(parsed_lines(daemon), "handshake.failed")) >= 2, 15,
                "both failed handshakes logged")
    await until(lambda: events(parsed_lines(daemon), "session.closed"), 15, "session closed")
    await asyncio.sleep(0.5)  # a second line for the same failure would come now
    assert daemon.stop() == 0

    lines = parsed_lines(daemon)  # every line parsed in its format, or the test fails here
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line), line
        if "event" in line:
            assert line["event"] in EVENTS, line
    failed = events(lines, "handshake.failed")
    assert sorted(f["transport"] for f in failed) == ["dtls", "tls"], failed
    for f in failed:
        assert f["peer"].startswith("127.0.0.1:") and f["local"].endswith(f":{daemon.port}")
        assert f["level"] == "warning" and f["reason"]
    by_transport = {f["transport"]: f["reason"] for f in failed}
    assert "(unable to get local issuer certificate)" in by_transport["dtls"], by_transport
    assert "(unsuitable certificate purpose)" in by_transport["tls"], by_transport
    # Nothing else about those handshakes: one event, one line.
    others = [line for line in lines if line.get("event") != "handshake.failed"
              and ("unknown ca" in json.dumps(line) or "key usage" in json.dumps(line)
                   or "handshake" in line["msg"] or "certificate" in line["msg"])]
    assert others == [], others

    established = events(lines, "session.established")
    assert len(established) == 1, established
    session = established[0]
    assert session["cuid"] == daemon.cuid and session["transport"] == "dtls"
    assert session["client"] == "dots-dev-client" and session["peer"].startswith("127.0.0.1:")
    installed = events(lines, "mitigation.installed")
    assert [(i["cuid"], str(i["mid"])) for i in installed] == [(daemon.cuid, "2")]
    assert any(c["action"] == "apply" and str(c["mid"]) == "2"
               for c in events(lines, "mitigator.command"))
    answered = events(lines, "request.answered")
    assert len(answered) == 1, answered
    refusal = answered[0]
    assert refusal["code"] == "4.00" and str(refusal["mid"]) == "3"
    assert refusal["cuid"] == daemon.cuid and refusal["method"] == "PUT"
    assert refusal["path"] == "/.well-known/dots/mitigate" and refusal["diagnostic"]
    closed = events(lines, "session.closed")
    assert closed and closed[0]["cuid"] == daemon.cuid
    assert events(lines, "daemon.serving") and events(lines, "daemon.stopping")
    if daemon.log_format == "json":  # type: ignore[attr-defined]
        assert isinstance(installed[0]["mid"], int) and isinstance(refusal["mid"], str)


# --- metrics -----------------------------------------------------------------------------------


@pytest.fixture
def metrics_daemon(tmp_path: Path) -> Iterator[Daemon]:
    with dev_daemon(tmp_path) as running:
        yield running


def families(body: str) -> dict[str, str]:
    """``{name: type}`` from the # TYPE lines."""
    return {m[1]: m[2] for m in re.finditer(r"^# TYPE (\S+) (\S+)$", body, re.M)}


def samples(body: str) -> dict[str, float]:
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_process_metrics_and_latency_histograms(metrics_daemon: Daemon) -> None:
    daemon = metrics_daemon
    conn, replies = await open_session(daemon.port, daemon.pki)
    try:
        assert await heartbeat(conn, replies, 1) == CHANGED
        assert await mitigate(conn, replies, daemon.cuid, 2) == CREATED
        # RFC 9244: a pipe capacity (2.01) and pre-mitigation telemetry (2.04).
        pipe = body_from_json({"ietf-dots-telemetry:telemetry-setup": {"telemetry": [
            {"total-pipe-capacity": [{"link-id": "l1", "capacity": "10",
                                      "unit": "gigabit-ps"}]}]}})
        assert await call(conn, replies, 3, (".well-known", "dots", "tm-setup",
                                             f"cuid={daemon.cuid}", "tsid=1"), pipe) == CREATED
        tm = body_from_json({"ietf-dots-telemetry:telemetry": {"pre-or-ongoing-mitigation": [
            {"target": {"target-prefix": ["2001:db8:6401::/64"]},
             "total-attack-traffic": [{"unit": "megabit-ps", "peak-g": "900"}]}]}})
        assert await call(conn, replies, 4, (".well-known", "dots", "tm",
                                             f"cuid={daemon.cuid}", "tmid=1"), tm) == CHANGED
    finally:
        conn.close()
    status, body = await http_get(daemon.metrics_port)
    assert status == 200
    kinds = families(body)
    values = samples(body)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds",
                 "process_virtual_memory_bytes"):
        assert name in kinds, name
    assert kinds["process_cpu_seconds_total"] == "counter"
    assert values["process_cpu_seconds_total"] > 0
    assert 10 * 2**20 < values["process_resident_memory_bytes"] < 4 * 2**30
    assert 5 < values["process_open_fds"] <= values["process_max_fds"]
    assert abs(values["process_start_time_seconds"]
               - values["dots_gateway_start_time_seconds"]) < 60

    for name in ("dots_gateway_request_duration_seconds",
                 "dots_gateway_handshake_duration_seconds",
                 "dots_gateway_relay_upstream_duration_seconds"):
        assert kinds[name] == "histogram", name
    # One hb and one mitigate answered here, each in its own series; buckets are cumulative
    # and end with +Inf = _count.
    for resource in ("hb", "mitigate", "tm-setup", "tm"):
        label = f'resource="{resource}"'
        count = values[f"dots_gateway_request_duration_seconds_count{{{label}}}"]
        assert count == 1
        assert values[f'dots_gateway_request_duration_seconds_bucket{{{label},le="+Inf"}}'] \
            == count
        assert 0 < values[f"dots_gateway_request_duration_seconds_sum{{{label}}}"] < 5
    # The telemetry held, by kind: every kind present, 0 when none.
    assert kinds["dots_gateway_telemetry_entries"] == "gauge"
    assert {kind: values[f'dots_gateway_telemetry_entries{{kind="{kind}"}}']
            for kind in ("telemetry-config", "pipe", "baseline", "pre-mitigation")} == {
        "telemetry-config": 0, "pipe": 1, "baseline": 0, "pre-mitigation": 1}
    dtls = 'side="downstream",transport="dtls"'
    assert values[f"dots_gateway_handshake_duration_seconds_count{{{dtls}}}"] == 1
    buckets = [(float(m[1]) if m[1] != "+Inf" else float("inf"), v)
               for key, v in values.items()
               if (m := re.match(r'dots_gateway_handshake_duration_seconds_bucket\{'
                                 + re.escape(dtls) + r',le="([^"]+)"\}', key))]
    assert len(buckets) >= 10
    counts = [v for _le, v in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 1


# --- the Grafana dashboard ---------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dots-gateway.json"
_METRIC = re.compile(r"\b((?:dots_gateway|process)_[a-z_]+)\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())  # valid JSON, or the test fails here
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return exprs


class _NoAnycast:
    def snapshot(self) -> dict[str, object]:
        return {"route": "withdrawn", "state": "await-rise"}


async def test_every_metric_of_the_dashboard_is_one_the_daemon_exposes(
        tmp_path: Path) -> None:
    """The families a gateway-mode daemon registers (a superset of terminal mode's: the
    daemon's own, the relay's) plus the anycast ones (registered with ``[anycast]``, which
    needs root and netlink: declared here the way the daemon does) and the garbage-collection
    policy's (``serve()`` registers them, not ``start_server``: declared here too)."""
    from gateway.daemon import _anycast_metrics
    from gateway.ops.gc_runtime import GcRuntime
    from tests.integration.test_client_role import free_port
    from tests.integration.test_gateway import Pkis, gateway, gateway_config

    down, up = tmp_path / "pki-down", tmp_path / "pki-up"
    init_dev_pki(down)
    init_dev_pki(up)
    # The upstream need not answer: the families exist from the start.
    config = gateway_config(tmp_path, Pkis(down, up), free_port(), [f"127.0.0.1:{free_port()}"])
    async with gateway(config) as running:
        _anycast_metrics(running, _NoAnycast())
        GcRuntime(freeze=True, audit_interval=None).register(running.metrics, running.control)
        registry = running.metrics
        exposed = set(registry.names())
        text = registry.render()
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)  # Grafana keys panels by id
    for p in panels:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"][
            "w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all('instance=~"$instance"' in t["expr"]
                                        for t in p["targets"]), p["title"]
    histograms = {name for name in exposed if f"# TYPE {name} histogram\n" in text}
    exprs = dashboard_expressions()
    assert len(exprs) > 20
    used = set()
    for expr in exprs:
        for name in _METRIC.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in histograms else name)
    assert used - exposed == set()
    # And the dashboard shows the families this issue added.
    assert {"dots_gateway_request_duration_seconds", "dots_gateway_handshake_duration_seconds",
            "dots_gateway_relay_upstream_duration_seconds", "process_cpu_seconds_total",
            "process_resident_memory_bytes", "process_open_fds",
            "dots_gateway_mitigations_active"} <= used
    assert {"dots_gateway_gc_pause_seconds", "dots_gateway_gc_frozen_objects"} <= used


async def test_gateway_events_carry_the_upstream_and_the_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Gateway mode, in process with a real upstream server: the upstream session, a relayed
    mitigation and a refused one are events with their fields."""
    from gateway.client.role import make_scope
    from gateway.dots.codes import Code
    from tests.integration.test_client_role import free_port
    from tests.integration.test_gateway import (
        Pkis,
        client_of,
        gateway,
        gateway_config,
        upstream_server,
    )

    caplog.set_level(logging.INFO)
    down, up = tmp_path / "pki-down", tmp_path / "pki-up"
    init_dev_pki(down)
    init_dev_pki(up)
    pkis = Pkis(down, up)
    with upstream_server(tmp_path / "up", pkis) as upstream:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [upstream.spec])) as running:
            relay = running.role.relay  # type: ignore[attr-defined]
            await until(lambda: relay.upstream.connected, 15, "the upstream session")
            async with client_of(pkis, port, tmp_path / "client") as client:
                created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                           lifetime=600))
                assert created.code is Code.CREATED
                refused = await client.mitigate(make_scope(target_prefix=["10.0.0.0/8"],
                                                           lifetime=600))
                assert refused.code is Code.UNAUTHORIZED

    def records(name: str) -> list[Any]:
        return [r for r in caplog.records if getattr(r, "event", None) == name]

    connected = records("upstream.connected")
    assert connected and connected[0].upstream.endswith(f":{upstream.port}")
    assert connected[0].cuid == pkis.gateway_cuid
    (relayed,) = records("mitigation.relayed")
    assert (relayed.cuid, relayed.mid, relayed.method, relayed.code, relayed.upstream) == (
        pkis.client_cuid, str(created.mid), "PUT", "2.01", "up0")
    (answered,) = records("request.answered")
    assert (answered.cuid, answered.code, answered.method) == (pkis.client_cuid, "4.01", "PUT")
    assert answered.mid == str(refused.mid) and answered.diagnostic
    assert str(answered.peer).startswith("127.0.0.1:")
