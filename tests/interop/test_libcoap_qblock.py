"""libcoap's coap-client and Q-Block (RFC 9177) against our server (the real daemon).

Debian's libcoap3-bin 4.3.1 is built without Q-Block: ``-L 5`` (COAP_BLOCK_USE_LIBCOAP +
COAP_BLOCK_TRY_Q_BLOCK) is accepted, but its requests carry no Q-Block option and its
library holds no Q-Block code. With it, a large list must still arrive whole in Block2 (the
fallback for peers without Q-Block). A libcoap built with Q-Block (``ENABLE_Q_BLOCK``,
e.g. 4.3.5 from source) can be named in ``DOTS_QBLOCK_COAP_CLIENT``: it then probes,
switches Q-Block on, and gets the list in Q-Block2 (its ``-v 7`` output names the
option); without it that test is skipped, saying why. The other direction: our client's
Q-Block1 PUT and Q-Block2 GET against libcoap's ``coap-server`` from the same build
(``DOTS_QBLOCK_COAP_SERVER``), on a resource it creates on PUT (``-d``). Checked with
libcoap 4.3.5 built from source (``cmake -DENABLE_DTLS=ON -DDTLS_BACKEND=openssl
-DENABLE_Q_BLOCK=ON``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import cbor2
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.connect import Endpoint, Transport, open_dtls
from gateway.client.qblock import q_get, q_put
from gateway.client.role import DotsClient, make_scope
from gateway.client.session import ClientSession
from gateway.coap.message import CoapMessage
from gateway.transport.tls_context import ClientContext, Kind
from tests.integration.test_client_role import cert_credentials, running_server
from tests.interop.peers import coap_client, free_port, run_peer

pytestmark = pytest.mark.interop

DEBIAN = "coap-client-openssl"
MITIGATIONS = 150


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


async def fetch_list(binary: str, pki: Path, tmp_path: Path) -> tuple[str, bytes, int]:
    """Install MITIGATIONS mitigations with our client, then GET them with ``binary``
    (-L 5: try Q-Block); its output, the body it wrote, and the body's expected size."""
    with running_server(tmp_path / "server", pki, transports=("udp",),
                        level="warning") as server:
        async with DotsClient(cert_credentials(pki), server.uri(),
                              state_dir=tmp_path / "client", negotiate=False) as client:
            for i in range(MITIGATIONS):
                scope = make_scope(target_prefix=[f"2001:db8:{i:x}::/48"])
                assert (await client.mitigate(scope, mid=i + 1)).ok
            expected = len((await client.get()).response.payload)
        cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
        out = tmp_path / "body.cbor"
        argv = coap_client(binary, f"{server.uri()}/.well-known/dots/mitigate/cuid={cuid}",
                           method="get", cert=pki / "client.pem", key=pki / "client.key",
                           ca=pki / "ca.pem", wait=20, verbosity=7,
                           extra=["-L", "5", "-o", str(out)])
        result = await run_peer(argv, timeout=40)
        return result.output, out.read_bytes() if out.exists() else b"", expected


async def test_debian_libcoap_gets_a_large_list_whole_in_block2(pki: Path,
                                                                tmp_path: Path) -> None:
    if shutil.which(DEBIAN) is None:
        pytest.skip(f"{DEBIAN} not installed (Debian libcoap3-bin)")
    output, body, expected = await fetch_list(DEBIAN, pki, tmp_path)
    assert expected > 4 * 1024
    assert len(body) == expected, output[-3000:]
    assert "Q-Block" not in output  # 4.3.1 from Debian: no Q-Block at all


async def test_qblock_libcoap_fetches_a_large_list_in_q_block2(pki: Path,
                                                               tmp_path: Path) -> None:
    binary = os.environ.get("DOTS_QBLOCK_COAP_CLIENT")
    if not binary or not Path(binary).exists():
        pytest.skip("no Q-Block-capable coap-client: Debian's libcoap 4.3.1 is built without "
                    "Q-Block; set DOTS_QBLOCK_COAP_CLIENT to one built with ENABLE_Q_BLOCK")
    output, body, expected = await fetch_list(binary, pki, tmp_path)
    assert len(body) == expected, output[-3000:]
    # its probe switched Q-Block on: the list came in Q-Block2 blocks, not Block2
    listed = [ln for ln in output.splitlines() if "application/dots+cbor" in ln]
    assert any("Q-Block2:1/" in ln for ln in listed), output[-3000:]
    assert not any("Block2:1/" in ln and "Q-Block2" not in ln for ln in listed)


async def test_qblock_libcoap_puts_a_large_mitigation_in_q_block1(pki: Path,
                                                                  tmp_path: Path) -> None:
    binary = os.environ.get("DOTS_QBLOCK_COAP_CLIENT")
    if not binary or not Path(binary).exists():
        pytest.skip("no Q-Block-capable coap-client (see the module docstring)")
    body = tmp_path / "big.cbor"
    body.write_bytes(cbor2.dumps({1: {2: [{6: [f"2001:db8:{i:x}::/48" for i in range(1000)],
                                           14: 3600}]}}))
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    with running_server(tmp_path / "server", pki, transports=("udp",),
                        level="warning") as server:
        uri = f"{server.uri()}/.well-known/dots/mitigate/cuid={cuid}/mid=7"
        argv = coap_client(binary, uri, method="put", body=body, cert=pki / "client.pem",
                           key=pki / "client.key", ca=pki / "ca.pem", wait=20, verbosity=7,
                           extra=["-L", "5"])
        result = await run_peer(argv, timeout=40)
        output = result.output
        sent = [ln for ln in output.splitlines() if ln.startswith("v:1") and "c:PUT" in ln]
        # (its first PUT line shows the whole body as the application handed it over)
        blocks = [ln for ln in sent if "Q-Block1:" in ln]
        assert len(blocks) >= 19 and "Q-Block1:0/M/" in blocks[0], output[-3000:]
        assert "c:2.01" in output, output[-3000:]
        async with DotsClient(cert_credentials(pki), server.uri(),
                              state_dir=tmp_path / "client", negotiate=False) as client:
            got = await client.get(7)
            assert got.ok and len(got.scopes[0].target_prefix) == 1000


class _Owner:
    """What a ClientSession reports to: nothing to do here."""

    def request_received(self, *_args: object) -> None:
        return None

    def session_closed(self, *_args: object) -> None:
        return None


async def test_our_client_q_block_against_libcoap_server(pki: Path, tmp_path: Path) -> None:
    binary = os.environ.get("DOTS_QBLOCK_COAP_SERVER")
    if not binary or not Path(binary).exists():
        pytest.skip("no Q-Block-capable coap-server: Debian's libcoap 4.3.1 is built without "
                    "Q-Block; set DOTS_QBLOCK_COAP_SERVER to one built with ENABLE_Q_BLOCK")
    port = free_port()  # DTLS listens on port + 1
    proc = await asyncio.create_subprocess_exec(
        binary, "-A", "127.0.0.1", "-p", str(port), "-d", "4", "-L", "5", "-v", "4",
        "-c", str(pki / "server.pem"), "-j", str(pki / "server.key"), "-C", str(pki / "ca.pem"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        endpoint = Endpoint(Transport.UDP, "127.0.0.1", port + 1, "localhost")
        session = ClientSession(_Owner(), endpoint, time.monotonic)  # type: ignore[arg-type]
        ctx = ClientContext(Kind.DTLS, cert_credentials(pki))
        conn = await open_dtls(endpoint, ctx, session.data_received, session.connection_lost,
                               resume=None, timeout=5)
        session.attach(conn)
        body = bytes(range(256)) * 80  # 20 KB: 20 blocks of 1,024
        put = CoapMessage.request(3, ("qblock",), content_format=42, payload=body)
        answer = await q_put(session, put, time.monotonic() + 30, time.monotonic)
        assert isinstance(answer, CoapMessage) and answer.code in (0x41, 0x44), answer
        get = CoapMessage.request(1, ("qblock",))
        whole = await q_get(session, get, time.monotonic() + 30, time.monotonic)
        assert isinstance(whole, CoapMessage) and whole.code == 0x45, whole
        assert whole.option(31) is not None  # it came in Q-Block2
        assert whole.payload == body
        session.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
