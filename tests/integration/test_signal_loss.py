"""End to end with the real processes: a ``dots-client`` killed with SIGKILL is detected as
lost within the negotiated heartbeat bounds, which arms its preconfigured mitigation
(RFC 9132 §4.7, §4.4.1.3); a withdrawn mitigation ends after active-but-terminating."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from tests.integration.test_bad_input import Peer, free_udp_port
from tests.support.daemon import open_session

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Heartbeats every second, loss after 2 missed: the server may declare loss once no traffic
# at all arrived for 2 s (plus its 0.5 s tick).
SESSION = ("[session.idle]\nheartbeat_interval = { min = 1, max = 240, default = 1 }\n"
           "missing_hb_allowed = { min = 1, max = 20, default = 2 }\n"
           "[session.mitigating]\nheartbeat_interval = { min = 1, max = 240, default = 1 }\n"
           "missing_hb_allowed = { min = 1, max = 20, default = 2 }\n")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    pki = tmp_path / "state" / "pki"
    init_dev_pki(pki)
    port = free_udp_port()
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path / "server-state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["10.0.0.0/8"]\n'
        "[mitigation]\nactive_but_terminating = 1\nactive_but_terminating_max = 2\n"
        + SESSION)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "server", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("dots-gateway")
    try:
        yield port, tmp_path / "state"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def status_of(port: int, state: Path, mid: int) -> str | None:
    out = subprocess.run([str(BIN / "dots-client"), "--server", f"coaps://127.0.0.1:{port}",
                          "--state-dir", str(state), "--timeout", "10", "get", "--mid",
                          str(mid)], capture_output=True, text=True, timeout=30)
    if out.returncode == 3:
        return None  # 4.04: gone
    assert out.returncode == 0, out.stderr
    text = out.stdout
    start = text.rfind('"status"')
    return text[start:].split('"')[3] if start >= 0 else None


def test_killed_client_arms_its_preconfigured_mitigation(daemon: tuple[int, Path]) -> None:
    port, state = daemon
    created = subprocess.run(
        [str(BIN / "dots-client"), "--server", f"coaps://127.0.0.1:{port}", "--state-dir",
         str(state), "mitigate", "--target-prefix", "10.7.0.0/24", "--no-trigger", "--mid",
         "40"], capture_output=True, text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    assert status_of(port, state, 40) == "attack-mitigation-signal-loss"
    # A long-lived session from this client (it observes), then a hard kill.
    holder = subprocess.Popen([str(BIN / "dots-client"), "--server",
                               f"coaps://127.0.0.1:{port}", "--state-dir", str(state), "get",
                               "--observe"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        time.sleep(2.0)  # established, config negotiated, heartbeats flowing
        assert status_of(port, state, 40) == "attack-mitigation-signal-loss"
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        holder.wait(10)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    # The short-lived `get` sessions closed with close_notify; only the killed one can be
    # declared lost. Bound: 2 missed heartbeats of 1 s, the server's 0.5 s tick, and the
    # time one `dots-client get` takes to connect (about 0.5 s here).
    status = None
    while time.monotonic() - killed_at < 8.0:
        status = status_of(port, state, 40)
        if status == "attack-mitigation-in-progress":
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - killed_at
    assert status == "attack-mitigation-in-progress"
    assert elapsed < 5.0, f"loss declared after {elapsed:.1f} s"


async def test_withdrawal_ends_after_active_but_terminating(daemon: tuple[int, Path]) -> None:
    port, state = daemon
    created = subprocess.run(
        [str(BIN / "dots-client"), "--server", f"coaps://127.0.0.1:{port}", "--state-dir",
         str(state), "mitigate", "--target-prefix", "10.8.0.0/24", "--mid", "50"],
        capture_output=True, text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    # The withdrawal and the reads on one session, back to back: a second dots-client
    # process takes longer to start on a busy machine than the 1 s of active-but-terminating.
    conn, replies = await open_session(port, state / "pki")
    peer = Peer(conn, replies, itertools.count(1))
    cuid = cuid_from_certificate((state / "pki" / "client.pem").read_bytes())
    path = f".well-known/dots/mitigate/cuid={cuid}/mid=50"
    try:
        assert (await peer.ask(4, path)).code == 0x42  # 2.02 Deleted
        reply = await peer.ask(1, path)
        assert reply.code == 0x45
        scope = cbor2.loads(reply.payload)[1][2][0]
        assert scope[16] == 5  # status: dots-client-withdrawn-mitigation (RFC 9132 Table 3)
        deadline = time.monotonic() + 15.0  # 1 s, then the server's 0.5 s tick
        while (await peer.ask(1, path)).code != 0x84:  # 4.04: terminated and removed
            assert time.monotonic() < deadline, "still there after active-but-terminating"
            await asyncio.sleep(0.2)
    finally:
        conn.close()
