"""Abandoned DTLS handshakes from a few loopback sources must not lock others out.

A small, bounded version of the flood in tests/bench/bench_handshake_flood.py: 8 sources
keep the handshake table full of handshakes that went past the cookie and then went
silent; clients from other addresses still complete theirs, and an established session
keeps answering. Loopback is 127.0.0.0/8, so each source is its own address.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.transport.dtls_client import connect_dtls
from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    ServerContext,
    ServerCredentials,
)
from tests.support.dtls_flood import FloodCounts, client_hello, flood

FLOODERS = [f"127.0.0.{20 + i}" for i in range(8)]
CLIENTS = [f"127.0.0.{40 + i}" for i in range(3)]
LIMITS = Limits(max_handshakes=16, max_handshakes_per_source=4, handshake_deadline=20.0,
                handshake_deadline_min=4.0, handshakes_per_source_per_second=1000.0,
                handshake_burst=1000)


class Echo:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.send(b"echo:" + data)

    def connection_lost(self, reason: str) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


@pytest.fixture
async def server(pki: Path) -> AsyncIterator[DtlsServer]:
    psk = json.loads((pki / "psk.json").read_text())
    context = ServerContext(Kind.DTLS, ServerCredentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem",
        psk={psk["identity"].encode(): psk["key"].encode()}))
    server = DtlsServer(context, Echo, LIMITS)
    await server.start([("127.0.0.1", 0)])
    yield server
    await server.stop()


async def echo(conn: Any, payload: bytes) -> bytes:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn.on_data = lambda b: got.done() or got.set_result(b)
    conn.send(payload)
    return await asyncio.wait_for(got, 5)


async def test_half_open_handshakes_leave_room_for_other_sources(
    server: DtlsServer, pki: Path
) -> None:
    address = server.bound[0]
    ctx = ClientContext(Kind.DTLS, ClientCredentials(
        pki / "client.pem", pki / "client.key", pki / "ca.pem"))
    established = await connect_dtls(address.host, address.port, ctx, lambda b: None,
                                     server_name="localhost", timeout=5,
                                     local_addr=("127.0.0.60", 0))
    loop = asyncio.get_running_loop()
    counts = FloodCounts()
    hello = client_hello(ctx)  # an X.509 ClientHello: the server goes on with it
    flooding = asyncio.ensure_future(flood(hello, FLOODERS, (address.host, address.port),
                                           counts, until=loop.time() + 20.0, per_source=2))
    try:
        # Wait for the table to fill (state, not time: the machine may be busy).
        for _ in range(200):
            if server.handshaking >= LIMITS.max_handshakes:
                break
            await asyncio.sleep(0.05)
        assert server.handshaking >= LIMITS.max_handshakes
        for source in FLOODERS:
            assert server.admission.pending_of(source) <= LIMITS.max_handshakes_per_source

        async def client(source: str) -> int:
            done = 0
            for _ in range(2):
                conn = await connect_dtls(address.host, address.port, ctx, lambda b: None,
                                          server_name="localhost", timeout=8,
                                          local_addr=(source, 0))
                assert await echo(conn, b"hello") == b"echo:hello"
                conn.close()
                done += 1
            return done

        assert await asyncio.gather(*(client(s) for s in CLIENTS)) == [2] * len(CLIENTS)
        assert await echo(established, b"during") == b"echo:during"
        assert server.counters.handshakes_evicted >= len(CLIENTS)
        assert counts.cookies > LIMITS.max_handshakes  # the flood did go on
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        established.close()
