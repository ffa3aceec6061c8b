"""Bounded load generators for leak tests and benchmarks (loopback only)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from gateway.transport.dtls_client import connect_dtls
from gateway.transport.secure_session import SecureSession
from gateway.transport.tls_context import ClientContext
from gateway.transport.tls_stream import connect_tls


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def connect_cycles(
    kind: str,
    host: str,
    port: int,
    ctx: ClientContext,
    count: int,
    concurrency: int = 16,
    deadline: float = 300.0,
) -> float:
    """``count`` full handshake + one echo + close cycles; returns cycles per second."""
    connect = connect_dtls if kind == "dtls" else connect_tls
    remaining = count
    started = time.monotonic()

    async def worker() -> None:
        nonlocal remaining
        loop = asyncio.get_running_loop()
        while remaining > 0 and time.monotonic() - started < deadline:
            remaining -= 1
            got: asyncio.Future[bytes] = loop.create_future()
            conn = await connect(
                host,
                port,
                ctx,
                lambda b, f=got: f.done() or f.set_result(b),
                server_name="localhost",
                timeout=10,
            )
            conn.send(b"x")
            await asyncio.wait_for(got, 10)
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if remaining > 0:
        raise TimeoutError(f"{remaining} cycles left after {deadline} s")
    return count / (time.monotonic() - started)


class _HalfHandshake(asyncio.DatagramProtocol):
    """Sends a ClientHello, answers the HelloVerifyRequest, then goes silent."""

    def __init__(self, session: SecureSession, done: asyncio.Future[None]) -> None:
        self.session = session
        self.done = done
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.session.start()
        for d in self.session.take_output():
            transport.sendto(d)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.done.done():
            return
        self.session.feed(data)  # the HelloVerifyRequest: a ClientHello with cookie follows
        for d in self.session.take_output():
            self.transport.sendto(d)
        self.done.set_result(None)


async def abandoned_dtls(
    host: str, port: int, ctx: ClientContext, count: int, concurrency: int = 32
) -> None:
    """Handshakes that pass the cookie (so the server creates a session) and then stop."""
    loop = asyncio.get_running_loop()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            session = SecureSession(ctx)
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                lambda s=session, d=done: _HalfHandshake(s, d), remote_addr=(host, port)
            )
            try:
                await asyncio.wait_for(done, 5)
                await asyncio.sleep(0.01)  # let the cookie ClientHello leave
            finally:
                transport.close()
                session.free()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def abandoned_tls(host: str, port: int, ctx: ClientContext, count: int) -> list[Any]:
    """TCP connections that send a ClientHello and then stay silent; returns the writers."""
    writers = []
    for _ in range(count):
        _reader, writer = await asyncio.open_connection(host, port)
        session = SecureSession(ctx)
        session.start()
        for chunk in session.take_output():
            writer.write(chunk)
        session.free()
        writers.append(writer)
    return writers


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
