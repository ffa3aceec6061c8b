"""A DTLS client that restarts on the same source port (RFC 6347 §4.2.8), on loopback.

The new ClientHello gets a stateless HelloVerifyRequest; with a valid cookie a new
handshake runs beside the established session, which is closed only once the new one is
established. A ClientHello without a valid cookie, or a new handshake that never
finishes, leaves the established session as it was.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.transport.dtls_client import connect_dtls
from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    ServerContext,
    ServerCredentials,
)
from tests.support.dtls_flood import client_hello, hello_verify_cookie, with_cookie


class Echo:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lost: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.conn.send(b"echo:" + data)

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.fixture
async def server(pki: Path) -> AsyncIterator[DtlsServer]:
    psk = json.loads((pki / "psk.json").read_text())
    context = ServerContext(Kind.DTLS, ServerCredentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem",
        psk={psk["identity"].encode(): psk["key"].encode()}))
    handlers: list[Echo] = []

    def on_session(conn: Any) -> Echo:
        handlers.append(Echo(conn))
        return handlers[-1]

    server = DtlsServer(context, on_session, Limits(handshake_deadline=2.0))
    server.handlers = handlers  # type: ignore[attr-defined]
    await server.start([("127.0.0.1", 0)])
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from certs.devpki import init_dev_pki

    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


def client_context(pki: Path) -> ClientContext:
    return ClientContext(Kind.DTLS, ClientCredentials(
        pki / "client.pem", pki / "client.key", pki / "ca.pem"))


async def echo(conn: Any, payload: bytes) -> bytes:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn.on_data = lambda b: got.done() or got.set_result(b)
    conn.send(payload)
    return await asyncio.wait_for(got, 5)


async def test_a_client_restarting_on_its_port_gets_a_new_session(
    server: DtlsServer, pki: Path
) -> None:
    address = server.bound[0]
    ctx = client_context(pki)
    first = await connect_dtls(address.host, address.port, ctx, lambda b: None,
                               server_name="localhost", timeout=5)
    assert await echo(first, b"one") == b"echo:one"
    port = first.transport.get_extra_info("sockname")[1]
    # The client process dies: no close_notify, the port is free again.
    first.transport.abort()
    for _ in range(100):
        if first.closed:
            break
        await asyncio.sleep(0.01)
    (old,) = server.sessions.values()

    second = await connect_dtls(address.host, address.port, ctx, lambda b: None,
                                server_name="localhost", timeout=5,
                                local_addr=("127.0.0.1", port))
    assert await echo(second, b"two") == b"echo:two"
    (new,) = server.sessions.values()
    assert new is not old and new.remote == old.remote
    assert server.replacements == {} and server.handshaking == 0
    assert server.counters.sessions_replaced == 1
    assert server.handlers[0].lost == [  # type: ignore[attr-defined]
        "replaced by a new session from the same address"]
    assert old.session.state is not State.ESTABLISHED or old.session._ssl is None
    second.close()


def raw_session(server: DtlsServer, pki: Path, sock: socket.socket) -> SecureSession:
    """An established client session over ``sock`` (a plain, connected UDP socket)."""
    client = SecureSession(client_context(pki), server_name="localhost")
    client.start()
    for _ in range(200):
        for datagram in client.take_output():
            sock.send(datagram)
        if client.state is not State.HANDSHAKING:
            break
        try:
            client.feed(sock.recv(65535))
        except TimeoutError:
            client.handle_timeout()
    assert client.state is State.ESTABLISHED
    return client


def raw_echo(client: SecureSession, sock: socket.socket, payload: bytes) -> list[bytes]:
    """Send ``payload`` and return the first records that answer it. Sent again after 1 s of
    silence, as CoAP would: while a step of a new handshake from the same address runs in
    a worker, the established session's datagrams wait in that handshake's backlog and are
    lost (dtls_server._route), a window that a busy machine makes long enough to matter."""
    expected = b"echo:" + payload  # a late echo of an earlier copy or payload is skipped
    for _attempt in range(10):
        client.send(payload)
        for datagram in client.take_output():
            sock.send(datagram)
        try:
            for _ in range(20):  # skip what the old keys cannot open (a HelloVerifyRequest)
                replies = [r for r in client.feed(sock.recv(65535)) if r == expected]
                if replies:
                    return replies
        except TimeoutError:
            continue
    return []


async def test_a_client_hello_without_a_valid_cookie_leaves_the_session_alone(
    server: DtlsServer, pki: Path
) -> None:
    address = server.bound[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect((address.host, address.port))
        client = await asyncio.to_thread(raw_session, server, pki, sock)
        try:
            hello = client_hello()
            sock.send(hello)  # epoch 0 from the session's address: answered statelessly
            cookie = hello_verify_cookie(await asyncio.to_thread(sock.recv, 65535))
            assert cookie is not None
            sock.send(with_cookie(hello, bytes(len(cookie))))  # a forged cookie
            await asyncio.sleep(0.2)
            assert server.replacements == {} and server.handshaking == 0
            replies = await asyncio.to_thread(raw_echo, client, sock, b"still here")
            assert replies == [b"echo:still here"]
            assert server.counters.sessions_replaced == 0
        finally:
            client.free()


async def test_an_unfinished_new_handshake_leaves_the_session_alone(
    server: DtlsServer, pki: Path
) -> None:
    address = server.bound[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect((address.host, address.port))
        client = await asyncio.to_thread(raw_session, server, pki, sock)
        try:
            hello = client_hello()
            sock.send(hello)
            cookie = hello_verify_cookie(await asyncio.to_thread(sock.recv, 65535))
            assert cookie is not None
            sock.send(with_cookie(hello, cookie))  # a valid cookie, then silence
            for _ in range(100):
                if server.replacements:
                    break
                await asyncio.sleep(0.02)
            assert len(server.replacements) == 1 and len(server.sessions) == 1
            # The established session keeps working beside the new handshake ...
            replies = await asyncio.to_thread(raw_echo, client, sock, b"during")
            assert replies == [b"echo:during"]
            # ... and after that handshake's deadline (2 s here, then the sweeper's turn).
            for _ in range(100):
                if not server.replacements:
                    break
                await asyncio.sleep(0.1)
            assert server.replacements == {} and server.handshaking == 0
            assert server.counters.handshakes_timed_out == 1
            replies = await asyncio.to_thread(raw_echo, client, sock, b"after")
            assert replies == [b"echo:after"]
            assert server.counters.sessions_replaced == 0
            assert server.handlers[0].lost == []  # type: ignore[attr-defined]
        finally:
            client.free()
