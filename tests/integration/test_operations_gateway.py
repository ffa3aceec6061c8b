"""Operations in gateway mode: the gateway's own upstream session shows in ``status`` and in
``dots_gateway_sessions{side="upstream"}``, its upstream servers in the ``upstreams``
section."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from tests.integration.test_client_role import free_port
from tests.integration.test_gateway import Pkis, gateway, gateway_config, upstream_server


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    down, up = tmp_path_factory.mktemp("pki-down"), tmp_path_factory.mktemp("pki-up")
    init_dev_pki(down)
    init_dev_pki(up)
    return Pkis(down, up)


def status_of(running: object) -> dict[str, object]:
    sections = running.control.status_sections  # type: ignore[attr-defined]
    return {name: section() for name, section in sections.items()}


async def test_upstream_session_in_status_and_metrics(tmp_path: Path, pkis: Pkis) -> None:
    with upstream_server(tmp_path / "up", pkis) as up:
        config = gateway_config(tmp_path, pkis, free_port(), [up.spec])
        async with gateway(config) as running:
            upstream = running.role.relay.upstream  # type: ignore[attr-defined]
            for _ in range(100):
                if upstream.connected:
                    break
                await asyncio.sleep(0.05)
            assert upstream.connected
            status = status_of(running)
            assert status["daemon"]["mode"] == "gateway"  # type: ignore[index]
            rows = status["sessions"]["list"]  # type: ignore[index]
            (row,) = [r for r in rows if r["side"] == "upstream"]
            assert row["peer"] == upstream.name and row["transport"] in ("dtls", "tls")
            upstreams = status["upstreams"]
            assert upstreams["connected"] is True  # type: ignore[index]
            assert upstreams["list"] == [  # type: ignore[index]
                {"host": "127.0.0.1", "port": up.port, "transports": ["udp"]}]  # config default
            text = running.metrics.render()
            transport = row["transport"]
            assert f'dots_gateway_sessions{{side="upstream",transport="{transport}"}} 1\n' in text

