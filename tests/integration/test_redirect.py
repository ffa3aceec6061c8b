"""Redirects over real DTLS: anycast sessions get 5.03 + redirected-signal with Max-Age,
unicast sessions are served, and a drain redirects observers inside a notification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import encode_udp
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codec import cbor_to_json
from tests.integration.test_bad_input import HB, connect, free_udp_port
from tests.integration.test_server_role import next_message

REDIRECT = ('[redirect]\nmode = "{mode}"\nname = "dots-a.example.net"\n'
            'addresses = ["192.0.2.10", "2001:db8::10"]\nttl = 900\n')
POOL = '[[redirect.pool]]\nname = "dots-b.example.net"\naddresses = ["192.0.2.11"]\n'


async def server_with(tmp_path: Path, mode: str, pool: bool = False,
                      ) -> tuple[RunningServer, Path]:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    settings = parse_config(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port()}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["10.0.0.0/8"]\n'
        + REDIRECT.format(mode=mode) + (POOL if pool else ""))
    return await start_server(settings), pki


@pytest.fixture
async def anycast_server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path]]:
    running, pki = await server_with(tmp_path, "redirect")
    # Loopback cannot be configured as an anycast address; classify it as one here.
    running.role.is_anycast = lambda _local: True
    yield running, pki
    await running.stop()


async def test_requests_on_anycast_are_redirected(
        anycast_server: tuple[RunningServer, Path]) -> None:
    running, pki = anycast_server
    peer = await connect(running, pki)
    try:
        reply = await peer.ask(3, ".well-known/dots/hb", HB)
        assert reply.code == 0xA3  # 5.03
        assert reply.max_age == 900
        assert cbor_to_json(reply.payload) == {"ietf-dots-signal-channel:redirected-signal": {
            "alt-server": "dots-a.example.net",
            "alt-server-record": ["192.0.2.10", "2001:db8::10"]}}
        assert running.role.redirects == {"anycast": 1}
    finally:
        peer.conn.close()
    # The same node reached on its unicast address (a new session: a session's local
    # address, and so its classification, never changes).
    running.role.is_anycast = lambda _local: False
    peer = await connect(running, pki)
    try:
        assert (await peer.ask(3, ".well-known/dots/hb", HB)).code == 0x44
    finally:
        peer.conn.close()


async def test_keep_mode_serves_on_anycast(tmp_path: Path) -> None:
    running, pki = await server_with(tmp_path, "keep")
    running.role.is_anycast = lambda _local: True
    peer = await connect(running, pki)
    try:
        assert (await peer.ask(3, ".well-known/dots/hb", HB)).code == 0x44
    finally:
        peer.conn.close()
        await running.stop()


async def test_drain_redirects_observers_and_later_requests(tmp_path: Path) -> None:
    running, pki = await server_with(tmp_path, "redirect", pool=True)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    peer = await connect(running, pki)
    base = f".well-known/dots/mitigate/cuid={cuid}"
    try:
        body = cbor2.dumps({1: {2: [{6: ["10.9.0.0/24"], 14: 600}]}})
        assert (await peer.ask(3, f"{base}/mid=1", body)).code == 0x41
        token = b"\x0b\x0b"
        request = CoapMessage.request(1, tuple(base.split("/")), observe=0)
        peer.conn.send(encode_udp(CoapMessage(MessageType.NON, 1, 700, token, request.options)))
        await next_message(peer, token)
        running.role.start_drain()
        note = await next_message(peer, token)
        assert note.code == 0xA3 and note.max_age == 900  # the redirect TTL, not 0
        assert cbor_to_json(note.payload)["ietf-dots-signal-channel:redirected-signal"][
            "alt-server"] == "dots-b.example.net"
        reply = await asyncio.wait_for(peer.ask(3, ".well-known/dots/hb", HB), 5)
        assert reply.code == 0xA3 and running.role.redirects["drain"] >= 2
    finally:
        peer.conn.close()
        await running.stop()
