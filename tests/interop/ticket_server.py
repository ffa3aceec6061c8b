"""A DTLS echo server whose session-ticket keys come from a file, for the cross-process
resumption test (tests/interop/test_libcoap.py).

    python -m tests.interop.ticket_server PKI_DIR TICKET_KEY_FILE

Listens on 127.0.0.1 (ephemeral port) with the dev PKI's server certificate, prints
``ready PORT``, echoes every record, and on SIGTERM prints ``stopped {counters JSON}`` and
exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.tls_context import (
    Kind,
    ServerContext,
    ServerCredentials,
    TicketKeyRing,
)


class Echo:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.send(data)

    def connection_lost(self, reason: str) -> None:
        pass


async def main(pki: Path, ticket_keys: Path) -> None:
    credentials = ServerCredentials(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    context = ServerContext(Kind.DTLS, credentials, tickets=TicketKeyRing.from_file(ticket_keys))
    server = DtlsServer(context, Echo, Limits(handshake_deadline=5.0))
    await server.start([("127.0.0.1", 0)])
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    print(f"ready {server.bound[0].port}", flush=True)
    await stop
    await server.stop()
    print("stopped " + json.dumps(dataclasses.asdict(server.counters)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
