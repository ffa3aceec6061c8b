"""The DTLS client side: one connected UDP socket per session, asyncio-driven.

Used by the DOTS client role (towards upstream servers) and by tests. The handshake runs on
the event loop: a client has few sessions, and its peers' flights arrive one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.transport.openssl_ffi import OpenSSLError
from gateway.transport.secure_session import DEFAULT_DATAGRAM_SIZE, SecureSession, State
from gateway.transport.tls_context import ClientContext, Kind

log = logging.getLogger(__name__)


class HandshakeError(ConnectionError):
    pass


class ClientConnection:
    """What a client (D)TLS connection does whatever carries its bytes: feed the session,
    report the handshake outcome once, deliver records, send, close, free on finish."""

    kind = "DTLS"

    def __init__(self, session: SecureSession, on_data: Callable[[bytes], None],
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.on_data = on_data
        self.on_lost = on_lost
        self.transport: Any = None
        self.established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def _received(self, data: bytes) -> None:
        if self.closed:
            return
        records = self.session.feed(data)
        self._flush()
        if self.session.state is State.ESTABLISHED and not self.established.done():
            self._handshake_over()
            self.established.set_result(None)
        elif self.session.state is State.HANDSHAKING:
            self._handshake_pending()
        for record in records:
            self.on_data(record)
        if self.session.state in (State.FAILED, State.CLOSED):
            self._finish(self.session.failure or "closed by peer")

    def send(self, plaintext: bytes) -> None:
        if self.closed:
            raise ConnectionError(f"{self.kind} session is closed")
        self.session.send(plaintext)
        self._flush()

    def close(self) -> None:
        if not self.closed and self.session.state is State.ESTABLISHED:
            self.session.close()
            self._flush()
        self._finish("closed locally")

    @property
    def ticket(self) -> bytes | None:
        return self.session.session_ticket()

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for chunk in self.session.take_output():
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _handshake_pending(self) -> None:
        """Still handshaking after input (DTLS re-arms its retransmission timer)."""

    def _handshake_over(self) -> None:
        """The handshake finished (DTLS stops its retransmission timer)."""

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._handshake_over()
        if not self.established.done():
            self.established.set_exception(HandshakeError(reason))
        if self.transport is not None:
            self.transport.close()
        self.session.free()
        if self.on_lost is not None:
            self.on_lost(reason)


class DtlsClientConnection(ClientConnection, asyncio.DatagramProtocol):
    """A DTLS session to one server. ``on_data`` gets each decrypted application record."""

    def __init__(self, session: SecureSession, on_data: Callable[[bytes], None],
                 on_lost: Callable[[str], None] | None = None) -> None:
        super().__init__(session, on_data, on_lost)
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.session.start()
        self._flush()
        self._handshake_pending()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the server is not there (any more).
        if not self.established.done():
            self._finish(f"network error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("socket closed")

    def close(self) -> None:
        if not self.closed:
            self.session.close()  # close_notify even mid-handshake: the server frees at once
            self._flush()
        self._finish("closed locally")

    def _write(self, chunk: bytes) -> None:
        self.transport.sendto(chunk)

    def _handshake_pending(self) -> None:
        self._handshake_over()
        delay = self.session.timeout()
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.session.handle_timeout()
        self._flush()
        if self.session.state is State.FAILED:
            self._finish(self.session.failure or "handshake timed out")
        else:
            self._handshake_pending()

    def _handshake_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def await_handshake(protocol: ClientConnection, host: str, port: int,
                          timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except TimeoutError:
        protocol._finish("handshake timed out")
        _nobody_waits(protocol.established)
        raise HandshakeError(f"{protocol.kind} handshake with {host}:{port} timed out") from None
    except BaseException:
        # Cancelled (a losing Happy Eyeballs attempt) or failed: the caller gets no
        # connection to close, so release the socket and the OpenSSL state here.
        protocol._finish("connection attempt abandoned")
        _nobody_waits(protocol.established)
        raise


def _nobody_waits(established: asyncio.Future[None]) -> None:
    """The handshake's outcome has no reader left (its shield was cancelled): take the
    exception ``_finish`` set, or asyncio logs "Future exception was never retrieved" when the
    future is collected, in whatever code runs then."""
    if established.done() and not established.cancelled():
        established.exception()


async def connect_dtls(
    host: str,
    port: int,
    context: ClientContext,
    on_data: Callable[[bytes], None],
    *,
    server_name: str | None = None,
    resume: bytes | None = None,
    timeout: float = 10.0,
    on_lost: Callable[[str], None] | None = None,
    datagram_size: int = DEFAULT_DATAGRAM_SIZE,
    local_addr: tuple[str, int] | None = None,
) -> DtlsClientConnection:
    """Open a DTLS session; raises ``HandshakeError`` (refused, timed out) or OSError.
    ``local_addr``: the socket's own address and port (default: chosen by the system)."""
    if context.kind is not Kind.DTLS:
        raise ValueError("connect_dtls needs a DTLS client context")
    try:
        session = SecureSession(
            context, server_name=server_name, resume=resume, datagram_size=datagram_size
        )
    except OpenSSLError as exc:
        raise HandshakeError(str(exc)) from None
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: DtlsClientConnection(session, on_data, on_lost), remote_addr=(host, port),
        local_addr=local_addr,
    )
    await await_handshake(protocol, host, port, timeout)
    return protocol
