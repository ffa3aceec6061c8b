"""aiocoap (a CoAP stack we did not write) against the real ``dots-gateway server``: a CBOR
mitigation PUT, GET and DELETE over coaps+tcp with a client certificate, and over coaps
(DTLS, tinydtls) with PSK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs.identity import cuid_from_certificate, cuid_from_psk_identity
from gateway.dots.codec import cbor_to_json, json_to_cbor
from tests.interop.peers import (
    aiocoap_dtls_client,
    aiocoap_tls_client,
    client_ssl_context,
    free_port,
)

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
# tinydtls takes PSK keys of at most 16 bytes.
PSK_IDENTITY, PSK_KEY = "aiocoap-psk-client", "sixteen-byte-key"
BODY = json_to_cbor(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
    {"target-prefix": ["2001:db8:64::/48"], "target-protocol": [17], "lifetime": 600}]}}))


@pytest.fixture
async def daemon(pki: Path, tmp_path: Path) -> AsyncIterator[int]:
    port = free_port()
    cert_cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "server.pem"}"\n'
        f'key = "{pki / "server.key"}"\nallow_legacy_psk = true\n'
        f'[[psk]]\nidentity = "{PSK_IDENTITY}"\nkey = "{PSK_KEY}"\n'
        f'[[clients]]\nname = "cert"\ncuid = "{cert_cuid}"\nprefixes = ["2001:db8::/32"]\n'
        f'[[clients]]\nname = "psk"\npsk_identity = "{PSK_IDENTITY}"\n'
        'prefixes = ["2001:db8::/32"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "server", "--config",
                             str(config)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("dots-gateway serving")
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


async def exchange(ctx: object, uri: str) -> list[tuple[str, object]]:
    import aiocoap

    results: list[tuple[str, object]] = []
    for code, payload in ((aiocoap.PUT, BODY), (aiocoap.GET, b""), (aiocoap.DELETE, b"")):
        # RFC 9132 §4.4: mitigation requests are Non-confirmable over UDP.
        tuning = {} if "+tcp" in uri else {"transport_tuning": aiocoap.Unreliable}
        message = aiocoap.Message(code=code, uri=uri, payload=payload, **tuning)
        if payload:
            message.opt.content_format = 271
        response = await asyncio.wait_for(ctx.request(message).response, 15)  # type: ignore[attr-defined]
        body = cbor_to_json(response.payload) if response.payload else None
        results.append((str(response.code), body))
    return results


async def test_aiocoap_tls_with_client_certificate(daemon: int, pki: Path) -> None:
    ctx = await aiocoap_tls_client(client_ssl_context(pki / "client.pem", pki / "client.key",
                                                      pki / "ca.pem"))
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    try:
        results = await exchange(
            ctx, f"coaps+tcp://127.0.0.1:{daemon}/.well-known/dots/mitigate/cuid={cuid}/mid=3")
    finally:
        await ctx.shutdown()
    assert [code for code, _ in results] == ["2.01 Created", "2.05 Content", "2.02 Deleted"]
    scope = results[1][1]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]  # type: ignore[index]
    assert scope["target-protocol"] == [17] and scope["status"] == "attack-mitigation-in-progress"


async def test_aiocoap_dtls_with_psk(daemon: int) -> None:
    pytest.importorskip("DTLSSocket", reason="aiocoap's tinydtls transport needs DTLSSocket")
    ctx = await aiocoap_dtls_client(f"coaps://127.0.0.1:{daemon}/*", PSK_IDENTITY, PSK_KEY)
    cuid = cuid_from_psk_identity(PSK_IDENTITY)
    try:
        results = await exchange(
            ctx, f"coaps://127.0.0.1:{daemon}/.well-known/dots/mitigate/cuid={cuid}/mid=4")
    finally:
        await ctx.shutdown()
    assert [code for code, _ in results] == ["2.01 Created", "2.05 Content", "2.02 Deleted"]
