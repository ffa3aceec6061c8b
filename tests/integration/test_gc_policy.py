"""The garbage-collection policy in a real ``dots-gateway server``: collections measured and
survivors frozen while sessions run, an audit on the control socket reported as an event and
in the metrics, ``[gc] freeze = false`` leaving the collector alone. No timing assertions:
only that the numbers move."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.ops.control import request
from tests.integration.test_daemon import free_port, heartbeat
from tests.support.daemon import open_session, serving


def tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, gc_section: str) -> tuple[Path, int, int, Path]:
    tls = directory / "tls"
    init_dev_pki(tls)
    port, metrics = free_port(), tcp_port()
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{tls}/ca.pem"\ncert = "{tls}/server.pem"\nkey = "{tls}/server.key"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        f'[logging]\nformat = "json"\n{gc_section}')
    return config, port, metrics, tls


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dots_gateway_gc_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def some_traffic(port: int, tls: Path, sessions: int = 4, beats: int = 5) -> None:
    for _ in range(sessions):
        conn, replies = await open_session(port, tls)
        try:
            for mid in range(1, beats + 1):
                assert await heartbeat(conn, replies, mid) == 0x44  # 2.04
        finally:
            conn.close()


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{name}"' in line:
            found.append(json.loads(line))
    return found


async def test_collections_measured_survivors_frozen_and_an_audit_reported(
        tmp_path: Path) -> None:
    config, port, metrics, tls = write_config(tmp_path, "[gc]\naudit_interval = 3600\n")
    log = tmp_path / "daemon.log"
    with serving("server", config, log):
        await some_traffic(port, tls)
        before = scrape(metrics)
        # Start-up's own full collection was measured, and its survivors frozen.
        assert before['dots_gateway_gc_pause_seconds_count{generation="2"}'] >= 1
        assert before["dots_gateway_gc_frozen_objects"] > 10_000
        assert before["dots_gateway_gc_audits_total"] == 0
        assert "dots_gateway_gc_last_audit_duration_seconds" not in before
        socket_path = tmp_path / "state" / "control.sock"
        answer = await asyncio.to_thread(request, socket_path, "gc-audit", timeout=30)
        assert answer["ok"], answer
        result = answer["result"]
        assert result["trigger"] == "operator" and result["examined"] > 10_000
        status = (await asyncio.to_thread(request, socket_path, "status",
                                          sections=["gc"]))["result"]["gc"]
        assert status["freeze"] is True and status["audits"] == 1
        assert 3500 < status["next_audit_in"] <= 3600  # moved by the operator's audit
        assert status["frozen"] > 10_000  # frozen again after the audit
        after = scrape(metrics)
        assert after["dots_gateway_gc_audits_total"] == 1
        assert after["dots_gateway_gc_audit_collected_objects_total"] == result["collected"]
        assert after["dots_gateway_gc_last_audit_duration_seconds"] == pytest.approx(
            result["seconds"], abs=1e-5)
        assert (after['dots_gateway_gc_pause_seconds_count{generation="2"}']
                >= before['dots_gateway_gc_pause_seconds_count{generation="2"}'] + 2)
    (audit,) = events(log, "gc.audit")
    assert audit["trigger"] == "operator" and audit["collected"] == result["collected"]


async def test_freeze_off_leaves_the_collector_alone_but_measures_it(tmp_path: Path) -> None:
    config, port, metrics, tls = write_config(tmp_path, "[gc]\nfreeze = false\n")
    with serving("server", config, tmp_path / "daemon.log"):
        await some_traffic(port, tls, sessions=2)
        samples = scrape(metrics)
        assert samples["dots_gateway_gc_frozen_objects"] == 0
        assert samples['dots_gateway_gc_pause_seconds_count{generation="0"}'] >= 1
        status = (await asyncio.to_thread(request, tmp_path / "state" / "control.sock",
                                          "status", sections=["gc"]))["result"]["gc"]
        assert status["freeze"] is False and status["next_audit_in"] is None


def test_a_bad_gc_value_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config, _, _, _ = write_config(tmp_path, "[gc]\naudit_interval = 5\n")
    log = tmp_path / "daemon.log"
    with pytest.raises(RuntimeError), serving("server", config, log, timeout=20):
        pass
    text = log.read_text()
    assert re.search(r"gc\.audit_interval: must be 0 \(no periodic audit\) or at least 60", text)
    assert "Traceback" not in text
