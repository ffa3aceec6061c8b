"""The demo's enterprise DOTS client: a ``DotsClient`` in the client namespace, driven by one
JSON command per stdin line, one JSON answer per stdout line; its log goes to stderr.

    python -m gateway.demo.client PKI_DIR STATE_DIR
    {"op": "start", "host": "dots.example.net", "addresses": ["192.0.2.46"]}
    {"op": "mitigate", "prefix": "203.0.113.0/24", "lifetime": 3600}
    {"op": "get", "mid": 1} | {"op": "hb"} | {"op": "state"} | {"op": "stop"}

Every answer has ``ok``; a failure is an answer (``error``) too, never a crash. The client
uses TLS only (coaps+tcp): a server that dies resets the connection, so the client sees the
loss at once. Over DTLS a dead server is silent, and a client with an active mitigation
never declares the session lost (RFC 9132 §4.7: not during an attack; the parallel session
the RFC allows instead is not implemented, see ``gateway.client.heartbeats``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.client.connect import ServerSpec, Transport
from gateway.client.messages import Reply
from gateway.client.role import DotsClient, make_scope
from gateway.transport.tls_context import ClientCredentials

PORT = 4646
log = logging.getLogger("gateway.demo.client")


def _reply(reply: Reply) -> dict[str, Any]:
    endpoint = reply.endpoint
    return {
        "code": reply.dotted, "mid": reply.mid,
        "address": endpoint.address, "server_name": endpoint.server_name,
        "scopes": [{"mid": s.mid, "status": s.status.label if s.status else None}
                   for s in reply.scopes],
    }


def _state(client: DotsClient) -> dict[str, Any]:
    endpoint = client.endpoint
    stats = client.stats
    return {
        "address": None if endpoint is None else endpoint.address,
        "server_name": None if endpoint is None else endpoint.server_name,
        "alternate": None if client.alternate is None else client.alternate.host,
        "sessions": stats.sessions, "signal_losses": stats.signal_losses,
        "redirects_followed": stats.redirects_followed, "redirect_loops": stats.redirect_loops,
    }


async def drive(pki: Path, state_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    credentials = ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    client: DotsClient | None = None
    while line := await reader.readline():
        answer: dict[str, Any] = {"ok": True}
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "start":
                server = ServerSpec(cmd["host"], PORT, transports=(Transport.TCP,),
                                    addresses=tuple(cmd["addresses"]))
                client = DotsClient(credentials, [server], state_dir=state_dir,
                                    handshake_timeout=3.0, request_timeout=8.0,
                                    attempt_delay=0.05)
                await client.connect()
            elif op == "stop":
                if client is not None:
                    await client.close()
                client = None
            elif client is None:
                raise ValueError("start first")
            elif op == "mitigate":
                answer["reply"] = _reply(await client.mitigate(make_scope(
                    target_prefix=[cmd["prefix"]], lifetime=cmd["lifetime"])))
            elif op == "get":
                answer["reply"] = _reply(await client.get(cmd["mid"]))
            elif op == "hb":
                answer["reply"] = _reply(await client.heartbeat())
            elif op != "state":
                raise ValueError(f"unknown op {op!r}")
            if client is not None:
                answer["state"] = _state(client)
        except Exception as exc:  # every failure is an answer; the demo shows the log
            log.exception("command failed: %s", line.strip())
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if client is not None:
        await client.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(drive(Path(argv[0]), Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
