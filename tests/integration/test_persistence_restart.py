"""Mitigations survive restarts: a clean stop, and a SIGKILL right after the answer."""

from __future__ import annotations

import json
from pathlib import Path

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.config import parse_config
from gateway.daemon import start_server
from gateway.dots.codec import cbor_to_json
from tests.integration.test_bad_input import connect, free_udp_port
from tests.integration.test_server_role import mitigation


async def test_mitigations_survive_a_restart(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    settings = parse_config(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port()}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["10.0.0.0/8"]\n')
    base = f".well-known/dots/mitigate/cuid={cuid}"
    running = await start_server(settings)
    peer = await connect(running, pki)
    try:
        assert (await peer.ask(3, f"{base}/mid=1", mitigation("10.0.0.0/24"))).code == 0x41
        assert (await peer.ask(3, f"{base}/mid=2", mitigation("10.1.0.0/24"))).code == 0x41
        assert (await peer.ask(4, f"{base}/mid=2")).code == 0x42
        # saved before the answers left
        rows = running.database.load(running.role.core.store.wall_offset)
        assert {(r.mid, r.state.value) for r in rows} == {(1, "mitigating"), (2, "terminating")}
    finally:
        peer.conn.close()
        await running.stop()

    running = await start_server(settings)
    peer = await connect(running, pki)
    try:
        answer = await peer.ask(1, base)
        assert answer.code == 0x45
        scopes = cbor_to_json(answer.payload)["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        assert {s["mid"]: s["status"] for s in scopes} == {
            1: "attack-mitigation-in-progress", 2: "dots-client-withdrawn-mitigation"}
        assert 3590 <= scopes[0]["lifetime"] <= 3600
    finally:
        peer.conn.close()
        await running.stop()
    lines = (tmp_path / "mitigations.jsonl").read_text().splitlines()
    journal = [json.loads(line) for line in lines]
    # first run: apply 1, apply 2; second run: re-applied 1 and 2 (2 is active-but-terminating)
    assert [(e["action"], e["mid"]) for e in journal] == [
        ("apply", 1), ("apply", 2), ("apply", 1), ("apply", 2)]


async def test_acknowledged_mitigation_survives_sigkill(tmp_path: Path) -> None:
    import asyncio
    import itertools
    import os
    import signal
    import subprocess
    import sys

    from gateway.transport.dtls_client import connect_dtls
    from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
    from tests.integration.test_bad_input import Peer

    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    port = free_udp_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["10.0.0.0/8"]\n')
    root = Path(__file__).resolve().parents[2]

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "server", "--config",
                                 str(config)], cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline().startswith("dots-gateway")
        return proc

    async def peer() -> Peer:
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem",
                                                         pki / "client.key", pki / "ca.pem"))
        conn = await connect_dtls("127.0.0.1", port, ctx, replies.put_nowait,
                                  server_name="localhost", timeout=5)
        return Peer(conn, replies, itertools.count(1))

    base = f".well-known/dots/mitigate/cuid={cuid}/mid=9"
    first = start()
    try:
        client = await peer()
        assert (await client.ask(3, base, mitigation("10.9.0.0/24", lifetime=600))).code == 0x41
        os.kill(first.pid, signal.SIGKILL)  # no shutdown path at all
        first.wait(10)
        client.conn.close()
    finally:
        if first.poll() is None:
            first.kill()
        if first.stdout is not None:
            first.stdout.close()
    second = start()
    try:
        client = await peer()
        reply = await client.ask(1, base)
        assert reply.code == 0x45
        scope = cbor_to_json(reply.payload)["ietf-dots-signal-channel:mitigation-scope"][
            "scope"][0]
        assert scope["status"] == "attack-mitigation-in-progress"
        assert 0 < scope["lifetime"] <= 600
        client.conn.close()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
        if second.stdout is not None:
            second.stdout.close()
