"""A DTLS + TLS echo server process for leak tests and benchmarks (transport only).

    python -m tests.support.echo_server PKI_DIR [--handshake-deadline S] [--idle-timeout S]

Prints ``ready DTLS_PORT TLS_PORT`` once listening on 127.0.0.1, and a JSON line with
counters on SIGUSR1; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.memory import release_freed_memory
from gateway.transport.tls_context import Kind, ServerContext, ServerCredentials
from gateway.transport.tls_stream import StreamLimits, TlsServer


class Echo:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.send(data)

    def connection_lost(self, reason: str) -> None:
        pass


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pki", type=Path)
    parser.add_argument("--handshake-deadline", type=float, default=20.0)
    parser.add_argument("--idle-timeout", type=float, default=3600.0)
    parser.add_argument("--max-handshakes", type=int, default=4096)
    parser.add_argument("--handshake-nice", type=int, default=Limits.handshake_nice)
    args = parser.parse_args(argv)
    psk = json.loads((args.pki / "psk.json").read_text())
    creds = ServerCredentials(
        args.pki / "server.pem",
        args.pki / "server.key",
        args.pki / "ca.pem",
        psk={psk["identity"].encode(): psk["key"].encode()},
    )
    dtls = DtlsServer(
        ServerContext(Kind.DTLS, creds),
        Echo,
        Limits(
            handshake_deadline=args.handshake_deadline,
            idle_timeout=args.idle_timeout,
            max_handshakes=args.max_handshakes,
            handshakes_per_source_per_second=1e9,
            handshake_burst=10**9,
            max_handshakes_per_source=10**9,
            handshake_nice=args.handshake_nice,
        ),
    )
    tls = TlsServer(
        ServerContext(Kind.TLS, creds),
        Echo,
        StreamLimits(
            handshake_deadline=args.handshake_deadline,
            idle_timeout=args.idle_timeout,
            max_handshakes=args.max_handshakes,
            handshake_nice=args.handshake_nice,
        ),
    )
    await dtls.start([("127.0.0.1", 0)])
    await tls.start([("127.0.0.1", 0)])
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))

    def report() -> None:
        # Measure retained memory, not what the allocators cache: collect and trim first.
        gc.collect()
        release_freed_memory(force=True)
        print(
            json.dumps(
                {
                    "dtls": dataclasses.asdict(dtls.counters),
                    "tls": dataclasses.asdict(tls.counters),
                    "dtls_sessions": len(dtls.sessions),
                    "tls_connections": len(tls.connections),
                }
            ),
            flush=True,
        )

    loop.add_signal_handler(signal.SIGUSR1, report)
    print(f"ready {dtls.bound[0].port} {tls.bound[0].port}", flush=True)
    await stop
    await dtls.stop()
    await tls.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
