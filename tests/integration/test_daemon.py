"""The ``dots-gateway server`` process: refuses a taken port, reloads credentials on SIGHUP
without dropping sessions, answers heartbeats, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.transport.dtls_client import HandshakeError
from tests.support.daemon import open_session

ROOT = Path(__file__).resolve().parents[2]
HB = bytes.fromhex("a11831a11833f5")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, port: int, tls_dir: Path) -> Path:
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{tls_dir}/ca.pem"\ncert = "{tls_dir}/server.pem"\n'
        f'key = "{tls_dir}/server.key"\n')
    return config


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    tls_dir = tmp_path / "tls"
    init_dev_pki(tls_dir)
    port = free_port()
    config = write_config(tmp_path, port, tls_dir)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "server", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("dots-gateway serving"), line + (proc.stderr.read() if proc.stderr
                                                            else "")
    try:
        yield proc, port, tls_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def hb_request(mid: int) -> bytes:
    msg = CoapMessage.request(3, (".well-known", "dots", "hb"), content_format=271, payload=HB)
    return encode_udp(CoapMessage(MessageType.CON, 3, mid, mid.to_bytes(2, "big"), msg.options,
                                  msg.payload))


async def heartbeat(conn: object, replies: asyncio.Queue[bytes], mid: int) -> int:
    conn.send(hb_request(mid))  # type: ignore[attr-defined]
    reply = decode_udp(await asyncio.wait_for(replies.get(), 5))
    return reply.code


async def wait_closed(conn: object, timeout: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not conn.closed:  # type: ignore[attr-defined]
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_sighup_reloads_credentials_and_keeps_sessions_still_trusted(
        daemon: tuple[subprocess.Popen[str], int, Path], tmp_path: Path) -> None:
    proc, port, tls_dir = daemon
    old_pki = tmp_path / "old"
    shutil.copytree(tls_dir, old_pki)
    old_session, old_replies = await open_session(port, old_pki)
    assert await heartbeat(old_session, old_replies, 1) == 0x44  # 2.04

    # The operator rolls out a new PKI, still trusting the old CA meanwhile, and sends SIGHUP.
    new_pki = tmp_path / "new"
    init_dev_pki(new_pki)
    for name in ("server.pem", "server.key"):
        shutil.copy(new_pki / name, tls_dir / name)
    (tls_dir / "ca.pem").write_bytes((new_pki / "ca.pem").read_bytes()
                                     + (old_pki / "ca.pem").read_bytes())
    os.kill(proc.pid, signal.SIGHUP)
    await asyncio.sleep(0.5)

    fresh, fresh_replies = await open_session(port, new_pki)
    assert await heartbeat(fresh, fresh_replies, 2) == 0x44
    # The session established before the reload is still served: its CA is still trusted.
    assert await heartbeat(old_session, old_replies, 3) == 0x44

    # The old CA goes: its client's session is closed, and it cannot come back.
    shutil.copy(new_pki / "ca.pem", tls_dir / "ca.pem")
    os.kill(proc.pid, signal.SIGHUP)
    assert await wait_closed(old_session)
    with pytest.raises(HandshakeError):
        await open_session(port, old_pki)
    assert await heartbeat(fresh, fresh_replies, 4) == 0x44
    fresh.close()  # type: ignore[attr-defined]
    assert proc.poll() is None


def test_a_taken_port_refuses_to_start(daemon: tuple[subprocess.Popen[str], int, Path],
                                       tmp_path: Path) -> None:
    _proc, port, tls_dir = daemon
    (tmp_path / "second").mkdir()
    config = write_config(tmp_path / "second", port, tls_dir)
    second = subprocess.run([sys.executable, "-m", "gateway.cli", "server", "--config",
                             str(config)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "already in use" in second.stderr


def test_sigterm_closes_sessions_and_exits_cleanly(
        daemon: tuple[subprocess.Popen[str], int, Path]) -> None:
    proc, _port, _tls = daemon
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()
