"""DOTS-level benchmark of ``dots-gateway server``: mitigation create+delete cycles and
heartbeat round trips over DTLS.

    .venv/bin/python tests/bench/bench_dots.py [--seconds 10] [--results tests/bench/RESULTS.md]

Server on CPU 0, load generator (single-threaded, epoll) on CPU 1, loopback only, every
phase bounded in time. For scale (issue 5): go-dots measured 5.85 create+delete cycles/s
(PUT p50 58 ms) and 802 heartbeats/s at 16 sessions on a machine like ours.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from certs.identity import cuid_from_certificate  # noqa: E402
from gateway.coap.codes import MessageType  # noqa: E402
from gateway.coap.message import CoapMessage  # noqa: E402
from gateway.coap.udp_codec import decode_udp, encode_udp  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench.bench_transport import (  # noqa: E402
    DAEMON,
    HB,
    HB_OPTIONS,
    Client,
    Generator,
    establish,
    free_port,
    pct,
)
from tests.bench.results import machine_lines, update_section  # noqa: E402

MITIGATION = bytes.fromhex("a101a10281a206816c3139322e302e322e302f32340e190e10")  # 192.0.2.0/24


def start_server(pki: Path, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = state / "bench.toml"
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config.write_text(
        f'[general]\nstate_dir = "{state}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "bench"\ncuid = "{cuid}"\nprefixes = ["0.0.0.0/0"]\n'
        "[limits]\nhandshakes_per_source = 100000\nmax_handshakes_per_source = 100000\n")
    proc = subprocess.Popen(["taskset", "-c", "0", *DAEMON, "server", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, port


class Runner:
    def __init__(self, gen: Generator, cuid: str) -> None:
        self.gen = gen
        self.cuid = cuid
        self.mid = 0

    def send(self, client: Client, code: int, path: tuple[str, ...], payload: bytes,
             options: tuple[tuple[int, bytes], ...], now: float) -> None:
        client.mid = (client.mid + 1) & 0xFFFF
        msg = CoapMessage(MessageType.NON, code, client.mid, client.mid.to_bytes(2, "big"),
                          options, payload)
        client.session.send(encode_udp(msg))
        client.sent_at = now
        self.gen._flush(client)

    def mitigation_cycles(self, clients: list[Client], seconds: float,
                          rate: float | None = None) -> dict[str, str]:
        """Each session: PUT (create), then DELETE, then the next mid. With ``rate``, new
        cycles start at that many per second in total (open loop), to measure latency at
        a given load rather than under saturation."""
        put_lat: list[float] = []
        del_lat: list[float] = []
        stage: dict[int, tuple[str, int]] = {}
        cycles = 0

        def next_put(c: Client, now: float) -> None:
            self.mid += 1
            path = (".well-known", "dots", "mitigate", f"cuid={self.cuid}", f"mid={self.mid}")
            opts = CoapMessage.request(3, path, content_format=271).options
            self.send(c, 3, path, MITIGATION, opts, now)
            stage[id(c)] = ("put", self.mid)

        start = time.monotonic()
        idle: list[Client] = []
        next_slot = start
        if rate is None:
            for c in clients:
                next_put(c, start)
        else:
            idle = list(clients)
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            while rate is not None and idle and now >= next_slot:
                next_put(idle.pop(), now)
                next_slot += 1.0 / rate
            for client, records in self.gen.poll(0.0 if rate else 0.05):
                for record in records:
                    reply = decode_udp(record)
                    if reply.code < 64:
                        continue
                    now = time.monotonic()
                    kind, mid = stage[id(client)]
                    if kind == "put":
                        put_lat.append((now - client.sent_at) * 1000)
                        path = (".well-known", "dots", "mitigate", f"cuid={self.cuid}",
                                f"mid={mid}")
                        self.send(client, 4, path, b"", CoapMessage.request(4, path).options,
                                  now)
                        stage[id(client)] = ("delete", mid)
                    else:
                        del_lat.append((now - client.sent_at) * 1000)
                        cycles += 1
                        if rate is None:
                            next_put(client, now)
                        else:
                            idle.append(client)
        elapsed = time.monotonic() - start
        return {
            "create+delete cycles/s": f"{cycles / elapsed:.0f}",
            "PUT p50/p99": f"{pct(put_lat, 50):.2f}/{pct(put_lat, 99):.2f} ms",
            "DELETE p50/p99": f"{pct(del_lat, 50):.2f}/{pct(del_lat, 99):.2f} ms",
        }

    def heartbeats(self, clients: list[Client], seconds: float) -> str:
        start = time.monotonic()
        count = 0
        for c in clients:
            self.send(c, 3, (), HB, HB_OPTIONS, start)
        while time.monotonic() - start < seconds:
            for client, records in self.gen.poll(0.05):
                if any(decode_udp(r).code >= 64 for r in records):
                    count += 1
                    self.send(client, 3, (), HB, HB_OPTIONS, time.monotonic())
        return f"{count / (time.monotonic() - start):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dots-bench-"))
    pki = tmp / "pki"
    init_dev_pki(pki)
    proc, port = start_server(pki, tmp)
    os.sched_setaffinity(0, {1})
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    gen = Generator(ctx, port)
    runner = Runner(gen, cuid_from_certificate((pki / "client.pem").read_bytes()))
    rows: dict[str, str] = {}
    try:
        for sessions, rate in ((1, None), (100, None), (100, 600.0)):
            clients = establish(gen, sessions)
            label = f"{sessions} session{'s' if sessions > 1 else ''}"
            label += f", paced at {rate:.0f} cycles/s" if rate else ", saturated"
            for key, value in runner.mitigation_cycles(clients, args.seconds, rate).items():
                rows[f"{key} ({label})"] = value
            for c in clients:
                gen.close(c)
        for sessions in (1, 16):
            clients = establish(gen, sessions)
            rows[f"heartbeat round trips/s ({sessions} sessions)"] = runner.heartbeats(
                clients, args.seconds)
            for c in clients:
                gen.close(c)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    for k, v in rows.items():
        print(f"{k}: {v}")
    write(args.results, rows)


def write(path: Path, rows: dict[str, str]) -> None:
    update_section(path, "DOTS (tests/bench/bench_dots.py)", [
        *machine_lines(),
        "- dots-gateway server on CPU 0 (DTLS, NON requests), load generator on CPU 1",
        "- go-dots for scale: 5.85 create+delete cycles/s, PUT p50 58 ms; 802 heartbeats/s"
        " at 16 sessions",
        "",
        "| measure | dots-gateway |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows.items()],
    ])


if __name__ == "__main__":
    main()
