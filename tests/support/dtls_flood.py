"""Abandoned DTLS handshakes for tests and benchmarks: past the cookie, then silent.

One real ClientHello is made once (our OpenSSL client); each attempt sends it from a new
UDP socket bound to a chosen source address, reads the HelloVerifyRequest, sends the same
ClientHello again with the cookie inserted (what a client does, RFC 6347 §4.2.1) and
closes the socket: the server has started a handshake (and spent a handshake step on it)
that will never go on. Cheap enough on the sending side to flood from one process.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from gateway.transport.secure_session import SecureSession
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind

_RECORD, _HANDSHAKE_HEADER = 13, 12


def client_hello(context: ClientContext | None = None) -> bytes:
    """One initial ClientHello datagram (no cookie)."""
    context = context or ClientContext(
        Kind.DTLS, ClientCredentials(psk_identity=b"flood", psk_key=b"k" * 16))
    session = SecureSession(context)
    try:
        session.start()
        (datagram,) = session.take_output()
    finally:
        session.free()
    return datagram


def hello_verify_cookie(datagram: bytes) -> bytes | None:
    """The cookie of a HelloVerifyRequest datagram, or None."""
    if len(datagram) < _RECORD + _HANDSHAKE_HEADER + 3 or datagram[0] != 22:
        return None
    if datagram[_RECORD] != 3:  # hello_verify_request
        return None
    body = _RECORD + _HANDSHAKE_HEADER + 2  # server_version
    return datagram[body + 1: body + 1 + datagram[body]]


def with_cookie(hello: bytes, cookie: bytes, *, record_sequence: int = 1) -> bytes:
    """``hello`` (an unfragmented initial ClientHello) sent again with ``cookie``."""
    body = hello[_RECORD + _HANDSHAKE_HEADER:]
    at = 2 + 32 + 1 + body[34]  # client_version, random, session_id
    body = body[:at] + bytes((len(cookie),)) + cookie + body[at + 1 + body[at]:]
    n = len(body)
    handshake = (bytes((1,)) + n.to_bytes(3, "big") + struct.pack(">H", 1)  # message_seq 1
                 + bytes(3) + n.to_bytes(3, "big") + body)
    record = (hello[:3] + bytes(2) + record_sequence.to_bytes(6, "big")
              + struct.pack(">H", len(handshake)))
    return record + handshake


@dataclass
class FloodCounts:
    attempts: int = 0
    cookies: int = 0  # HelloVerifyRequests received: each led to an abandoned handshake
    refused: int = 0  # no HelloVerifyRequest in time (the server refused to give a cookie)


async def abandon_one(hello: bytes, source: str, server: tuple[str, int],
                      counts: FloodCounts, wait: float = 0.5) -> None:
    """One abandoned handshake from ``source`` (a new port each time)."""
    loop = asyncio.get_running_loop()
    counts.attempts += 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect(server)
        sock.send(hello)
        try:
            answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), wait)
        except (TimeoutError, ConnectionError):
            counts.refused += 1
            return
        cookie = hello_verify_cookie(answer)
        if cookie is None:
            counts.refused += 1
            return
        sock.send(with_cookie(hello, cookie))
        counts.cookies += 1


async def flood(hello: bytes, sources: list[str], server: tuple[str, int], counts: FloodCounts,
                *, until: float, per_source: int = 4, pause: float = 0.0) -> None:
    """``per_source`` attempts in flight from each source, one after the other, until the
    loop time ``until``."""
    loop = asyncio.get_running_loop()

    async def lane(source: str) -> None:
        while loop.time() < until:
            await abandon_one(hello, source, server, counts)
            if pause:
                await asyncio.sleep(pause)

    await asyncio.gather(*(lane(s) for s in sources for _ in range(per_source)))
