"""Fixtures for the interop suite: the server under test, the PKIs, peer availability.

TODO(dots-gateway server): the server under test is the in-test responder
(``peers.InProcessServer``: our DTLS/TLS transports + ``gateway.coap``). When the
``dots-gateway server`` command lands, switch the ``dots_server`` fixture to the real daemon
by changing the one marked line to ``start = subprocess_dots_server`` (and check the
command line in ``subprocess_dots_server``). Tests only use host/ports/pki_dir from the
yielded ``DotsServer``; the server-state checks (sessions, counters) skip when
``DotsServer.inproc`` is None, until the daemon exposes its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from tests.interop.peers import (
    HB_BODY,
    DotsServer,
    InProcessServer,
    free_port,
    have,
    make_expired_client,
    make_sub_ca_client,
    read_psk,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev PKI the server under test uses (CA, server, client, PSK)."""
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated dev PKI: its client certificate chains to an untrusted CA."""
    directory = tmp_path_factory.mktemp("rogue-pki")
    init_dev_pki(directory)
    return directory


@pytest.fixture(scope="session")
def expired_client(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert, key): a client certificate signed by the dev CA that expired yesterday."""
    return make_expired_client(pki, tmp_path_factory.mktemp("expired"))


@pytest.fixture(scope="session")
def sub_ca_client(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert, key): a CA certificate under the dev CA that OpenSSL accepts as a client."""
    return make_sub_ca_client(pki, tmp_path_factory.mktemp("sub-ca"))


@pytest.fixture(scope="session")
def hb_body(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("payloads") / "hb.cbor"
    path.write_bytes(HB_BODY)
    return path


@pytest.fixture(scope="session")
def psk(pki: Path) -> tuple[str, str]:
    return read_psk(pki)


@contextlib.asynccontextmanager
async def inprocess_dots_server(pki: Path, **options: Any) -> AsyncIterator[DotsServer]:
    server = InProcessServer(pki, **options)
    await server.start()
    try:
        yield DotsServer("127.0.0.1", server.port_udp, server.port_tcp, pki, inproc=server)
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def subprocess_dots_server(pki: Path) -> AsyncIterator[DotsServer]:
    """The real daemon. UNTESTED until ``dots-gateway server`` exists: the subcommand name,
    ``--config``, and waiting for the TCP port as the readiness signal are assumptions
    taken from deploy/dots-gateway.example.toml; adjust when the command lands."""
    port = free_port()  # UDP and TCP on one number
    identity, key = read_psk(pki)
    cert_cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config = pki / "interop-server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{pki / "state"}"\nmode = "terminal"\n'
        f'[server]\naddresses = ["127.0.0.1", "::1"]\nport = {port}\n'
        f'transports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "server.pem"}"\n'
        f'key = "{pki / "server.key"}"\n'
        f'[[psk]]\nidentity = "{identity}"\nkey = "{key}"\n'
        # The certificate client may protect the documentation prefixes only, with its
        # derived cuid; the PSK client acts like a gateway (any cuid, any prefix).
        f'[[clients]]\nname = "cert-client"\ncuid = "{cert_cuid}"\n'
        'prefixes = ["192.0.2.0/24", "2001:db8::/32"]\nfqdns = ["example.com"]\n'
        f'[[clients]]\nname = "psk-client"\npsk_identity = "{identity}"\n'
        'prefixes = ["0.0.0.0/0", "::/0"]\nallow_any_cuid = true\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "server", "--config", str(config), cwd=REPO,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None)
    try:
        for _ in range(100):
            if proc.returncode is not None:
                raise RuntimeError(f"dots-gateway server exited with {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("dots-gateway server did not start listening within 10 s")
        yield DotsServer("127.0.0.1", port, port, pki)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def dots_server(pki: Path) -> AsyncIterator[DotsServer]:
    """The DOTS server under test: (host, port_udp, port_tcp, pki_dir) plus ``host6``."""
    start: Callable[[Path], Any] = inprocess_dots_server  # TODO: subprocess_dots_server
    async with start(pki) as server:
        yield server


@pytest.fixture
async def responder(pki: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start an in-test responder with non-default options (e.g. ``allow_legacy_psk``) for
    one test; it is stopped after the test."""
    stack = contextlib.AsyncExitStack()

    async def start(**options: Any) -> DotsServer:
        return await stack.enter_async_context(inprocess_dots_server(pki, **options))

    async with stack:
        yield start


def require(binary: str) -> None:
    if not have(binary):
        pytest.skip(f"{binary} is not installed (Debian: libcoap3-bin)")
