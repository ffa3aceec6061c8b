"""DTLS and TLS endpoints on real loopback sockets: handshakes, limits, garbage, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.transport import dtls_sessions as dtls_server_module
from gateway.transport.dtls_client import HandshakeError, connect_dtls
from gateway.transport.dtls_server import DtlsServer, Limits, client_hello_random
from gateway.transport.endpoint import HandshakeWorkers
from gateway.transport.openssl_ffi import ssl
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    CookieSecrets,
    Kind,
    ServerContext,
    ServerCredentials,
)
from gateway.transport.tls_stream import StreamLimits, TlsServer, connect_tls
from gateway.transport.udp import PortInUse, open_udp_socket


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


def server_context(kind: Kind, pki: Path) -> ServerContext:
    psk = json.loads((pki / "psk.json").read_text())
    return ServerContext(
        kind,
        ServerCredentials(
            pki / "server.pem",
            pki / "server.key",
            pki / "ca.pem",
            psk={psk["identity"].encode(): psk["key"].encode()},
        ),
    )


def cert_client(kind: Kind, pki: Path) -> ClientContext:
    return ClientContext(
        kind, ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    )


class Echo:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lost: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.conn.send(b"echo:" + data)

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


@pytest.fixture
async def dtls_server(pki: Path) -> AsyncIterator[DtlsServer]:
    server = DtlsServer(
        server_context(Kind.DTLS, pki),
        Echo,
        Limits(max_handshakes=4, max_sessions=6, handshake_deadline=1.0, handshake_burst=100),
    )
    await server.start([("127.0.0.1", 0), ("::1", 0)])
    yield server
    await server.stop()


async def roundtrip(
    connect: Callable[..., Any],
    host: str,
    port: int,
    ctx: ClientContext,
    payload: bytes = b"ping",
    **kw: Any,
) -> tuple[bytes, Any]:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    conn = await connect(
        host,
        port,
        ctx,
        lambda b: got.done() or got.set_result(b),
        server_name="localhost",
        timeout=5,
        **kw,
    )
    conn.send(payload)
    return await asyncio.wait_for(got, 5), conn


async def test_dtls_over_ipv4_and_ipv6_with_cookie_exchange(
    dtls_server: DtlsServer, pki: Path
) -> None:
    for address in dtls_server.bound:
        reply, conn = await roundtrip(
            connect_dtls, address.host, address.port, cert_client(Kind.DTLS, pki)
        )
        assert reply == b"echo:ping"
        local = {c.local.host for c in dtls_server.sessions.values()}
        assert address.host in local  # the session knows the address the client targeted
        conn.close()
    assert dtls_server.counters.hello_verify_requests >= 2
    assert dtls_server.counters.handshakes_completed == 2


class SlowHandshakes(HandshakeWorkers):
    """Handshake jobs that take 0.3 s: datagrams arriving meanwhile wait in the backlog."""

    def post(self, fn: Any, /, *args: Any) -> None:
        def slow() -> None:
            time.sleep(0.3)
            fn(*args)

        super().post(slow)


async def test_a_worker_queues_its_step_before_its_flight_leaves(
    dtls_server: DtlsServer, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer's answer to a flight wakes the loop; the step's result must be there by then
    # (or the loop would only find it when the 10 ms fallback timer fires).
    events: list[str] = []

    class Logged(deque):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            events.append("result")
            super().append(item)

    real_send = dtls_server_module.send

    def logged_send(*args: Any) -> bool:
        if threading.current_thread() is not threading.main_thread():
            events.append("flight")
        return real_send(*args)

    dtls_server._results = Logged()
    monkeypatch.setattr(dtls_server_module, "send", logged_send)
    address = dtls_server.bound[0]
    reply, conn = await roundtrip(connect_dtls, address.host, address.port,
                                  cert_client(Kind.DTLS, pki))
    assert reply == b"echo:ping"
    # Each step: its result, then its flight's datagrams (a step may send none).
    order = "".join("R" if e == "result" else "f" for e in events)
    assert re.fullmatch(r"(Rf*)+", order) and order.count("f") >= 2, order
    conn.close()


class CountedCookies(CookieSecrets):
    def __init__(self) -> None:
        super().__init__()
        self.verified: list[bool] = []

    def verify(self, peer: bytes, cookie: bytes) -> bool:
        self.verified.append(super().verify(peer, cookie))
        return self.verified[-1]


async def test_a_cookie_is_verified_once_per_handshake(dtls_server: DtlsServer, pki: Path) -> None:
    cookies = dtls_server.context.cookies = CountedCookies()
    address = dtls_server.bound[0]
    reply, conn = await roundtrip(connect_dtls, address.host, address.port,
                                  cert_client(Kind.DTLS, pki))
    assert reply == b"echo:ping"
    assert cookies.verified == [True]  # by DTLSv1_listen; not again in the first step
    conn.close()


async def test_datagrams_queued_behind_the_last_handshake_step_all_arrive(
    dtls_server: DtlsServer, pki: Path
) -> None:
    address = dtls_server.bound[0]
    ctx = cert_client(Kind.DTLS, pki)
    _, first = await roundtrip(connect_dtls, address.host, address.port, ctx)
    ticket = first.ticket
    first.close()
    assert ticket is not None
    dtls_server.executor = SlowHandshakes(1, "slow")
    try:
        # Resumed: the client finishes last and may send at once, while the server's worker
        # still processes its Finished.
        replies: list[bytes] = []
        conn = await connect_dtls(address.host, address.port, ctx, replies.append,
                                  server_name="localhost", timeout=5, resume=ticket)
        for i in range(3):
            conn.send(b"early %d" % i)
        for _ in range(100):
            if len(replies) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(replies) == [b"echo:early %d" % i for i in range(3)]
        assert all(c.backlog is None for c in dtls_server.sessions.values())
        conn.close()
    finally:
        dtls_server.executor.shutdown(wait=True)


async def drive_client(session: SecureSession, sock: socket.socket,
                       lose: Callable[[bytes], bool], *, retransmit: bool,
                       seconds: float = 8.0) -> None:
    """Run a client handshake over a plain UDP socket; ``lose`` picks the server's datagrams
    that never arrive. ``retransmit``: whether the client resends its own flights."""
    loop = asyncio.get_running_loop()
    for datagram in session.take_output():
        sock.send(datagram)
    end = loop.time() + seconds
    while session.state is State.HANDSHAKING and loop.time() < end:
        timer = session.timeout()
        wait = 0.05 if timer is None or not retransmit else min(max(timer, 0.001), 0.2)
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), wait)
        except TimeoutError:
            if retransmit:
                session.handle_timeout()
        else:
            if not lose(data):
                session.feed(data)
        for datagram in session.take_output():
            sock.send(datagram)


def first_of(kind: int, handshake_type: int | None = None) -> Callable[[bytes], bool]:
    """Lose the first datagram whose first record is ``kind`` (and that handshake type)."""
    lost: list[bytes] = []

    def lose(datagram: bytes) -> bool:
        if lost or datagram[0] != kind:
            return False
        if handshake_type is not None and datagram[13] != handshake_type:
            return False
        lost.append(datagram)
        return True

    return lose


@contextlib.contextmanager
def raw_client(server: DtlsServer, pki: Path) -> Iterator[tuple[socket.socket, SecureSession]]:
    """A client session over a plain UDP socket, its ClientHello made, for drive_client."""
    address = server.bound[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((address.host, address.port))
        client = SecureSession(cert_client(Kind.DTLS, pki), server_name="localhost")
        client.start()
        try:
            yield sock, client
        finally:
            client.free()


@pytest.fixture
async def patient_server(pki: Path) -> AsyncIterator[DtlsServer]:
    server = DtlsServer(server_context(Kind.DTLS, pki), Echo, Limits(handshake_deadline=10.0))
    await server.start([("127.0.0.1", 0)])
    yield server
    await server.stop()


async def test_server_retransmits_a_lost_flight_and_takes_up_its_last_step_unprompted(
    patient_server: DtlsServer, pki: Path
) -> None:
    # The client never resends: only the server's retransmission timer (armed from the
    # worker's step) can recover the lost ServerHello flight (RFC 6347 §4.2.4).
    with raw_client(patient_server, pki) as (sock, client):
        started = time.monotonic()
        await drive_client(client, sock, first_of(22, handshake_type=2), retransmit=False)
        assert client.state is State.ESTABLISHED
        assert time.monotonic() - started >= 0.5  # it waited for the server's timer
        # The client sends nothing more: the worker's last step still reaches the loop.
        for _ in range(100):
            if patient_server.counters.handshakes_completed == 1:
                break
            await asyncio.sleep(0.01)
        assert patient_server.counters.handshakes_completed == 1
        assert patient_server.jobs_running == 0


async def test_lost_final_flight_is_resent_when_the_client_repeats_its_own(
    patient_server: DtlsServer, pki: Path
) -> None:
    with raw_client(patient_server, pki) as (sock, client):
        await drive_client(client, sock, first_of(20), retransmit=True)  # CCS + Finished
        assert client.state is State.ESTABLISHED
        client.send(b"after the loss")
        for datagram in client.take_output():
            sock.send(datagram)
        loop = asyncio.get_running_loop()
        reply = client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65535), 5))
        assert reply == [b"echo:after the loss"]
        assert patient_server.counters.handshakes_completed == 1


async def test_refused_handshake_leaves_no_state(
    dtls_server: DtlsServer, pki: Path, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue"
    init_dev_pki(rogue)
    ctx = ClientContext(
        Kind.DTLS, ClientCredentials(rogue / "client.pem", rogue / "client.key", pki / "ca.pem")
    )
    address = dtls_server.bound[0]
    with pytest.raises(HandshakeError):
        await connect_dtls(
            address.host, address.port, ctx, lambda b: None, server_name="localhost", timeout=3
        )
    for _ in range(50):
        if not dtls_server.sessions:
            break
        await asyncio.sleep(0.02)
    assert dtls_server.sessions == {} and dtls_server.handshaking == 0
    assert dtls_server.counters.handshakes_failed == 1


async def test_garbage_datagrams_do_not_disturb_sessions(
    dtls_server: DtlsServer, pki: Path
) -> None:
    address = dtls_server.bound[0]
    reply, conn = await roundtrip(
        connect_dtls, address.host, address.port, cert_client(Kind.DTLS, pki)
    )
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for payload in (
            b"",
            b"\x00",
            b"\x16" * 13,
            b"\x16\xfe\xfd" + bytes(200),
            bytes(1500),
            b"\x17\xfe\xfd\x00\x01" + bytes(30),
        ):
            junk.sendto(payload, (address.host, address.port))
    finally:
        junk.close()
    await asyncio.sleep(0.1)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn.on_data = lambda b: got.done() or got.set_result(b)
    conn.send(b"after junk")
    assert await asyncio.wait_for(got, 5) == b"echo:after junk"
    assert dtls_server.counters.handshakes_completed == 1
    conn.close()


async def test_unfinished_handshakes_expire_and_caps_hold(dtls_server: DtlsServer) -> None:
    address = dtls_server.bound[0]
    # Real ClientHellos that never continue past the cookie: the cookie exchange keeps no
    # state, so none of them may create a session.
    from gateway.transport.secure_session import SecureSession

    ctx = ClientContext(Kind.DTLS, ClientCredentials(psk_identity=b"x", psk_key=b"y" * 16))
    socks = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            socks.append(s)
            hello = SecureSession(ctx)
            hello.start()
            for datagram in hello.take_output():
                s.sendto(datagram, (address.host, address.port))
            hello.free()
        await asyncio.sleep(0.2)
        assert dtls_server.sessions == {}
        assert dtls_server.counters.hello_verify_requests >= 20
    finally:
        for s in socks:
            s.close()


async def test_a_handshake_waiting_for_our_workers_outlives_its_deadline(
        dtls_server: DtlsServer, pki: Path) -> None:
    # Issue 21's failover storm: with the handshake workers behind (nice 19 on a busy core),
    # handshakes passed the deadline while their clients' flights waited in our queue, and
    # were closed; a resumed client already counts itself connected, so each close sent it
    # back into the storm (3,535 of 4,000 sessions at 512 in flight).
    threads = dtls_server.limits.handshake_threads
    release = threading.Event()
    for _ in range(threads):  # every worker stuck: the next step waits in the queue
        dtls_server.executor.post(release.wait, 30.0)
    address = dtls_server.bound[0]
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    connecting = asyncio.ensure_future(connect_dtls(
        address.host, address.port, cert_client(Kind.DTLS, pki),
        lambda b: got.done() or got.set_result(b), server_name="localhost", timeout=30))
    try:
        # Past the 1 s deadline, and past the sweep (every second) that would close it.
        for _ in range(100):
            await asyncio.sleep(0.05)
            if dtls_server.counters.handshakes_started:
                break
        assert dtls_server.counters.handshakes_started == 1
        await asyncio.sleep(2.5)
        assert dtls_server.counters.handshakes_timed_out == 0  # not closed
        assert dtls_server.counters.handshakes_waiting_on_us >= 1
    finally:
        release.set()
    conn = await asyncio.wait_for(connecting, 30)
    conn.send(b"ping")
    assert await asyncio.wait_for(got, 10) == b"echo:ping"
    assert dtls_server.counters.handshakes_timed_out == 0
    conn.close()


async def test_a_flight_resent_while_its_first_copy_waits_for_our_workers_is_dropped(
        dtls_server: DtlsServer, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 21's failover storm: a client waits ~9 s in our worker queue and its timer
    # resends its flight meanwhile (1 s, 2 s, 4 s). Each copy was queued and later fed to
    # OpenSSL in a worker step of its own, which discarded it: work that answered nothing,
    # on the core that was already behind.
    loop = asyncio.get_running_loop()
    address = dtls_server.bound[0]
    steps_on_a_client_hello = 0
    post = dtls_server.executor.post

    def counting_post(fn: Any, /, *args: Any) -> None:
        nonlocal steps_on_a_client_hello
        if args and isinstance(args[-1], bytes) and client_hello_random(args[-1]) is not None:
            steps_on_a_client_hello += 1
        post(fn, *args)

    monkeypatch.setattr(dtls_server.executor, "post", counting_post)
    client = SecureSession(cert_client(Kind.DTLS, pki), server_name="localhost")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    release = threading.Event()
    try:
        client.start()
        for datagram in client.take_output():
            await loop.sock_sendto(sock, datagram, (address.host, address.port))
        client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65535), 10))  # the cookie
        for _ in range(dtls_server.limits.handshake_threads):
            post(release.wait, 30.0)  # every worker stuck: the next step waits in the queue
        for datagram in client.take_output():  # the ClientHello with the cookie
            await loop.sock_sendto(sock, datagram, (address.host, address.port))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if dtls_server.counters.handshakes_started:
                break
        assert dtls_server.counters.handshakes_started == 1
        timeout = client.timeout()
        assert timeout is not None
        await asyncio.sleep(timeout + 0.05)
        client.handle_timeout()  # OpenSSL's own retransmission: new record sequence number
        resent = client.take_output()
        assert resent
        for datagram in resent:
            await loop.sock_sendto(sock, datagram, (address.host, address.port))
        arrived = dtls_server.counters.datagrams_in + len(resent)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if dtls_server.counters.datagrams_in >= arrived:
                break
        release.set()
        for _ in range(20):  # the handshake goes on from the first copy alone
            if client.state is not State.HANDSHAKING:
                break
            client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65535), 10))
            for datagram in client.take_output():
                await loop.sock_sendto(sock, datagram, (address.host, address.port))
        assert client.state is State.ESTABLISHED
        client.send(b"ping")
        for datagram in client.take_output():
            await loop.sock_sendto(sock, datagram, (address.host, address.port))
        answers: list[bytes] = []
        while not answers:
            answers = client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65535), 10))
        assert answers == [b"echo:ping"]
        assert steps_on_a_client_hello == 0  # the first copy was inside the SSL object
        assert dtls_server.counters.handshake_resends_dropped == len(resent)
    finally:
        release.set()
        client.free()
        sock.close()


async def test_a_handshake_the_peer_abandons_still_expires(dtls_server: DtlsServer,
                                                          pki: Path) -> None:
    """The deadline still closes a handshake whose peer went quiet after the cookie."""
    loop = asyncio.get_running_loop()
    address = dtls_server.bound[0]
    client = SecureSession(cert_client(Kind.DTLS, pki), server_name="localhost")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        client.start()
        for _ in range(2):  # ClientHello, then again with the cookie; then nothing more
            for datagram in client.take_output():
                await loop.sock_sendto(sock, datagram, (address.host, address.port))
            client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65535), 10))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if dtls_server.counters.handshakes_started:
                break
        assert dtls_server.counters.handshakes_started == 1
        for _ in range(100):  # deadline 1 s, sweep every 1 s: bounded generously
            await asyncio.sleep(0.1)
            if dtls_server.counters.handshakes_timed_out:
                break
        assert dtls_server.counters.handshakes_timed_out == 1
        assert dtls_server.sessions == {}
    finally:
        client.free()
        sock.close()


async def test_idle_sessions_are_closed_and_active_ones_kept(pki: Path) -> None:
    """The idle timeout, checked per session when due rather than by a pass over the whole
    table every second: the silent session goes, the talking one stays."""
    server = DtlsServer(server_context(Kind.DTLS, pki), Echo,
                        Limits(handshake_deadline=1.0, idle_timeout=2.0))
    await server.start([("127.0.0.1", 0)])
    try:
        address = server.bound[0]
        ctx = cert_client(Kind.DTLS, pki)
        _, silent = await roundtrip(connect_dtls, address.host, address.port, ctx)
        echoes: list[bytes] = []
        talking = await connect_dtls(address.host, address.port, ctx, echoes.append,
                                     server_name="localhost", timeout=5)
        deadline = time.monotonic() + 30
        while server.counters.sessions_idle_closed == 0:
            assert time.monotonic() < deadline, "the silent session was never closed"
            talking.send(b"still here")
            await asyncio.sleep(0.3)
        assert server.counters.sessions_idle_closed == 1 and len(server.sessions) == 1
        before = len(echoes)
        talking.send(b"and now?")
        while len(echoes) == before:
            assert time.monotonic() < deadline, "the talking session was closed too"
            await asyncio.sleep(0.05)
        silent.close()
        talking.close()
    finally:
        await server.stop()


async def test_port_in_use_refuses_to_start(dtls_server: DtlsServer) -> None:
    taken = dtls_server.bound[0]
    with pytest.raises(PortInUse, match="already in use"):
        open_udp_socket(taken.host, taken.port)


def test_freebind_binds_an_address_not_on_the_host() -> None:
    sock = open_udp_socket("192.0.2.46", 0)  # documentation address, never configured here
    try:
        assert sock.getsockname()[0] == "192.0.2.46"
    finally:
        sock.close()
    with pytest.raises(OSError):
        open_udp_socket("192.0.2.46", 0, freebind=False).close()


@pytest.mark.parametrize("use_psk", [False, True])
async def test_tls_echo_and_resumption(pki: Path, use_psk: bool) -> None:
    server = TlsServer(server_context(Kind.TLS, pki), Echo)
    await server.start([("127.0.0.1", 0), ("::1", 0)])
    try:
        if use_psk:
            psk = json.loads((pki / "psk.json").read_text())
            ctx = ClientContext(
                Kind.TLS,
                ClientCredentials(
                    psk_identity=psk["identity"].encode(), psk_key=psk["key"].encode()
                ),
            )
        else:
            ctx = cert_client(Kind.TLS, pki)
        for address in server.bound:
            reply, conn = await roundtrip(connect_tls, address.host, address.port, ctx)
            assert reply == b"echo:ping"
            ticket = conn.ticket
            conn.close()
            if not use_psk:
                reply, again = await roundtrip(
                    connect_tls, address.host, address.port, ctx, resume=ticket
                )
                assert again.session.resumed
                again.close()
    finally:
        await server.stop()
    assert server.connections == set()


async def test_tls_unfinished_handshakes_are_closed_at_the_deadline(pki: Path) -> None:
    server = TlsServer(
        server_context(Kind.TLS, pki), Echo, StreamLimits(handshake_deadline=1.0, max_handshakes=50)
    )
    await server.start([("127.0.0.1", 0)])
    address = server.bound[0]
    writers = []
    try:
        for _ in range(30):
            _reader, writer = await asyncio.open_connection(address.host, address.port)
            writers.append(writer)
        await asyncio.sleep(0.2)
        assert len(server.connections) == 30
        await asyncio.sleep(2.0)
        assert server.connections == set()
        assert server.counters.handshakes_timed_out == 30
    finally:
        for w in writers:
            w.close()
        await server.stop()


async def test_a_tls_handshake_waiting_for_our_workers_outlives_its_deadline(pki: Path) -> None:
    # The DTLS rule (issue 21's failover storm) for TLS: the delay was ours, not the peer's.
    server = TlsServer(server_context(Kind.TLS, pki), Echo,
                       StreamLimits(handshake_deadline=1.0, handshake_threads=1))
    await server.start([("127.0.0.1", 0)])
    address = server.bound[0]
    release = threading.Event()
    server.executor.submit(release.wait, 30.0)  # the only worker stuck
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    connecting = asyncio.ensure_future(connect_tls(
        address.host, address.port, cert_client(Kind.TLS, pki),
        lambda b: got.done() or got.set_result(b), server_name="localhost", timeout=30))
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if any(conn.busy for conn in server.connections):
                break
        assert server.handshaking() == 1
        await asyncio.sleep(2.5)  # past the 1 s deadline and the sweep (every second)
        assert server.counters.handshakes_timed_out == 0
        assert server.counters.handshakes_waiting_on_us >= 1
    finally:
        release.set()
    conn = await asyncio.wait_for(connecting, 30)
    try:
        conn.send(b"ping")
        assert await asyncio.wait_for(got, 10) == b"echo:ping"
        assert server.counters.handshakes_timed_out == 0 and server.handshaking() == 0
    finally:
        conn.close()
        await server.stop()


async def test_tls_connection_cap_refuses_extra_clients(pki: Path) -> None:
    server = TlsServer(server_context(Kind.TLS, pki), Echo, StreamLimits(max_handshakes=3))
    await server.start([("127.0.0.1", 0)])
    address = server.bound[0]
    writers = []
    try:
        for _ in range(5):
            _reader, writer = await asyncio.open_connection(address.host, address.port)
            writers.append(writer)
        await asyncio.sleep(0.2)
        assert len(server.connections) == 3
        assert server.counters.refused_handshake_limit == 2
    finally:
        for w in writers:
            w.close()
        await server.stop()


async def test_our_sequence_exhaustion_closes_the_session_and_tells_the_handler(
    dtls_server: DtlsServer, pki: Path
) -> None:
    address = dtls_server.bound[0]
    reply, conn = await roundtrip(
        connect_dtls, address.host, address.port, cert_client(Kind.DTLS, pki)
    )
    assert reply == b"echo:ping"
    (server_side,) = dtls_server.sessions.values()
    handler = server_side.handler  # a closed connection lets go of it
    records = server_side.session._records
    assert records is not None  # handed over
    records.start_writing_at(2**48)  # RFC 6347 §4.1: no sequence number is left to send with
    conn.send(b"one more")  # the echo cannot be sent: the session must end, not linger
    for _ in range(100):
        if not dtls_server.sessions:
            break
        await asyncio.sleep(0.02)
    assert dtls_server.sessions == {} and server_side.handler is None
    assert handler is not None
    assert "exhausted" in handler.lost[0]  # type: ignore[attr-defined]
    conn.close()


#: The CBC suite our PSK contexts offer: the server's sessions on it stay on OpenSSL.
CBC_SUITE = "ECDHE-PSK-AES128-CBC-SHA256"


def psk_client(pki: Path, cipher: str) -> ClientContext:
    psk = json.loads((pki / "psk.json").read_text())
    context = ClientContext(
        Kind.DTLS,
        ClientCredentials(psk_identity=psk["identity"].encode(), psk_key=psk["key"].encode()),
    )
    assert ssl.SSL_CTX_set_cipher_list(context.ptr, cipher.encode()) == 1
    return context


def short_record(length: int, seq: int = 1000) -> bytes:
    """An epoch-1 application data record of ``length`` bytes: it needs no key."""
    return b"\x17\xfe\xfd\x00\x01" + seq.to_bytes(6, "big") + length.to_bytes(2, "big") \
        + bytes(length)


async def connect_and_echo(
    dtls_server: DtlsServer, context: ClientContext, payload: bytes, *, before: bytes = b""
) -> tuple[Any, asyncio.Queue[bytes], list[str]]:
    """A client session, ``before`` sent from its socket right after the handshake (the
    server still on OpenSSL), then ``payload``; returns once it is echoed."""
    address = dtls_server.bound[0]
    echoes: asyncio.Queue[bytes] = asyncio.Queue()
    lost: list[str] = []
    conn = await connect_dtls(address.host, address.port, context, echoes.put_nowait,
                              server_name="localhost", timeout=5, on_lost=lost.append)
    if before:
        conn.transport.sendto(before)  # from the client's own 4-tuple
    conn.send(payload)
    assert await asyncio.wait_for(echoes.get(), 5) == b"echo:" + payload
    return conn, echoes, lost


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", CBC_SUITE])
async def test_a_record_too_short_to_authenticate_leaves_both_ends_working(
    dtls_server: DtlsServer, pki: Path, suite: str
) -> None:
    # RFC 6347 §4.1.2.7: anyone who knows the 4-tuple can send such a record; OpenSSL 3.0
    # took it for an internal error, and its session read nothing more.
    context = cert_client(Kind.DTLS, pki) if "ECDSA" in suite else psk_client(pki, suite)
    conn, echoes, lost = await connect_and_echo(
        dtls_server, context, b"first", before=short_record(23)
    )
    (server_side,) = dtls_server.sessions.values()
    assert server_side.session.cipher == suite
    # The client's session (always on OpenSSL), as if from the server's address.
    conn.datagram_received(short_record(15), conn.transport.get_extra_info("peername"))
    conn.send(b"second")
    assert await asyncio.wait_for(echoes.get(), 5) == b"echo:second"
    assert not conn.closed and lost == []
    assert server_side.handler is not None and server_side.handler.lost == []  # type: ignore[attr-defined]
    assert list(dtls_server.sessions.values()) == [server_side]
    conn.close()


async def test_an_error_openssl_reports_closes_the_session_at_both_ends(
    dtls_server: DtlsServer, pki: Path
) -> None:
    # CBC with encrypt-then-MAC: OpenSSL 3.0 answers a forged record of any length with a
    # fatal bad_record_mac. The session must end and its users be told, not linger.
    conn, _, lost = await connect_and_echo(dtls_server, psk_client(pki, CBC_SUITE), b"first")
    (server_side,) = dtls_server.sessions.values()
    handler = server_side.handler  # a closed connection lets go of it
    conn.transport.sendto(short_record(64))
    for _ in range(100):
        if not dtls_server.sessions and conn.closed:
            break
        await asyncio.sleep(0.02)
    assert dtls_server.sessions == {}
    assert handler is not None
    assert "bad record mac" in handler.lost[0]  # type: ignore[attr-defined]
    assert conn.closed and "alert" in lost[0]  # the server's fatal alert reached the client
