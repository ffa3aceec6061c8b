"""The control socket and the metrics endpoint on real sockets: the socket file's life
(mode, stale file replaced, a live daemon refused, removal), bounds (request size, clients,
idle time) and bad input, which gets an answer and leaves the server serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.ops.control import (
    ControlProviders,
    ControlServer,
    ControlSocketBusy,
    ControlSocketError,
    request,
)
from gateway.ops.metrics import CONTENT_TYPE, MetricsServer, Registry
from gateway.transport.udp import PortInUse


def providers() -> ControlProviders:
    p = ControlProviders()
    p.status_sections["daemon"] = lambda: {"pid": os.getpid()}
    p.actions["reload"] = lambda: {"reloaded": ["credentials"]}
    return p


@contextlib.asynccontextmanager
async def control_server(path: Path, **options: float) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, providers(), **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def ask_in_thread(path: Path, command: str) -> dict[str, object]:
    """The blocking client, off the loop that runs the server."""
    return await asyncio.to_thread(request, path, command, timeout=5)


async def exchange(path: Path, data: bytes, *, lines: int, eof: bool = False) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return [await asyncio.wait_for(reader.readline(), 5) for _ in range(lines)]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_socket_is_private_answers_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "state" / "control.sock"  # the directory is created
    async with control_server(path):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        response = await ask_in_thread(path, "status")
        assert response == {"ok": True, "command": "status",
                            "result": {"daemon": {"pid": os.getpid()}}}
        assert (await ask_in_thread(path, "reload"))["result"] == {"reloaded": ["credentials"]}
    assert not path.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # a daemon that died without removing its socket
    crashed.close()
    async with control_server(path):
        assert (await ask_in_thread(path, "status"))["ok"] is True


async def test_a_live_daemon_on_the_socket_refuses_a_second_one(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    async with control_server(path):
        second = ControlServer(path, providers())
        with pytest.raises(ControlSocketBusy, match="in use by a running dots-gateway") as info:
            await second.start()
        assert isinstance(info.value, PortInUse)  # the CLI's "is another instance running?"
        await second.stop()  # does not remove the first one's socket
        assert (await ask_in_thread(path, "status"))["ok"] is True


async def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="exists and is not a socket"):
        await ControlServer(path, providers()).start()
    assert path.read_text() == "precious"


async def test_garbage_gets_error_lines_and_the_server_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    async with control_server(path, max_request=1024) as server:
        answers = await exchange(
            path, b"\x00\xff garbage\n{\"command\": \"nope\"}\n\n[]\n{\"command\":\"status\"}\n",
            lines=4)
        assert [a.startswith(b'{"ok":false') for a in answers] == [True, True, True, False]
        assert b'"daemon"' in answers[3]
        # An over-long line: an error, then the connection is closed (it cannot resync).
        too_long = await exchange(path, b"x" * 5000 + b"\n", lines=2)
        assert b"request longer than 1024 bytes" in too_long[0] and too_long[1] == b""
        # A last request without its newline is still answered.
        last = await exchange(path, b'{"command": "help"}', lines=1, eof=True)
        assert b'"commands"' in last[0]
        # Connect and hang up at once, or send half a request and hang up.
        for data in (b"", b'{"comm'):
            _, writer = await asyncio.open_unix_connection(str(path))
            writer.write(data)
            writer.close()
            await writer.wait_closed()
        assert server.bad_requests >= 4
        assert (await ask_in_thread(path, "status"))["ok"] is True


async def test_clients_are_bounded_in_number_and_idle_time(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    async with control_server(path, max_clients=2, idle_timeout=0.3):
        held = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        await asyncio.sleep(0.05)
        busy = await exchange(path, b"", lines=1)
        assert b"busy: 2 control clients" in busy[0]
        # Idle clients are closed after idle_timeout, which makes room again.
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 2) == b""
        for _, writer in held:
            writer.close()
            await writer.wait_closed()
        assert (await ask_in_thread(path, "status"))["ok"] is True


async def test_stop_does_not_wait_for_connected_clients(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, providers())
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(path))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.stop(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await writer.wait_closed()
    assert not path.exists()


# --- the metrics endpoint ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def metrics_server(**options: float) -> AsyncIterator[tuple[MetricsServer, int]]:
    registry = Registry()
    registry.counter("x_requests_total", "Requests.", ("code",)).inc("2.04")
    server = MetricsServer(registry, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server, server.bound[0][1]
    finally:
        await server.stop()


async def http(port: int, data: bytes) -> bytes:
    """The whole answer; b"" when the server closed (or reset) without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (f.split(": ", 1) for f in fields)}
    return status, headers, body


async def test_get_metrics() -> None:
    async with metrics_server() as (server, port):
        status, headers, body = split(await http(
            port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"))
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        assert body.decode() == server.registry.render()
        assert b'x_requests_total{code="2.04"} 1\n' in body
        # A query string is ignored; HEAD has the headers only.
        assert split(await http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")
        status, headers, body = split(await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
        assert status.endswith("200 OK") and body == b"" and int(headers["content-length"]) > 0
        assert server.scrapes == 3


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", "404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "400 Bad Request"),  # TLS hello
    (b"GET /metrics\r\n\r\n", "400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\n", "400 Bad Request"),  # half a request, then EOF
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
     "431 Request Header Fields Too Large"),
])
async def test_bad_requests_get_an_error_and_the_endpoint_keeps_serving(
        request_bytes: bytes, status: str) -> None:
    async with metrics_server() as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        if not request_bytes.endswith(b"\r\n\r\n"):
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert answer.startswith(f"HTTP/1.1 {status}\r\n".encode()), answer[:80]
        assert server.bad_requests == 1
        assert split(await http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")


async def test_slow_and_surplus_clients_are_dropped() -> None:
    async with metrics_server(timeout=0.3, max_clients=2) as (_server, port):
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in slow:
            writer.write(b"GET /metr")  # and nothing more
        await asyncio.sleep(0.05)
        surplus = await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert surplus == b""  # closed at once: two clients are being served
        for reader, writer in slow:
            assert await asyncio.wait_for(reader.read(), 2) == b""  # timed out, closed
            writer.close()
            await writer.wait_closed()
        assert split(await http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")


async def test_a_taken_port_is_an_oserror() -> None:
    async with metrics_server() as (_server, port):
        with pytest.raises(OSError):
            await MetricsServer(Registry(), "127.0.0.1", port).start()
