"""Reaching a DOTS server: server URIs, candidate endpoints, and Happy Eyeballs (RFC 9132 §4.3).

A server is named by a ``ServerSpec`` (host, port, which transports). Its candidates are
tried in the RFC's order of preference: UDP/IPv6, UDP/IPv4, TCP/IPv6, TCP/IPv4. Attempts
start one after the other, each ``attempt_delay`` after the previous one (or at once when
the previous one failed); the first (D)TLS session established wins and the others are
closed. The winner is cached ~10 minutes, which also keeps a client that ended up on TLS
from re-probing DTLS more often than every 5 minutes (§4.3 MUST NOT).

The connection helpers wrap ``connect_dtls``/``connect_tls`` semantics but close the socket
and free the OpenSSL state when the waiting task is cancelled, which losing Happy Eyeballs
attempts always are.

Owns: ordering and racing. Must not import the DOTS role modules.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.dots.codes import DEFAULT_PORT
from gateway.transport.dtls_client import DtlsClientConnection, HandshakeError
from gateway.transport.openssl_ffi import OpenSSLError
from gateway.transport.secure_session import SecureSession
from gateway.transport.tls_context import ClientContext
from gateway.transport.tls_stream import TlsClientConnection

log = logging.getLogger(__name__)

#: RFC 8305 §5 recommends 250 ms between connection attempts.
DEFAULT_ATTEMPT_DELAY = 0.25
#: RFC 9132 §4.3: during an attack, a Connection Attempt Delay of 100 ms.
ATTACK_ATTEMPT_DELAY = 0.1
#: RFC 9132 §4.3: cache the outcome "for a few minutes (e.g., 10 min)".
CACHE_TTL = 600.0
LOCALHOST_ADDRESSES = ("::1", "127.0.0.1")

T = TypeVar("T")


class NetworkError(ConnectionError):
    """No usable signal channel: handshake refused or timed out, no answer in time."""


class Transport(enum.Enum):
    UDP = "udp"  # CoAP over DTLS, coaps://
    TCP = "tcp"  # CoAP over TLS, coaps+tcp://

    @property
    def scheme(self) -> str:
        return "coaps" if self is Transport.UDP else "coaps+tcp"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A DOTS server as configured: a name or address, a port and the transports to try."""

    host: str
    port: int = DEFAULT_PORT
    transports: tuple[Transport, ...] = (Transport.UDP, Transport.TCP)
    #: The name the server certificate must match (RFC 9132 §7.1); default ``host``.
    server_name: str | None = None
    #: Known addresses, used instead of resolving ``host`` (a redirect's alt-server-record,
    #: RFC 9132 §4.6).
    addresses: tuple[str, ...] = ()

    @property
    def reference_identifier(self) -> str:
        return self.server_name or self.host

    @property
    def cache_key(self) -> str:
        return f"{self.host}|{self.port}|{','.join(t.value for t in self.transports)}"

    @property
    def names(self) -> set[str]:
        """Every name or address this server goes by (for the RFC 9132 §4.6 loop rule)."""
        return {self.host, self.reference_identifier, *self.addresses}

    def reached(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is one of this server's."""
        return endpoint.port == self.port and (
            endpoint.server_name == self.reference_identifier
            or endpoint.address in self.addresses)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One candidate: a transport and an IP address."""

    transport: Transport
    address: str
    port: int
    server_name: str

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def uri(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.transport.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.uri


def parse_server(text: str) -> ServerSpec:
    """``coaps://host[:port]``, ``coaps+tcp://host[:port]`` or a bare ``host[:port]`` (both
    transports, Happy Eyeballs between them). IPv6 literals go in brackets."""
    transports: tuple[Transport, ...]
    if "://" in text:
        parts = urlsplit(text)
        schemes = {"coaps": (Transport.UDP,), "coaps+tcp": (Transport.TCP,)}
        if parts.scheme not in schemes:
            raise ValueError(f"{text!r}: the scheme must be coaps or coaps+tcp (RFC 9132 §3)")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{text!r}: give only scheme, host and port")
        transports = schemes[parts.scheme]
    else:
        parts = urlsplit("//" + text)
        transports = (Transport.UDP, Transport.TCP)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if not host:
        raise ValueError(f"{text!r} names no host")
    return ServerSpec(host, DEFAULT_PORT if port is None else port, transports)


def alternate_server(alt_server: str, addresses: Sequence[str], port: int,
                     transports: Sequence[Transport]) -> ServerSpec:
    """Where a redirect sends us (RFC 9132 §4.6): ``alt-server`` is the name its certificate
    must match (§7.1, as DNS-ID) and ``alt-server-record`` spares resolving it. A redirect
    names no port: the alternate server listens on the port of the server that redirected
    (a fleet serves one DOTS port, 4646 by default)."""
    return ServerSpec(alt_server, port, tuple(transports) or (Transport.UDP, Transport.TCP),
                      server_name=alt_server, addresses=tuple(addresses))


def order_candidates(spec: ServerSpec, addresses: Sequence[str]) -> list[Endpoint]:
    """RFC 9132 §4.3 order: UDP/IPv6, UDP/IPv4, TCP/IPv6, TCP/IPv4 (resolver order kept
    within a family, duplicates dropped)."""
    unique = list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in addresses))
    by_family = {6: [a for a in unique if ":" in a], 4: [a for a in unique if ":" not in a]}
    return [Endpoint(transport, address, spec.port, spec.reference_identifier)
            for transport in (Transport.UDP, Transport.TCP) if transport in spec.transports
            for family in (6, 4) for address in by_family[family]]


async def resolve(spec: ServerSpec) -> list[Endpoint]:
    """The candidates of ``spec``: its ``addresses`` if it has some, else ``host`` resolved;
    ``localhost`` always means both loopback addresses (RFC 6761 §6.3), whatever /etc/hosts
    says."""
    try:
        ipaddress.ip_address(spec.host)
        addresses = [spec.host]
    except ValueError:
        if spec.addresses:
            return _nonempty(spec, order_candidates(spec, spec.addresses))
        if spec.host.lower().rstrip(".") == "localhost":
            addresses = list(LOCALHOST_ADDRESSES)
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(spec.host, spec.port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise NetworkError(f"cannot resolve {spec.host}: {exc}") from None
            addresses = [str(info[4][0]) for info in infos
                         if info[0] in (socket.AF_INET, socket.AF_INET6)]
    return _nonempty(spec, order_candidates(spec, addresses))


def _nonempty(spec: ServerSpec, candidates: list[Endpoint]) -> list[Endpoint]:
    if not candidates:
        raise NetworkError(f"{spec.host} has no IPv4 or IPv6 address")
    return candidates


async def happy_eyeballs(candidates: Sequence[Endpoint],
                         attempt: Callable[[Endpoint], Awaitable[T]],
                         delay: float, *, close: Callable[[T], None]) -> tuple[Endpoint, T]:
    """Race ``attempt`` over ``candidates`` in order, starting the next one ``delay`` seconds
    after the previous (at once after a failure). Returns the first success; every other
    attempt is cancelled, and one that succeeded anyway is passed to ``close``."""
    remaining = list(candidates)
    running: dict[asyncio.Task[T], Endpoint] = {}
    failures: list[str] = []
    try:
        while remaining or running:
            if remaining:
                endpoint = remaining.pop(0)
                log.debug("happy eyeballs: trying %s", endpoint)
                running[asyncio.ensure_future(attempt(endpoint))] = endpoint
            done, _ = await asyncio.wait(running, timeout=delay if remaining else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            winners: list[tuple[Endpoint, T]] = []
            for task in done:
                endpoint = running.pop(task)
                exc = task.exception()
                if exc is None:
                    winners.append((endpoint, task.result()))
                else:
                    failures.append(f"{endpoint}: {exc}")
                    log.info("happy eyeballs: %s failed: %s", endpoint, exc)
            if winners:
                winners.sort(key=lambda w: candidates.index(w[0]))
                for _endpoint, extra in winners[1:]:
                    close(extra)
                return winners[0]
        raise NetworkError("no DOTS server reachable: " + "; ".join(failures))
    finally:
        for task in running:
            task.cancel()
        for task in running:  # wait, so that cancelled attempts have closed their sockets
            try:
                result = await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: nothing to close
                continue
            close(result)


# --- opening connections ---------------------------------------------------------------------


async def open_dtls(endpoint: Endpoint, context: ClientContext, on_data: Callable[[bytes], None],
                    on_lost: Callable[[str], None], *, resume: bytes | None,
                    timeout: float) -> DtlsClientConnection:
    """``connect_dtls``, but a cancelled caller leaves no socket or OpenSSL state behind."""
    try:
        session = SecureSession(context, server_name=endpoint.server_name, resume=resume)
    except OpenSSLError as exc:
        raise HandshakeError(str(exc)) from None
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: DtlsClientConnection(session, on_data, on_lost),
        remote_addr=(endpoint.address, endpoint.port))
    await _await_established(protocol, endpoint, timeout)
    return protocol


async def open_tls(endpoint: Endpoint, context: ClientContext, on_data: Callable[[bytes], None],
                   on_lost: Callable[[str], None], *, resume: bytes | None,
                   timeout: float) -> TlsClientConnection:
    """``connect_tls``, with the same cleanup on cancellation as :func:`open_dtls`."""
    try:
        session = SecureSession(context, server_name=endpoint.server_name, resume=resume)
    except OpenSSLError as exc:
        raise HandshakeError(str(exc)) from None
    loop = asyncio.get_running_loop()
    try:
        _transport, protocol = await asyncio.wait_for(loop.create_connection(
            lambda: TlsClientConnection(session, on_data, on_lost), endpoint.address,
            endpoint.port), timeout)
    except BaseException:
        session.free()
        raise
    await _await_established(protocol, endpoint, timeout)
    return protocol


async def _await_established(protocol: Any, endpoint: Endpoint, timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except TimeoutError:
        protocol.close()
        raise HandshakeError(f"handshake with {endpoint} timed out") from None
    except BaseException:
        protocol.close()  # cancelled, or the handshake failed: free the socket now
        raise
