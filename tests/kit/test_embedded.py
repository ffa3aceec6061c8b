"""The testing kit's server and fixture with peers a user would bring: libcoap's coap-client
with ``credentials.coap_client_args()``, and the kit's own promises (ports, marker options,
``mitigations``, clean stop)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from gateway.dots.codec import json_to_cbor
from gateway.testing import EmbeddedServer

COAP_CLIENT = "coap-client-openssl"
HB_BODY = bytes.fromhex("a11831a11833f5")  # {"...:heartbeat": {"peer-hb-status": true}}


async def coap_client(*argv: str, timeout: float = 30.0) -> str:
    """libcoap's client (``-B 10``: it gives up by itself) without blocking the loop the
    server runs in; its output (``-v 6`` shows the answer's code)."""
    if shutil.which(COAP_CLIENT) is None:
        pytest.skip(f"{COAP_CLIENT} is not installed (Debian: libcoap3-bin)")
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT, "-v", "6", "-B", "10", *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return out.decode(errors="replace")


@pytest.mark.parametrize("psk", [False, True], ids=["certificate", "psk"])
async def test_coap_client_heartbeat_with_the_kit_credentials(
        psk: bool, dots_server: EmbeddedServer, tmp_path: Path) -> None:
    body = tmp_path / "hb.cbor"
    body.write_bytes(HB_BODY)
    out = await coap_client("-m", "put", "-t", "271", "-f", str(body),
                            *dots_server.credentials.coap_client_args(psk=psk),
                            dots_server.uri("hb"))
    assert "c:2.04" in out, out


async def test_coap_client_mitigation_shows_in_mitigations(dots_server: EmbeddedServer,
                                                           tmp_path: Path) -> None:
    creds = dots_server.credentials
    body = tmp_path / "mitigate.cbor"
    body.write_bytes(json_to_cbor({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["203.0.113.0/24"], "lifetime": 300}]}}))
    assert dots_server.mitigations == []
    with pytest.raises(TimeoutError, match="no matching mitigation within 0.2 s"):
        await dots_server.wait_for_mitigation(timeout=0.2)
    out = await coap_client("-m", "put", "-t", "271", "-f", str(body), "-N",
                            *creds.coap_client_args(psk=True),
                            dots_server.uri(f"mitigate/cuid={creds.psk_cuid}/mid=42"))
    assert "c:2.01" in out, out
    held = await dots_server.wait_for_mitigation(lambda m: m["mid"] == 42)
    assert held["cuid"] == creds.psk_cuid
    assert held["target-prefix"] == ["203.0.113.0/24"]
    assert held["status"] == "attack-mitigation-in-progress"
    assert 0 < held["lifetime"] <= 300
    assert dots_server.mitigations == [held] or dots_server.mitigations[0]["mid"] == 42


async def test_a_mitigation_with_a_foreign_cuid_is_refused(dots_server: EmbeddedServer,
                                                           tmp_path: Path) -> None:
    """The kit is the real server: a client that does not derive its cuid from its
    credential (RFC 9132 §4.4.1) gets 4.01, which is what its tests should find out."""
    body = tmp_path / "mitigate.cbor"
    body.write_bytes(json_to_cbor({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["203.0.113.0/24"], "lifetime": 300}]}}))
    out = await coap_client("-m", "put", "-t", "271", "-f", str(body), "-N",
                            *dots_server.credentials.coap_client_args(psk=True),
                            dots_server.uri("mitigate/cuid=not-my-cuid/mid=1"))
    assert "c:4.01" in out, out
    assert dots_server.mitigations == []


@pytest.mark.dots_server(transports=["tcp"], config="[session.idle]\nheartbeat_interval = "
                         "{ min = 15, max = 240, default = 60 }\n")
async def test_marker_options_reach_the_server(dots_server: EmbeddedServer) -> None:
    assert dots_server.coaps_tcp_uri == f"coaps+tcp://127.0.0.1:{dots_server.port_tcp}"
    assert dots_server.running.dtls is None
    with pytest.raises(RuntimeError, match="does not serve udp"):
        dots_server.coaps_uri  # noqa: B018
    out = await coap_client("-m", "get", *dots_server.credentials.coap_client_args(),
                            dots_server.uri("config", tcp=True))
    assert "c:2.05" in out, out


async def test_ports_are_ephemeral_and_the_directory_goes_away() -> None:
    async with EmbeddedServer() as one, EmbeddedServer(host="::1") as two:
        assert one.port_udp != 4646 and one.port_tcp != 4646
        assert two.coaps_uri == f"coaps://[::1]:{two.port_udp}"
        directory = one.directory
        assert directory is not None and (directory / "state" / "pki" / "ca.pem").is_file()
        assert len(one.credentials.psk_key) == 16  # tinydtls: at most 16 bytes
    assert not directory.exists()
    assert one.directory is None
    with pytest.raises(RuntimeError, match="not running"):
        one.credentials  # noqa: B018


async def test_a_failed_start_raises_and_leaves_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from gateway.config import ConfigError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = EmbeddedServer(config="[session.idle]\nheartbeat_intervall = 3\n")
    with pytest.raises(ConfigError, match="heartbeat_intervall"):
        await server.start()
    assert list(tmp_path.iterdir()) == []
    await server.stop()  # idempotent
