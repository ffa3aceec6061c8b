"""Bounded load generators for leak tests and benchmarks (loopback only)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from gateway.transport.dtls_client import HandshakeError, connect_dtls
from gateway.transport.secure_session import SecureSession
from gateway.transport.tls_context import ClientContext
from gateway.transport.tls_stream import connect_tls


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


#: How long one handshake or one echo may take before the cycle counts as lost and is tried
#: again. A server with a short handshake deadline (the leak test's 2 s) drops handshakes
#: that a busy machine slows past it: that is the server doing its job, not a leak.
OPERATION_TIMEOUT = 10.0
#: Tries of one cycle before the load itself is declared failed.
CYCLE_TRIES = 5


class Cycles(NamedTuple):
    done: int  # completed cycles
    rate: float  # completed cycles per second
    retried: int  # cycles whose handshake or echo was lost and that were tried again


async def connect_cycles(
    kind: str,
    host: str,
    port: int,
    ctx: ClientContext,
    count: int,
    concurrency: int = 16,
    deadline: float = 300.0,
    minimum: int | None = None,
) -> Cycles:
    """``count`` full handshake + one echo + close cycles, or as many as ``deadline`` allows
    when that is at least ``minimum`` (a busy machine does fewer; TimeoutError below it)."""
    connect = connect_dtls if kind == "dtls" else connect_tls
    remaining = count
    retried = 0
    started = time.monotonic()

    async def one_cycle() -> bool:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            conn = await connect(
                host,
                port,
                ctx,
                lambda b, f=got: f.done() or f.set_result(b),
                server_name="localhost",
                timeout=OPERATION_TIMEOUT,
            )
        except (HandshakeError, OSError, TimeoutError):
            return False
        try:
            conn.send(b"x")
            await asyncio.wait_for(got, OPERATION_TIMEOUT)
            return True
        except TimeoutError:
            return False
        finally:
            conn.close()

    async def worker() -> None:
        nonlocal remaining, retried
        while remaining > 0 and time.monotonic() - started < deadline:
            remaining -= 1
            for _ in range(CYCLE_TRIES):
                if await one_cycle():
                    break
                retried += 1
            else:
                raise TimeoutError(f"a cycle failed {CYCLE_TRIES} times in a row")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = count - max(remaining, 0)
    if done < (count if minimum is None else minimum):
        raise TimeoutError(f"{count - done} cycles left after {deadline} s")
    return Cycles(done, done / (time.monotonic() - started), retried)


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
