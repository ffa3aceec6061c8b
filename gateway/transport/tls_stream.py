"""TLS over TCP (coaps+tcp, RFC 8323) server and client on the same OpenSSL sessions.

Server connections that do not finish their handshake by the deadline are closed and
their OpenSSL state freed (the prototype's TCP listener kept one object per unfinished
handshake forever). Handshake steps run in worker threads, one at a time per connection.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.transport.dtls_client import ClientConnection, HandshakeError, await_handshake
from gateway.transport.dtls_sessions import SessionHandler
from gateway.transport.endpoint import HANDSHAKE_NICE, EndpointBase
from gateway.transport.openssl_ffi import OpenSSLError
from gateway.transport.secure_session import PeerCredential, SecureSession, State
from gateway.transport.session_deadlines import SessionDeadlines
from gateway.transport.tls_context import ClientContext, Kind, ServerContext
from gateway.transport.udp import IP_FREEBIND, IPV6_FREEBIND, Address, PortInUse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    max_connections: int = 20_000
    max_handshakes: int = 512
    handshake_deadline: float = 20.0
    idle_timeout: float = 6 * 3600.0
    handshake_threads: int = 2
    handshake_nice: int = HANDSHAKE_NICE
    #: Unsent bytes allowed per connection before we stop reading from it.
    write_buffer_high: int = 256 * 1024


@dataclass
class StreamCounters:
    accepted: int = 0
    refused_connection_limit: int = 0
    refused_handshake_limit: int = 0
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    handshakes_timed_out: int = 0
    #: Handshakes past their deadline while their next step waited for our workers: given
    #: another deadline rather than closed (the delay was ours, not the peer's).
    handshakes_waiting_on_us: int = 0
    closed: int = 0
    idle_closed: int = 0
    resumed: int = 0


class TlsConnection(asyncio.Protocol):
    """One accepted TCP connection with its TLS session."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.session = SecureSession(server.context)
        self.transport: asyncio.Transport | None = None
        self.local = Address("", 0)
        self.remote = Address("", 0)
        self.handler: SessionHandler | None = None
        self.busy = False
        self.backlog: deque[bytes] = deque()
        self.created_at = server.clock()
        self.last_activity = self.created_at
        self.closed = False
        #: Counted in the server's handshakes until established or closed.
        self.handshaking = False

    @property
    def kind(self) -> Kind:
        return Kind.TLS

    @property
    def peer(self) -> PeerCredential | None:
        return self.session.peer

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        self.local = Address(sockname[0], sockname[1])
        self.remote = Address(peername[0], peername[1])
        refusal = self.server._admit(self)
        if refusal is not None:
            self.server._rate_limited_event(refusal, "handshake.refused", "connection refused",
                                            peer=self.remote, reason=refusal)
            self._teardown(refusal, notify=False)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = self.server.clock()
        if self.busy or self.session.state is State.HANDSHAKING:
            self.backlog.append(data)
            if len(self.backlog) > 64:
                self._teardown("handshake flood", notify=False)
                return
            self._pump()
            return
        self._deliver(self.session.feed(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown(
            "peer closed the connection" if exc is None else f"connection error: {exc}", notify=True
        )

    # API for the layer above
    def send(self, plaintext: bytes) -> None:
        if self.closed:
            raise ConnectionError("TLS connection is closed")
        self.session.send(plaintext)
        self._flush()

    def close(self, reason: str = "closed locally") -> None:
        self._teardown(reason, notify=True)

    # internals
    def _pump(self) -> None:
        if self.busy or not self.backlog or self.closed:
            return
        data = b"".join(self.backlog)
        self.backlog.clear()
        self.busy = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.server.executor, self.session.feed, data)
        future.add_done_callback(self._step_done)

    def _step_done(self, future: asyncio.Future[list[bytes]]) -> None:
        self.busy = False
        if self.closed:
            self.session.free()
            return
        if future.cancelled() or future.exception() is not None:
            self._teardown(f"handshake error: {future.exception()!r}", notify=False)
            return
        self._flush()
        state = self.session.state
        if state is State.FAILED:
            self.server.counters.handshakes_failed += 1
            self.server._rate_limited_event("tls-failed", "handshake.failed", "handshake failed",
                                            peer=self.remote, local=self.local,
                                            reason=self.session.failure)
            self._teardown(self.session.failure or "handshake failed", notify=False)
            return
        if state is State.ESTABLISHED and self.handler is None:
            self.server._established(self)
            if self.closed:
                return
        self._deliver(future.result())
        if self.backlog:
            if self.session.state is State.HANDSHAKING:
                self._pump()
            else:
                pending = b"".join(self.backlog)
                self.backlog.clear()
                self._deliver(self.session.feed(pending))

    def _deliver(self, records: list[bytes]) -> None:
        self._flush()
        for record in records:
            if self.handler is not None:
                try:
                    self.handler.data_received(record)
                except Exception:
                    log.exception("handler error for %s", self.remote)
        if self.session.state in (State.CLOSED, State.FAILED):
            self._teardown(self.session.failure or "peer closed", notify=True)

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for chunk in self.session.take_output():
            self.transport.write(chunk)

    def _teardown(self, reason: str, *, notify: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.server._forget(self)
        if not self.busy:
            if self.session.state is State.ESTABLISHED:
                self.session.close()
                self._flush()
            self.session.free()
        if self.transport is not None:
            self.transport.close()
        # Dropped here, so that the connection and its session layers (which point back
        # at it) are freed by reference counting, not left for a full garbage collection.
        handler, self.handler = self.handler, None
        if notify and handler is not None:
            try:
                handler.connection_lost(reason)
            except Exception:
                log.exception("handler error on close for %s", self.remote)


class TlsServer(EndpointBase):
    KIND = Kind.TLS

    def __init__(
        self,
        context: ServerContext,
        on_session: Callable[[TlsConnection], SessionHandler],
        limits: StreamLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or StreamLimits()
        super().__init__(context, self.limits.handshake_threads, clock=clock,
                         nice=self.limits.handshake_nice)
        self.on_session = on_session
        self.counters = StreamCounters()
        self.connections: set[TlsConnection] = set()
        #: Accepted connections not yet established: counted, not looked up (``_admit``
        #: runs for every new connection, and a pass over 50,000 sessions each time made a
        #: reconnect storm quadratic).
        self._handshakes = 0
        #: Handshake deadlines and idle timeouts, looked at without a pass over the table.
        self.deadlines = SessionDeadlines()
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, addresses: list[tuple[str, int]], *, freebind: bool = True) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in addresses:
                sock = open_tcp_listener(host, port, freebind=freebind)
                server = await loop.create_server(lambda: TlsConnection(self), sock=sock)
                self._servers.append(server)
                log.debug("tls listening on %s", Address(host, sock.getsockname()[1]))
        except BaseException:
            await self.stop()
            raise
        if self._sweeper is not None:
            self._sweeper.cancel()  # start() twice must not leave a second sweeper running
        self._sweeper = loop.call_later(1.0, self._sweep)

    @property
    def bound(self) -> list[Address]:
        return [Address(*s.sockets[0].getsockname()[:2]) for s in self._servers]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close("server shutting down")
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def handshaking(self) -> int:
        return self._handshakes

    def _admit(self, conn: TlsConnection) -> str | None:
        if len(self.connections) >= self.limits.max_connections:
            self.counters.refused_connection_limit += 1
            return "connection limit reached"
        if self._handshakes >= self.limits.max_handshakes:
            self.counters.refused_handshake_limit += 1
            return "concurrent handshake limit reached"
        self.connections.add(conn)
        self.counters.accepted += 1
        conn.handshaking = True
        self._handshakes += 1
        self.deadlines.started(conn)
        return None

    def _handshake_over(self, conn: TlsConnection) -> None:
        if conn.handshaking:
            conn.handshaking = False
            self._handshakes -= 1

    def _established(self, conn: TlsConnection) -> None:
        self._handshake_over(conn)
        self.counters.handshakes_completed += 1
        if conn.session.resumed:
            self.counters.resumed += 1
        self._handshake_took(self.clock() - conn.created_at)
        log.debug(  # the role logs session.established
            "tls handshake completed peer=%s local=%s cipher=%s resumed=%s",
            conn.remote,
            conn.local,
            conn.session.cipher,
            conn.session.resumed,
        )
        try:
            conn.handler = self.on_session(conn)
        except Exception:
            log.exception("session handler refused %s", conn.remote)
            conn.close("no handler")

    def _forget(self, conn: TlsConnection) -> None:
        self._handshake_over(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            self.counters.closed += 1

    def _sweep(self) -> None:
        now = self.clock()
        idle_timeout = self.limits.idle_timeout
        for conn in list(self.deadlines.past_handshake_deadline(
                now, self.limits.handshake_deadline)):
            if conn.closed:
                continue
            if conn.handler is None:
                if conn.busy:
                    # Its next step waits for our workers, not for the peer: closing it
                    # would send the client back into the storm that made us slow.
                    self.counters.handshakes_waiting_on_us += 1
                    self.deadlines.look_again(conn, now)
                    continue
                self.counters.handshakes_timed_out += 1
                conn._teardown("handshake deadline passed", notify=False)
            else:
                self.deadlines.watch_idle(conn, conn.last_activity + idle_timeout)
        for conn in list(self.deadlines.idle_candidates(now)):
            if conn.closed:
                continue
            if now - conn.last_activity >= idle_timeout:
                self.counters.idle_closed += 1
                conn.close("idle timeout")
            else:
                self.deadlines.watch_idle(conn, conn.last_activity + idle_timeout)
        self.deadlines.compact(len(self.connections), lambda conn: not conn.closed)
        self._trim_after_closes(self.counters.closed)
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)



def open_tcp_listener(
    host: str, port: int, *, freebind: bool = True, backlog: int = 1024
) -> socket.socket:
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR on a TCP listener only skips TIME_WAIT on restart; unlike UDP it does
        # not let a second listener share the port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if freebind:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        elif freebind:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"TCP {Address(host, port)} is already in use") from None
            raise
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


class TlsClientConnection(ClientConnection, asyncio.Protocol):
    kind = "TLS"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.session.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("connection closed")

    def _write(self, chunk: bytes) -> None:
        self.transport.write(chunk)


async def connect_tls(
    host: str,
    port: int,
    context: ClientContext,
    on_data: Callable[[bytes], None],
    *,
    server_name: str | None = None,
    resume: bytes | None = None,
    timeout: float = 10.0,
    on_lost: Callable[[str], None] | None = None,
) -> TlsClientConnection:
    if context.kind is not Kind.TLS:
        raise ValueError("connect_tls needs a TLS client context")
    try:
        session = SecureSession(context, server_name=server_name, resume=resume)
    except OpenSSLError as exc:
        raise HandshakeError(str(exc)) from None
    loop = asyncio.get_running_loop()
    _transport, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: TlsClientConnection(session, on_data, on_lost), host, port),
        timeout,
    )
    await await_handshake(protocol, host, port, timeout)
    return protocol
