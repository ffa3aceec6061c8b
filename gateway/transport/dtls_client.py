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


class DtlsClientConnection(asyncio.DatagramProtocol):
    """A DTLS session to one server. ``on_data`` gets each decrypted application record."""

    def __init__(
        self,
        session: SecureSession,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.session = session
        self.on_data = on_data
        self.on_lost = on_lost
        self.transport: asyncio.DatagramTransport | None = None
        self.established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session.start()
        self._flush()
        self._arm()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.closed:
            return
        records = self.session.feed(data)
        self._flush()
        if self.session.state is State.ESTABLISHED and not self.established.done():
            self._cancel_timer()
            self.established.set_result(None)
        elif self.session.state is State.HANDSHAKING:
            self._arm()
        for record in records:
            self.on_data(record)
        if self.session.state in (State.FAILED, State.CLOSED):
            self._finish(self.session.failure or "closed by peer")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the server is not there (any more).
        if not self.established.done():
            self._finish(f"network error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("socket closed")

    # API
    def send(self, plaintext: bytes) -> None:
        if self.closed:
            raise ConnectionError("DTLS session is closed")
        self.session.send(plaintext)
        self._flush()

    def close(self) -> None:
        if not self.closed:
            self.session.close()
            self._flush()
        self._finish("closed locally")

    @property
    def ticket(self) -> bytes | None:
        return self.session.session_ticket()

    # internals
    def _flush(self) -> None:
        if self.transport is None:
            return
        for datagram in self.session.take_output():
            self.transport.sendto(datagram)

    def _arm(self) -> None:
        self._cancel_timer()
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
            self._arm()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        if not self.established.done():
            self.established.set_exception(HandshakeError(reason))
        if self.transport is not None:
            self.transport.close()
        self.session.free()
        if self.on_lost is not None:
            self.on_lost(reason)


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
) -> DtlsClientConnection:
    """Open a DTLS session; raises ``HandshakeError`` (refused, timed out) or OSError."""
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
        lambda: DtlsClientConnection(session, on_data, on_lost), remote_addr=(host, port)
    )
    try:
        await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except TimeoutError:
        protocol._finish("handshake timed out")
        raise HandshakeError(f"DTLS handshake with {host}:{port} timed out") from None
    except HandshakeError:
        raise
    return protocol
