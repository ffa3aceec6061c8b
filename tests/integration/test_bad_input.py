"""Malformed and unauthorized requests get the RFC's code with a diagnostic, over real DTLS
to the real server role, while a well-behaved client on another session keeps being served.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codec import json_to_cbor
from gateway.transport.dtls_client import DtlsClientConnection, connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind

HB = bytes.fromhex("a11831a11833f5")
GOOD = {"ietf-dots-signal-channel:mitigation-scope": {"scope": [
    {"target-prefix": ["192.0.2.0/24"], "lifetime": 3600}]}}


@dataclass
class Peer:
    conn: DtlsClientConnection
    replies: asyncio.Queue[bytes]
    mids: itertools.count[int]

    async def ask(self, code: int, path: str, payload: bytes = b"", *,
                  content_format: int | None = 271, query: tuple[str, ...] = (),
                  options: tuple[tuple[int, bytes], ...] = (), if_match: bool = False,
                  mtype: MessageType = MessageType.CON) -> CoapMessage:
        mid = next(self.mids)
        segments = tuple(path.split("/")) if path else ()
        request = CoapMessage.request(code, segments, query=query,
                                      content_format=content_format if payload else None,
                                      if_match=(b"",) if if_match else (), payload=payload)
        message = CoapMessage(mtype, code, mid, mid.to_bytes(2, "big"),
                              (*request.options, *options), request.payload)
        self.conn.send(encode_udp(message))
        while True:
            reply = decode_udp(await asyncio.wait_for(self.replies.get(), 5))
            if reply.token == message.token and reply.code >= 64:
                return reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path]]:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    settings = parse_config(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port()}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["192.0.2.0/24"]\n')
    running = await start_server(settings)
    yield running, pki
    await running.stop()


async def connect(running: RunningServer, pki: Path) -> Peer:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    address = running.dtls.bound[0]  # type: ignore[union-attr]
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    conn = await connect_dtls(address.host, address.port, ctx, replies.put_nowait,
                              server_name="localhost", timeout=5)
    return Peer(conn, replies, itertools.count(1))


def body(obj: object) -> bytes:
    return json_to_cbor(json.dumps(obj))


BAD_REQUESTS = [
    # (id, method, path suffix, payload, extra kwargs, code, diagnostic fragment)
    ("content-format", 3, "mid=1", body(GOOD), {"content_format": 60}, 0x8F,
     "not application/dots+cbor"),
    ("bad-cbor", 3, "mid=2", b"\xff\x00", {}, 0x80, "undecodable CBOR"),
    ("trailing-bytes", 3, "mid=3", body(GOOD) + b"\x00", {}, 0x80, "bytes after the CBOR"),
    ("duplicate-keys", 3, "mid=4", bytes.fromhex("a201a10280" "01a10280"), {}, 0x80,
     "undecodable CBOR"),
    ("unknown-required-key", 3, "mid=5",
     cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 100: 1}]}}), {}, 0x80,
     "unknown comprehension-required CBOR keys: 100"),
    ("two-scopes", 3, "mid=6", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60}] * 2}}), {},
     0x80, "exactly one scope entry"),
    ("no-target", 3, "mid=7", cbor2.dumps({1: {2: [{14: 60}]}}), {}, 0x80, "at least one of"),
    ("lifetime-0", 3, "mid=8", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 0}]}}), {}, 0x80,
     "lifetime of 0 is invalid"),
    ("no-lifetime", 3, "mid=9", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"]}]}}), {}, 0x80,
     "lifetime is mandatory"),
    ("server-only-field", 3, "mid=10", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60,
                                                             16: 2}]}}), {}, 0x80,
     "server-to-client attributes in a request: status"),
    ("loopback-prefix", 3, "mid=11", cbor2.dumps({1: {2: [{6: ["127.0.0.1/32"], 14: 60}]}}),
     {}, 0x80, "covers loopback"),
    ("port-order", 3, "mid=12", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60,
                                                      7: [{8: 90, 9: 80}]}]}}), {}, 0x80,
     "upper-port 80 is lower than lower-port 90"),
    ("protocol-256", 3, "mid=13", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60,
                                                        10: [256]}]}}), {}, 0x80,
     "target-protocol[0]"),
    ("attack-status-without-if-match", 3, "mid=14",
     cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 29: 1}]}}), {}, 0x80,
     "attack-status belongs only in an efficacy update"),
    ("cuid-in-body", 3, "mid=15", cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 14: 60, 4: "x"}]}}),
     {}, 0x80, "cuid and cdid must not appear in a message body"),
    ("alias", 3, "mid=16", cbor2.dumps({1: {2: [{13: ["web"], 14: 60}]}}), {}, 0x80,
     "alias-name web is unknown"),
    ("outside-domain", 3, "mid=17", cbor2.dumps({1: {2: [{6: ["198.51.100.0/24"], 14: 60}]}}),
     {}, 0x81, "outside the prefixes configured for client site-a"),
    ("post", 2, "mid=18", body(GOOD), {}, 0x85, "POST is not used on mitigate"),
    ("missing-mid", 3, "", body(GOOD), {}, 0x80, "needs the 'mid'"),
    ("mid-not-a-number", 3, "mid=x1", body(GOOD), {}, 0x80, "'mid' must be an unsigned"),
    ("get-unknown-mid", 1, "mid=404", b"", {}, 0x84, "no mitigation with mid 404"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_mitigation_requests(server: tuple[RunningServer, Path], case: tuple) -> None:
    running, pki = server
    _name, method, suffix, payload, kwargs, code, fragment = case
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    bad, good = await connect(running, pki), await connect(running, pki)
    try:
        path = f".well-known/dots/mitigate/cuid={cuid}" + (f"/{suffix}" if suffix else "")
        reply = await bad.ask(method, path, payload, **kwargs)
        assert reply.code == code, (reply, reply.payload)
        assert fragment in reply.payload.decode("utf-8", "replace")
        assert reply.content_format in (0, None)  # a text diagnostic (RFC 9132 §9)
        # The well-behaved client on another session is unaffected.
        hb = await good.ask(3, ".well-known/dots/hb", HB)
        assert hb.code == 0x44
    finally:
        bad.conn.close()
        good.conn.close()


async def test_bad_paths_config_and_options(server: tuple[RunningServer, Path]) -> None:
    running, pki = server
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    peer, good = await connect(running, pki), await connect(running, pki)
    cases = [
        (3, ".well-known/dots/mitigate/cuid=/mid=1", body(GOOD), {}, 0x80, "empty value"),
        (3, f".well-known/dots/mitigate/cuid={cuid}/cdid=x/mid=1", body(GOOD), {}, 0x80,
         "'cdid' must precede 'cuid'"),
        (3, ".well-known/dots/hb/cuid=x", HB, {}, 0x80, "heartbeat requests carry no"),
        (3, ".well-known/dots/config", body({"ietf-dots-signal-channel:signal-config": {
            "mitigating-config": {"heartbeat-interval": {"current-value": 30}}}}), {}, 0x80,
         "needs the 'sid'"),
        (3, ".well-known/dots/config/sid=1", body({"ietf-dots-signal-channel:signal-config": {
            "mitigating-config": {"heartbeat-interval": {"current-value": 5}}}}), {}, 0x96,
         "heartbeat-interval 5 is outside 15-240"),
        (1, ".well-known/dots/nothing", b"", {}, 0x84, "unknown DOTS resource"),
        (1, "", b"", {}, 0x84, "not a DOTS signal-channel resource"),
        # An unknown critical option (RFC 7252 §5.4.1): 4.02 from the CoAP layer.
        (1, ".well-known/dots/config", b"", {"options": ((65001, b"x"),)}, 0x82, ""),
        (3, f".well-known/dots/mitigate/cuid={cuid}/mid=30",
         cbor2.dumps({1: {2: [{6: ["192.0.2.0/24"], 29: 1}]}}), {"if_match": True},
         None, ""),  # efficacy update for an unknown mid: silently ignored (§4.4.3)
    ]
    try:
        for method, path, payload, kwargs, code, fragment in cases:
            if code is None:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(peer.ask(method, path, payload, **kwargs), 1.0)
                continue
            reply = await peer.ask(method, path, payload, **kwargs)
            assert reply.code == code, (path, reply, reply.payload)
            assert fragment in reply.payload.decode("utf-8", "replace"), (path, reply.payload)
        # Another client's cuid: 4.01 naming both values.
        reply = await peer.ask(1, ".well-known/dots/mitigate/cuid=someone-else-000000000A")
        assert reply.code == 0x81 and b"not the one derived" in reply.payload
        assert (await good.ask(3, ".well-known/dots/hb", HB)).code == 0x44
    finally:
        peer.conn.close()
        good.conn.close()


async def test_libcoap_style_probe_gets_a_prompt_error(server: tuple[RunningServer, Path]) -> None:
    """libcoap-based DOTS clients open with an empty-path CON GET carrying Q-Block2 (RFC 9177)
    and wait for any answer; it must come at once, not after a timeout, and carry Q-Block2
    so that the peer switches Q-Block on (issue 19: a 4.04 made it fall back to Block2)."""
    running, pki = server
    peer = await connect(running, pki)
    try:
        started = asyncio.get_running_loop().time()
        reply = await peer.ask(1, "", options=((31, b"\x06"),))  # Q-Block2: NUM 0, SZX 6
        assert reply.code == 0x45 and reply.option(31) is not None  # 2.05 with Q-Block2
        assert asyncio.get_running_loop().time() - started < 0.5
        # A NON request retransmitted with the same message ID and token is answered again
        # from the cache, not processed twice (RFC 7252 §4.5).
        cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
        message = CoapMessage(MessageType.NON, 3, 4242, b"\x42\x42", CoapMessage.request(
            3, (".well-known", "dots", "mitigate", f"cuid={cuid}", "mid=77"),
            content_format=271).options, body(GOOD))
        for _ in range(2):
            peer.conn.send(encode_udp(message))
            reply = decode_udp(await asyncio.wait_for(peer.replies.get(), 5))
            assert reply.code == 0x41 and reply.token == b"\x42\x42"  # 2.01 both times
    finally:
        peer.conn.close()


async def test_oversize_request_is_4_13(server: tuple[RunningServer, Path]) -> None:
    running, pki = server
    peer = await connect(running, pki)
    try:
        reply = await peer.ask(3, ".well-known/dots/hb", bytes(1130))  # > 1152 with options
        assert reply.code == 0x8D  # 4.13 Request Entity Too Large, from the CoAP layer
    finally:
        peer.conn.close()
