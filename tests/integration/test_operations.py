"""Operations of the real ``dots-gateway server`` process: its Prometheus endpoint moves when
a DTLS client works, ``dots-gateway status`` (table and ``--json``) reads the live daemon over
the control socket, garbage on the control socket and the metrics port leaves it serving,
``reload`` over the socket swaps the credentials, a second daemon on the same state directory
is refused, and the socket is gone after SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway import cli
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.dots.codec import json_to_cbor
from gateway.ops import control
from gateway.transport.dtls_client import HandshakeError
from gateway.transport.openssl_ffi import openssl_version_number
from tests.support.daemon import open_session

ROOT = Path(__file__).resolve().parents[2]
HB = bytes.fromhex("a11831a11833f5")
CHANGED, CREATED = 0x44, 0x41


def free_port() -> int:
    """A port number free for UDP and TCP both (the daemon binds one number for each)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    config: Path
    port: int
    metrics_port: int
    pki: Path
    socket: Path
    stderr: Path

    @property
    def cuid(self) -> str:
        return cuid_from_certificate((self.pki / "client.pem").read_bytes())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def write_config(directory: Path, port: int, metrics_port: int, pki: Path,
                 extra: str = "") -> Path:
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        f'[[clients]]\nname = "ops-client"\ncuid = "{cuid}"\nprefixes = ["2001:db8::/32"]\n'
        + extra)
    return config


@contextlib.contextmanager
def dev_daemon(tmp_path: Path, extra_config: str = "") -> Iterator[Daemon]:
    """``start_daemon`` on a dev PKI of its own in ``tmp_path/tls``, always stopped."""
    pki = tmp_path / "tls"
    init_dev_pki(pki)
    running = start_daemon(tmp_path, pki, extra_config=extra_config)
    try:
        yield running
    finally:
        running.stop()
        if running.proc.stdout is not None:
            running.proc.stdout.close()


def start_daemon(directory: Path, pki: Path, *, port: int | None = None,
                 extra_config: str = "") -> Daemon:
    """``extra_config``: TOML appended to the file (more sections)."""
    port = port or free_port()
    metrics_port = free_port()
    config = write_config(directory, port, metrics_port, pki, extra_config)
    stderr = directory / "daemon.log"
    with open(stderr, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "server", "--config",
                                 str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("dots-gateway serving"), line + stderr.read_text()
    return Daemon(proc, config, port, metrics_port, pki, directory / "state" / "control.sock",
                  stderr)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with dev_daemon(tmp_path) as running:
        yield running


# --- helpers -----------------------------------------------------------------------------------


async def http_get(port: int, target: str = "/metrics") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(port: int) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample."""
    status, body = await http_get(port)
    assert status == 200
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


async def call(conn: Any, replies: asyncio.Queue[bytes], mid: int, path: tuple[str, ...],
               payload: bytes) -> int:
    msg = CoapMessage.request(3, path, content_format=271, payload=payload)
    conn.send(encode_udp(CoapMessage(MessageType.CON, 3, mid, mid.to_bytes(2, "big"),
                                     msg.options, msg.payload)))
    while True:  # skip anything that is not our answer (a server heartbeat, say)
        reply = decode_udp(await asyncio.wait_for(replies.get(), 5))
        if reply.token == mid.to_bytes(2, "big"):
            return reply.code


async def heartbeat(conn: Any, replies: asyncio.Queue[bytes], mid: int) -> int:
    return await call(conn, replies, mid, (".well-known", "dots", "hb"), HB)


async def mitigate(conn: Any, replies: asyncio.Queue[bytes], cuid: str, mid: int) -> int:
    """PUT a mitigation with this mid (also the CoAP message id and token)."""
    body = json_to_cbor(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["2001:db8:6401::/64"], "target-protocol": [6], "lifetime": 3600}]}}))
    return await call(conn, replies, mid, (".well-known", "dots", "mitigate", f"cuid={cuid}",
                                           f"mid={mid}"), body)


async def dots_gateway(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ask(daemon: Daemon, command: str) -> dict[str, Any]:
    return await asyncio.to_thread(control.request, daemon.socket, command, timeout=5)


# --- tests -------------------------------------------------------------------------------------


async def test_metrics_move_after_a_dtls_session(daemon: Daemon) -> None:
    before = await scrape(daemon.metrics_port)
    dtls = 'side="downstream",transport="dtls"'
    assert before[f"dots_gateway_sessions{{{dtls}}}"] == 0
    assert before[f'dots_gateway_handshakes_total{{{dtls},result="completed"}}'] == 0
    assert before["dots_gateway_mitigations_active"] == 0
    assert before['dots_gateway_dtls_sessions_by_record_layer{layer="gateway"}'] == 0

    conn, replies = await open_session(daemon.port, daemon.pki)
    try:
        assert await heartbeat(conn, replies, 1) == CHANGED
        assert await mitigate(conn, replies, daemon.cuid, 2) == CREATED  # a new message id
        after = await scrape(daemon.metrics_port)
    finally:
        conn.close()
    assert after[f"dots_gateway_sessions{{{dtls}}}"] == 1
    assert after[f'dots_gateway_handshakes_total{{{dtls},result="completed"}}'] == 1
    assert after['dots_gateway_requests_total{code="2.04"}'] == 1
    assert after['dots_gateway_requests_total{code="2.01"}'] == 1
    assert after['dots_gateway_heartbeats_total{side="downstream",event="received"}'] == 1
    assert after['dots_gateway_mitigations{status="attack-mitigation-in-progress"}'] == 1
    assert after["dots_gateway_mitigations_active"] == 1
    # The heartbeat was the client's first application data: OpenSSL's state is gone.
    assert after['dots_gateway_dtls_sessions_by_record_layer{layer="gateway"}'] == 1
    assert after['dots_gateway_dtls_sessions_by_record_layer{layer="openssl"}'] == 0
    build = f'version="0.1.0",mode="terminal",openssl="{openssl_version_number()}"'
    assert after["dots_gateway_build_info{" + build + "}"] == 1
    # A failed handshake counts too (an unknown CA).
    rogue = daemon.pki.parent / "rogue"
    init_dev_pki(rogue)
    with pytest.raises(HandshakeError):
        await open_session(daemon.port, rogue)
    for _ in range(50):  # the failure is counted when the server has seen the alert
        failed = (await scrape(daemon.metrics_port))[
            f'dots_gateway_handshakes_total{{{dtls},result="failed"}}']
        if failed:
            break
        await asyncio.sleep(0.05)
    assert failed == 1


async def test_status_command_reads_the_live_daemon(daemon: Daemon) -> None:
    conn, replies = await open_session(daemon.port, daemon.pki)
    try:
        assert await mitigate(conn, replies, daemon.cuid, 7) == CREATED
        code, out, err = await dots_gateway("status", "--config", str(daemon.config), "--json")
        assert code == 0, err
        status = json.loads(out)
        table_code, table, _ = await dots_gateway("status", "--config", str(daemon.config))
    finally:
        conn.close()
    assert status["daemon"]["pid"] == daemon.proc.pid
    assert status["daemon"]["mode"] == "terminal"
    assert status["sessions"]["count"] == 1
    (session,) = status["sessions"]["list"]
    assert session["side"] == "downstream" and session["transport"] == "dtls"
    assert session["local"] == f"127.0.0.1:{daemon.port}"
    assert session["peer"].startswith("127.0.0.1:") and session["cuid"] == daemon.cuid
    assert session["client"]
    assert status["mitigations"]["count"] == 1 and status["mitigations"]["active"] == 1
    (mitigation,) = status["mitigations"]["list"]
    assert mitigation["cuid"] == daemon.cuid and mitigation["mid"] == 7
    assert mitigation["status"] == "attack-mitigation-in-progress"
    assert mitigation["targets"] == ["2001:db8:6401::/64"]
    assert status["upstreams"] == {"count": 0, "list": []}

    assert table_code == 0
    assert table.startswith(f"dots-gateway 0.1.0, pid {daemon.proc.pid}, terminal mode")
    assert "SESSIONS (1)" in table and "MITIGATIONS (1)  active: 1" in table
    assert daemon.cuid in table and f"127.0.0.1:{daemon.port}" in table


def test_status_without_a_daemon_says_so(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"no daemon answers on the control socket: no control socket at {tmp_path}" in err
    assert "no anycast state" in err


async def test_garbage_on_the_control_socket_and_metrics_port(daemon: Daemon) -> None:
    for data in (b"\x00\x01\x02\xff\n", b"x" * 100_000 + b"\n", b"[]\n{\n", b'{"command":',
                 b"\n" * 100, os.urandom(4096)):
        with contextlib.suppress(ConnectionError):
            reader, writer = await asyncio.open_unix_connection(str(daemon.socket))
            writer.write(data)
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
    for data in (b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
                 b"GET /metrics", os.urandom(4096)):
        with contextlib.suppress(ConnectionError):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.metrics_port)
            writer.write(data)
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
    assert await http_get(daemon.metrics_port, "/") == (404, "not found; try /metrics\n")
    # Still serving on all three: DOTS, control, metrics.
    conn, replies = await open_session(daemon.port, daemon.pki)
    assert await heartbeat(conn, replies, 1) == CHANGED
    conn.close()
    assert (await ask(daemon, "status"))["ok"] is True
    assert (await scrape(daemon.metrics_port))["dots_gateway_mitigations_active"] == 0
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr.read_text()
    assert not daemon.socket.exists()  # removed on exit


async def test_reload_over_the_control_socket(daemon: Daemon, tmp_path: Path) -> None:
    old_pki = tmp_path / "old"
    shutil.copytree(daemon.pki, old_pki)
    held, held_replies = await open_session(daemon.port, old_pki)
    try:
        # A broken key: the reload is refused and the old credentials stay.
        (daemon.pki / "server.key").write_text("not a key")
        broken = await ask(daemon, "reload")
        assert broken["ok"] is False
        assert "reload failed, keeping the old credentials" in broken["error"]
        # The operator rolls out a new PKI and reloads over the socket.
        new_pki = tmp_path / "new"
        init_dev_pki(new_pki)
        for name in ("ca.pem", "server.pem", "server.key"):
            shutil.copy(new_pki / name, daemon.pki / name)
        reloaded = await ask(daemon, "reload")
        assert reloaded["ok"] is True
        assert reloaded["result"]["reloaded"] == ["credentials"]
        assert reloaded["result"]["changed"] == [] and reloaded["result"]["needs_restart"] == []
        # The held session's CA is no longer trusted: it is closed.
        assert [w["reason"] for w in reloaded["result"]["withdrawn"]] == ["ca_withdrawn"]
        fresh, fresh_replies = await open_session(daemon.port, new_pki)
        assert await heartbeat(fresh, fresh_replies, 2) == CHANGED
        fresh.close()
        for _ in range(300):
            if held.closed:
                break
            await asyncio.sleep(0.05)
        assert held.closed
        with pytest.raises(HandshakeError):
            await open_session(daemon.port, old_pki)
    finally:
        held.close()


def test_a_second_daemon_on_the_same_state_directory_is_refused(daemon: Daemon) -> None:
    second = subprocess.run([sys.executable, "-m", "gateway.cli", "server", "--config",
                             str(write_config(daemon.config.parent, free_port(), free_port(),
                                              daemon.pki))],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"control socket {daemon.socket} is in use by a running dots-gateway" in second.stderr
    assert "is another instance running?" in second.stderr
    assert daemon.proc.poll() is None and daemon.socket.exists()


def test_a_stale_socket_of_a_killed_daemon_is_replaced(daemon: Daemon) -> None:
    daemon.proc.kill()
    daemon.proc.wait(5)
    assert daemon.socket.exists()  # SIGKILL: nobody removed it
    restarted = start_daemon(daemon.config.parent, daemon.pki, port=daemon.port)
    try:
        assert control.request(restarted.socket, "status")["result"]["daemon"]["pid"] == (
            restarted.proc.pid)
        assert "removing the stale socket" in restarted.stderr.read_text()
    finally:
        assert restarted.stop() == 0
        if restarted.proc.stdout is not None:
            restarted.proc.stdout.close()
