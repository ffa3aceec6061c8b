"""The server role over real DTLS: Observe notifications (changes, pacing, periodic,
cancellation, config), and Block2 with ETag for mitigation lists larger than one block."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codec import cbor_to_json
from gateway.server import observe as server_role
from tests.integration.test_bad_input import Peer, connect, free_udp_port


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path, str]]:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    settings = parse_config(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port()}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["10.0.0.0/8"]\n')
    running = await start_server(settings)
    yield running, pki, cuid
    await running.stop()


def mitigation(*prefixes: str, lifetime: int = 3600) -> bytes:
    return cbor2.dumps({1: {2: [{6: list(prefixes), 14: lifetime}]}})


async def next_message(peer: Peer, token: bytes, timeout: float = 6.0) -> CoapMessage:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        message = decode_udp(await asyncio.wait_for(peer.replies.get(), max(left, 0.01)))
        if message.token == token:
            return message


def scopes(message: CoapMessage) -> list[dict[str, object]]:
    return cbor_to_json(message.payload)["ietf-dots-signal-channel:mitigation-scope"]["scope"]


async def test_blocks_of_one_transfer_come_from_one_representation(
        server: tuple[RunningServer, Path, str]) -> None:
    """The lifetimes in a list tick every second; the blocks after the first are still cut
    from the representation the first came from (same ETag), so a transfer that spans a
    second (a busy machine, a slow path) completes; a new transfer sees the new state."""
    running, pki, cuid = server
    peer = await connect(running, pki)
    base = f".well-known/dots/mitigate/cuid={cuid}"

    async def block(num: int) -> CoapMessage:
        request = CoapMessage.request(1, tuple(base.split("/")), block2=Block(num, False, 6))
        token = (2000 + num + 16 * len(seen)).to_bytes(2, "big")
        seen.append(token)
        peer.conn.send(encode_udp(CoapMessage(MessageType.CON, 1, int.from_bytes(token, "big"),
                                              token, request.options)))
        return await next_message(peer, token)

    seen: list[bytes] = []
    try:
        for mid in range(1, 5):
            prefixes = [f"10.{mid}.{i}.0/24" for i in range(30)]
            assert (await peer.ask(3, f"{base}/mid={mid}", mitigation(*prefixes))).code == 0x41
        first = await block(0)
        assert first.block2 is not None and first.block2.more
        await asyncio.sleep(1.2)  # every lifetime in a fresh representation is smaller now
        second = await block(1)
        assert second.option(OptionNumber.ETAG) == first.option(OptionNumber.ETAG)
        assert (await block(0)).option(OptionNumber.ETAG) != first.option(OptionNumber.ETAG)
    finally:
        peer.conn.close()


async def test_observe_all_mitigations_gets_paced_notifications(
        server: tuple[RunningServer, Path, str]) -> None:
    running, pki, cuid = server
    peer = await connect(running, pki)
    base = f".well-known/dots/mitigate/cuid={cuid}"
    try:
        assert (await peer.ask(3, f"{base}/mid=1", mitigation("10.0.0.0/24"))).code == 0x41
        token = b"\x4a\x4a"
        request = CoapMessage.request(1, tuple(base.split("/")), observe=0)
        peer.conn.send(encode_udp(CoapMessage(MessageType.NON, 1, 900, token, request.options)))
        first = await next_message(peer, token)
        assert first.code == 0x45 and first.observe is not None and len(scopes(first)) == 1
        started = time.monotonic()
        assert (await peer.ask(3, f"{base}/mid=2", mitigation("10.1.0.0/24"))).code == 0x41
        assert (await peer.ask(4, f"{base}/mid=1")).code == 0x42
        update = await next_message(peer, token)
        assert update.mtype is MessageType.NON  # RFC 9132 §4.4.2.1: always NON
        assert update.observe is not None and update.observe > first.observe
        statuses = {s["mid"]: s["status"] for s in scopes(update)}
        assert statuses == {1: "dots-client-withdrawn-mitigation",
                            2: "attack-mitigation-in-progress"}
        # Both changes came in one notification, and not sooner than the pacing allows
        # after the registration's own answer.
        assert time.monotonic() - started < server_role.NOTIFICATION_INTERVAL + 1.5
        cancel = CoapMessage.request(1, tuple(base.split("/")), observe=1)
        peer.conn.send(encode_udp(CoapMessage(MessageType.NON, 1, 901, token, cancel.options)))
        assert (await next_message(peer, token)).observe is None
        assert (await peer.ask(4, f"{base}/mid=2")).code == 0x42
        with pytest.raises(TimeoutError):
            await next_message(peer, token, timeout=server_role.NOTIFICATION_INTERVAL + 1.0)
    finally:
        peer.conn.close()


async def test_periodic_notifications(server: tuple[RunningServer, Path, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_role, "PERIODIC_NOTIFICATION", 1.0)
    running, pki, cuid = server
    peer = await connect(running, pki)
    base = f".well-known/dots/mitigate/cuid={cuid}/mid=5"
    try:
        assert (await peer.ask(3, base, mitigation("10.2.0.0/24"))).code == 0x41
        token = b"\x55"
        request = CoapMessage.request(1, tuple(base.split("/")), observe=0)
        peer.conn.send(encode_udp(CoapMessage(MessageType.NON, 1, 910, token, request.options)))
        await next_message(peer, token)
        periodic = await next_message(peer, token, timeout=5.0)
        assert scopes(periodic)[0]["status"] == "attack-mitigation-in-progress"
    finally:
        peer.conn.close()


async def test_config_observation_notifies_changes(
        server: tuple[RunningServer, Path, str]) -> None:
    running, pki, _cuid = server
    peer = await connect(running, pki)
    try:
        token = b"\xc0"
        request = CoapMessage.request(1, (".well-known", "dots", "config"), observe=0)
        peer.conn.send(encode_udp(CoapMessage(MessageType.CON, 1, 920, token, request.options)))
        first = await next_message(peer, token)
        assert first.observe is not None
        body = json.dumps({"ietf-dots-signal-channel:signal-config": {
            "mitigating-config": {"heartbeat-interval": {"current-value": 60}}}})
        from gateway.dots.codec import json_to_cbor

        assert (await peer.ask(3, ".well-known/dots/config/sid=1", json_to_cbor(body))).code \
            == 0x41
        update = await next_message(peer, token)
        config = cbor_to_json(update.payload)["ietf-dots-signal-channel:signal-config"]
        assert config["mitigating-config"]["heartbeat-interval"]["current-value"] == 60
    finally:
        peer.conn.close()


async def test_large_mitigation_list_is_served_block_by_block(
        server: tuple[RunningServer, Path, str]) -> None:
    running, pki, cuid = server
    peer = await connect(running, pki)
    base = f".well-known/dots/mitigate/cuid={cuid}"
    try:
        for mid in range(1, 9):  # eight requests of 30 prefixes each: several KiB in total
            prefixes = [f"10.{mid}.{i}.0/24" for i in range(30)]
            assert (await peer.ask(3, f"{base}/mid={mid}", mitigation(*prefixes))).code == 0x41
        first = await peer.ask(1, base)
        block = first.block2
        assert first.code == 0x45 and block is not None and block.num == 0 and block.more
        assert len(first.payload) == block.size == 1024
        etag = first.option(OptionNumber.ETAG)
        total = first.size2
        assert etag and total is not None and total > 1024
        payload, num = first.payload, 1
        while True:
            request = CoapMessage.request(1, tuple(base.split("/")), block2=Block(num, False, 6))
            mid = 1000 + num
            peer.conn.send(encode_udp(CoapMessage(MessageType.CON, 1, mid, mid.to_bytes(2, "big"),
                                                  request.options)))
            reply = await next_message(peer, mid.to_bytes(2, "big"))
            assert reply.option(OptionNumber.ETAG) == etag  # same representation
            payload += reply.payload
            assert reply.block2 is not None
            if not reply.block2.more:
                break
            num += 1
        assert len(payload) == total
        listed = cbor_to_json(payload)["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        assert [s["mid"] for s in listed] == list(range(1, 9))
    finally:
        peer.conn.close()
