"""A ``dots-gateway`` daemon as a subprocess for tests: started, awaited, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.transport.dtls_client import connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serving(command: str, config: Path, log: Path, *, timeout: float = 20.0,
            env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``python -m gateway.cli COMMAND --config CONFIG`` with stderr appended to ``log``.

    Ready once it prints its "dots-gateway serving" line (``RuntimeError`` with the log's
    tail otherwise); on exit it is continued if a test stopped it, then terminated (killed
    after 10 s)."""
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", command, "--config",
                                 str(config)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=None if env is None else {**os.environ, **env})
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("dots-gateway serving"):
            raise RuntimeError(f"dots-gateway {command} did not start (got {line!r}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        proc.stdout.close()


async def open_session(port: int, pki: Path) -> tuple[Any, asyncio.Queue[bytes]]:
    """A DTLS session with the dev PKI's client certificate to a daemon on 127.0.0.1;
    every record it receives lands in the queue."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    conn = await connect_dtls("127.0.0.1", port, ctx, replies.put_nowait,
                              server_name="localhost", timeout=5)
    return conn, replies
