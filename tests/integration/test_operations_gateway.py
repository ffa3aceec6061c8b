"""Operations in gateway mode: the gateway's own upstream session shows in ``status`` and in
``dots_gateway_sessions{side="upstream"}``, its upstream servers in the ``upstreams``
section; relayed requests and mitigations in the counters and the ``mitigations`` section."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
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
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [up.spec])
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
                {"name": "up0", "host": "127.0.0.1", "port": up.port,
                 "transports": ["udp"], "in_use": True, "last_error": None,
                 "last_error_age": None, "next_attempt_at": None}]  # config default: udp
            text = running.metrics.render()
            transport = row["transport"]
            assert f'dots_gateway_sessions{{side="upstream",transport="{transport}"}} 1\n' in text
            # Labelled by the configured [[upstream]] name (it was the address before).
            assert 'dots_gateway_upstream_health{upstream="up0"} 1\n' in text

            # A relayed request shows in the counters and in the status of the gateway.
            async with client_of(pkis, port, tmp_path / "client") as client:
                created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                           lifetime=600))
                assert created.code is Code.CREATED
                # Installed, and the upstream has said nothing of its status yet.
                assert ('dots_gateway_mitigations{status="unknown"} 1\n'
                        in running.metrics.render())
                # A GET passing through the gateway carries the upstream's status: the gauge
                # counts the relayed request under it (it read nothing in gateway mode).
                listed = await client.get(created.mid)
                assert listed.code is Code.CONTENT
                (scope,) = listed.scopes
                assert scope.status is not None
                reported = scope.status.label
                # So does the answer to an Observe registration relayed upstream (the
                # gateway forgets the status first, to see this path fill it again).
                table = running.role.relay.table  # type: ignore[attr-defined]
                table.get(client.cuid, created.mid).status = None
                observation = await client.observe(created.mid)
                assert observation.first.code is Code.CONTENT
                assert (f'dots_gateway_mitigations{{status="{reported}"}} 1\n'
                        in running.metrics.render())
                await observation.cancel()
            status = status_of(running)
            mitigations = status["mitigations"]
            assert mitigations["count"] == 1 and mitigations["active"] == 1  # type: ignore[index]
            (entry,) = mitigations["list"]  # type: ignore[index]
            assert entry["mid"] == created.mid and entry["installed"] is True
            assert entry["upstream"] == upstream.name
            text = running.metrics.render()
            assert 'dots_gateway_relayed_requests_total{code="2.01"} 1\n' in text
            assert 'dots_gateway_relayed_mitigations{state="installed"} 1\n' in text
            assert "dots_gateway_upstream_failovers_total 0\n" in text
            # The relayed mitigation is active: the gauge read 0 in gateway mode before.
            assert "dots_gateway_mitigations_active 1\n" in text
            assert f'dots_gateway_mitigations{{status="{reported}"}} 1\n' in text, text
            assert 'dots_gateway_mitigations{status="unknown"}' not in text
            # Its round trip to the upstream, under the upstream's name.
            count = re.search(r'^dots_gateway_relay_upstream_duration_seconds_count'
                              r'\{upstream="up0"\} (\d+)$', text, re.M)
            assert count is not None and int(count[1]) >= 1, text
            # The gateway's own handshake with the upstream server.
            handshakes = re.search(r'^dots_gateway_handshake_duration_seconds_count'
                                   rf'\{{side="upstream",transport="{transport}"\}} (\d+)$',
                                   text, re.M)
            assert handshakes is not None and int(handshakes[1]) >= 1, text

