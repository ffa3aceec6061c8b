"""RFC 9244 telemetry through the gateway: DotsClient -> gateway (this process) -> upstream
``dots-gateway server`` process, DTLS on both hops. Telemetry is relayed like mitigate
(§5.2: the gateway inserts the client's cdid); the upstream server keeps it (its SQLite
shows who sent what), Observe on /tm is relayed, and the gateway keeps no copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.dots.codes import Code
from gateway.dots.telemetry import body_from_json, body_to_json
from gateway.server.persistence import DATABASE_NAME
from tests.integration.test_client_role import free_port, wait_until
from tests.integration.test_gateway import (
    Pkis,
    client_of,
    gateway,
    gateway_config,
    pkis,  # noqa: F401 - the module fixture
    relay_of,
    upstream_server,
)

TM = "ietf-dots-telemetry:telemetry"
SETUP = "ietf-dots-telemetry:telemetry-setup"


def _tm(peak: int) -> bytes:
    return body_from_json({TM: {"pre-or-ongoing-mitigation": [{
        "target": {"target-prefix": ["192.0.2.0/24"]},
        "total-attack-traffic": [{"unit": "megabit-ps", "peak-g": str(peak)}]}]}})


def _saved_upstream(directory: Path) -> list[tuple[str, str, int, str | None]]:
    db = sqlite3.connect(directory / "state" / DATABASE_NAME, timeout=5)
    try:
        return sorted(db.execute("SELECT cuid, kind, ident, cdid FROM telemetry"))
    finally:
        db.close()


async def test_telemetry_is_relayed_with_the_cdid_and_observed(pkis: Pkis,  # noqa: F811
                                                               tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            relay = relay_of(gw)
            await wait_until(lambda: relay.upstream.connected, 10, "upstream session")

            setup = body_from_json({SETUP: {"telemetry": [{"total-pipe-capacity": [
                {"link-id": "link1", "capacity": "10", "unit": "gigabit-ps"}]}]}})
            made = await client.telemetry_setup(setup, tsid=5)
            assert made.code is Code.CREATED, made
            put = await client.telemetry(_tm(900), tmid=3)
            assert put.code is Code.CHANGED, put
            # The upstream server holds it for the client's cuid with the inserted cdid.
            assert _saved_upstream(up.directory) == [
                (pkis.client_cuid, "setup", 5, pkis.client_cuid),
                (pkis.client_cuid, "tm", 3, pkis.client_cuid)]
            assert gw.role.core.telemetry.clients == {}  # nothing kept by the gateway

            got = await client.telemetry_setup_get(5)
            assert got.code is Code.CONTENT
            assert body_to_json(got.response.payload)[SETUP]["telemetry"][0]["tsid"] == 5
            refused = await client.telemetry_setup(body_from_json({SETUP: {"telemetry": [
                {"current-config": {"high-percentile": "100.50"}}]}}), tsid=6)
            assert refused.code is Code.UNPROCESSABLE_ENTITY  # the upstream server's answer

            observation = await client.telemetry_observe()
            assert observation.first is not None and observation.first.observe is not None
            await client.telemetry(_tm(1500), tmid=4)
            for _ in range(5):  # a periodic repeat may come first
                note = await observation.next(timeout=15)
                assert note.code is Code.CONTENT and note.observe is not None
                entries = body_to_json(note.response.payload)[TM]["pre-or-ongoing-mitigation"]
                if entries and entries[0]["tmid"] == 4:
                    break
            else:
                raise AssertionError("no notification of tmid 4")
            await observation.cancel()

            assert (await client.telemetry_delete()).code is Code.DELETED
            assert (await client.telemetry_get(4)).code is Code.NOT_FOUND
            assert [r[1] for r in _saved_upstream(up.directory)] == ["setup"]
