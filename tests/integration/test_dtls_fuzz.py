"""Bounded fuzz of the DTLS front and record layer on a live loopback endpoint (issue 16).

A legitimate client heartbeats through one session while random and mutated datagrams
arrive: from other addresses (the front: cookie exchange, listener) and from the client's
own address (its session: OpenSSL until the hand-over, then our record layer), among them
mutations, duplicates and replays of the client's real records and of records it sealed
but held back. Required: no exception in the log, no warning, the session never lost,
every heartbeat answered, and nothing delivered twice (no replay accepted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.transport.dtls_records import split_records
from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    ServerContext,
    ServerCredentials,
)

#: Seconds of fuzzing: bounded, long enough for some thousands of datagrams.
FUZZ_SECONDS = 3.0
JUNK_RECORD = bytes.fromhex("17fefd0001000000000000" "0000")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


class Recorder:
    """Echoes what arrives and remembers it, to find a payload delivered twice."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.received: list[bytes] = []
        self.lost: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.conn.send(b"echo:" + data)

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.fixture
async def server(pki: Path) -> AsyncIterator[DtlsServer]:
    psk = json.loads((pki / "psk.json").read_text())
    context = ServerContext(
        Kind.DTLS,
        ServerCredentials(
            pki / "server.pem", pki / "server.key", pki / "ca.pem",
            psk={psk["identity"].encode(): psk["key"].encode()},
        ),
    )
    endpoint = DtlsServer(context, Recorder, Limits(handshake_deadline=5.0))
    await endpoint.start([("127.0.0.1", 0)])
    yield endpoint
    await endpoint.stop()


def client_context(pki: Path) -> ClientContext:
    return ClientContext(
        Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    )


async def handshake(session: SecureSession, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    session.start()
    end = loop.time() + 10
    while session.state is State.HANDSHAKING and loop.time() < end:
        for datagram in session.take_output():
            sock.send(datagram)
        timer = session.timeout()
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), min(timer or 0.2, 0.2))
        except TimeoutError:
            session.handle_timeout()
        else:
            session.feed(data)
    for datagram in session.take_output():
        sock.send(datagram)
    assert session.state is State.ESTABLISHED


def mutate(rng: random.Random, datagram: bytes) -> bytes:
    data = bytearray(datagram)
    choice = rng.randrange(10)
    if choice == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:
        del data[rng.randrange(len(data) + 1):]
    elif choice == 2:
        data += rng.randbytes(rng.randint(1, 64))
    elif choice == 3:
        data = JUNK_RECORD + data if rng.random() < 0.5 else data + JUNK_RECORD
    elif choice == 4 and len(data) >= 13:  # epoch, sequence number or length rewritten
        field = rng.choice([(3, 2), (5, 6), (11, 2)])
        start, size = field
        value = rng.choice([0, 1, 2**(8 * size) - 1, rng.getrandbits(8 * size)])
        data[start:start + size] = value.to_bytes(size, "big")
    elif choice == 5:
        data = data * 2  # the same record twice in one datagram
    elif choice == 6 and data:
        data[0] = rng.choice([20, 21, 22, 23, 24, rng.randrange(256)])
    elif choice == 7 and len(data) >= 13:  # the version
        data[1:3] = rng.choice([b"\xfe\xff", b"\x03\x03", rng.randbytes(2)])
    # 8, 9: unchanged (a replay, or a held-back record released)
    return bytes(data)


def front_datagram(rng: random.Random, hello: bytes, seen: list[bytes]) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 1400))
    if choice == 1:
        return b"\x16\xfe\xfd" + rng.randbytes(rng.randint(0, 300))
    if choice == 2:
        return mutate(rng, hello)
    if choice == 3 and seen:
        return mutate(rng, rng.choice(seen))  # the client's records, from elsewhere
    return hello  # a genuine ClientHello: the cookie exchange answers it, statelessly


async def test_fuzzed_datagrams_disturb_neither_the_endpoint_nor_a_live_session(
    server: DtlsServer, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway")
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    address = server.bound[0]
    target = (address.host, address.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    strangers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    client = SecureSession(client_context(pki), server_name="localhost")
    hello_maker = SecureSession(client_context(pki))
    try:
        sock.setblocking(False)
        sock.connect(target)
        for s in strangers:
            s.setblocking(False)
        hello_maker.start()
        (hello,) = hello_maker.take_output()
        await handshake(client, sock)
        (conn,) = server.sessions.values()

        sent: list[bytes] = []  # every datagram the client sent, genuine
        held: list[bytes] = []  # genuine records sealed and held back, released mutated or not
        sealed: set[bytes] = set()  # every payload the client sealed
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        async def read() -> None:
            while True:
                data = await loop.sock_recv(sock, 65535)
                for record in client.feed(data):
                    await answers.put(record)

        def seal(payload: bytes) -> bytes:
            sealed.add(payload)
            client.send(payload)
            (datagram,) = client.take_output()
            return datagram

        async def fuzz() -> None:
            count = 0
            while True:
                for _ in range(8):
                    stranger = rng.choice(strangers)
                    stranger.sendto(front_datagram(rng, hello, sent), target)
                    if rng.random() < 0.1:
                        held.append(seal(b"held %d" % count))
                        count += 1
                    pool = sent + held
                    if pool:
                        sock.send(mutate(rng, rng.choice(pool)))
                    else:
                        sock.send(rng.randbytes(rng.randint(1, 200)))
                await asyncio.sleep(0.005)

        reader = asyncio.create_task(read())
        fuzzer = asyncio.create_task(fuzz())
        try:
            await asyncio.sleep(0.2)  # the session is fuzzed before its hand-over too
            heartbeats = 0
            end = loop.time() + FUZZ_SECONDS
            while loop.time() < end:
                payload = b"hb %d" % heartbeats
                for _attempt in range(3):  # retransmitted as a new record, as CoAP does
                    datagram = seal(payload)
                    sent.append(datagram)
                    sock.send(datagram)
                    try:
                        while (await asyncio.wait_for(answers.get(), 2.0)) != b"echo:" + payload:
                            pass  # the echo of a held-back record released by the fuzzer
                        break
                    except TimeoutError:
                        continue
                else:
                    pytest.fail(f"heartbeat {heartbeats} unanswered (seed {seed})")
                heartbeats += 1
                await asyncio.sleep(0.02)
        finally:
            fuzzer.cancel()
            reader.cancel()
            for outcome in await asyncio.gather(fuzzer, reader, return_exceptions=True):
                if not isinstance(outcome, asyncio.CancelledError):
                    raise AssertionError(f"a test task failed (seed {seed})") from outcome
        await asyncio.sleep(0.1)

        assert heartbeats >= 10, f"seed {seed}"
        handler = conn.handler
        assert isinstance(handler, Recorder)
        assert handler.lost == [] and client.state is State.ESTABLISHED, f"seed {seed}"
        assert list(server.sessions.values()) == [conn], f"seed {seed}"
        assert conn.session.protects_records, f"seed {seed}"  # our record layer was fuzzed
        delivered = handler.received
        assert len(delivered) == len(set(delivered)), f"a replay was accepted (seed {seed})"
        assert set(delivered) <= sealed, f"seed {seed}"
        assert server.counters.datagrams_in > 1000, f"seed {seed}"
        problems = [r for r in caplog.records
                    if r.levelno >= logging.WARNING or r.exc_info is not None]
        assert problems == [], f"seed {seed}: {problems[:3]}"
        assert all(split_records(d) for d in sent)
    finally:
        client.free()
        hello_maker.free()
        sock.close()
        for s in strangers:
            s.close()
