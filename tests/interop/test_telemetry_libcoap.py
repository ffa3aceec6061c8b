"""RFC 9244 telemetry on the real ``dots-gateway server`` with libcoap's coap-client (a peer
we did not write): the RFC's Figure 4 body hand-encoded, PUT/GET /tm-setup, PUT /tm, and an
Observe of /tm (``-s``) that receives the change."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs.identity import cuid_from_certificate
from gateway.dots.telemetry import body_from_json, body_to_json
from tests.interop.conftest import require, subprocess_dots_server
from tests.interop.peers import DotsServer, coap_client, coaps_uri, run_peer

pytestmark = pytest.mark.interop
OPENSSL = "coap-client-openssl"
SETUP = "ietf-dots-telemetry:telemetry-setup"
TM = "ietf-dots-telemetry:telemetry"


@pytest.fixture
async def daemon(pki: Path) -> AsyncIterator[DotsServer]:
    async with subprocess_dots_server(pki) as server:
        yield server


def payloads(output: str) -> list[bytes]:
    """The hex payloads libcoap prints between << and >> at verbosity 6."""
    return [bytes.fromhex(h) for h in re.findall(r"<<([0-9a-f]+)>>", output)]


def tm_file(tmp_path: Path, name: str, peak: int) -> Path:
    path = tmp_path / name
    path.write_bytes(body_from_json({TM: {"pre-or-ongoing-mitigation": [{
        "target": {"target-prefix": ["192.0.2.0/24"]},
        "total-attack-traffic": [{"unit": "megabit-ps", "peak-g": str(peak)}]}]}}))
    return path


async def test_tm_setup_and_tm_with_libcoap(daemon: DotsServer, tmp_path: Path) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    auth = {"cert": pki / "client.pem", "key": pki / "client.key", "ca": pki / "ca.pem"}
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())

    def uri(path: str) -> str:
        return coaps_uri("coaps", "127.0.0.1", daemon.port_udp, f".well-known/dots/{path}")

    # RFC 9244 Figure 4, by hand: {203: {129: [{175: {130: 5.00, 131: 65.00, 132: 95.00}}]}}
    figure4 = bytes.fromhex("a118cba1188181a118afa31882c482211901f41883c482211919641884c482"
                            "2119251c")
    assert body_to_json(figure4) == {SETUP: {"telemetry": [{"current-config": {
        "low-percentile": "5.00", "mid-percentile": "65.00", "high-percentile": "95.00"}}]}}
    setup = tmp_path / "setup.cbor"
    setup.write_bytes(figure4)
    put = await run_peer(coap_client(OPENSSL, uri(f"tm-setup/cuid={cuid}/tsid=123"),
                                     body=setup, **auth), timeout=20)  # type: ignore[arg-type]
    assert "t:ACK c:2.01" in put.output, put  # Confirmable, as RFC 9244 §7 has it
    get = await run_peer(coap_client(OPENSSL, uri(f"tm-setup/cuid={cuid}/tsid=123"),
                                     method="get", **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.05" in get.output, get
    assert body_to_json(payloads(get.output)[-1])[SETUP]["telemetry"][0]["tsid"] == 123

    first = await run_peer(coap_client(OPENSSL, uri(f"tm/cuid={cuid}/tmid=1"),
                                       body=tm_file(tmp_path, "tm1.cbor", 900), extra=["-N"],
                                       **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.04" in first.output, first
    # Observe /tm for a while; meanwhile a higher tmid for the same target replaces tmid 1.
    observer = asyncio.ensure_future(run_peer(coap_client(
        OPENSSL, uri(f"tm/cuid={cuid}"), method="get", wait=20, extra=["-s", "12"],
        **auth), timeout=40))  # type: ignore[arg-type]
    await asyncio.sleep(3)
    second = await run_peer(coap_client(OPENSSL, uri(f"tm/cuid={cuid}/tmid=2"),
                                        body=tm_file(tmp_path, "tm2.cbor", 1500),
                                        extra=["-N"], **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.04" in second.output, second
    observed = await observer
    seen = [body_to_json(p)[TM]["pre-or-ongoing-mitigation"] for p in payloads(observed.output)]
    assert [e["tmid"] for e in seen[0]] == [1], observed
    assert any([e["tmid"] for e in entries] == [2] for entries in seen[1:]), observed
