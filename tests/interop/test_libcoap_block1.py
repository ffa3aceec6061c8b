"""A large mitigation request from libcoap's coap-client (Debian's 4.3.1) split into RFC 7959
Block1 blocks (``-b``): our server reassembles it (2.31 Continue per block) and creates the
mitigation. On the old code the first 64 bytes were taken for the whole body: 4.00
"undecodable CBOR: premature end of stream". The server is the testing kit's
``EmbeddedServer``; the credentials are its dev PKI's."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gateway.dots.codec import json_to_cbor
from gateway.testing import EmbeddedServer

pytestmark = pytest.mark.interop
CLIENT = "coap-client-openssl"
PREFIXES = [f"10.{i // 256}.{i % 256}.0/24" for i in range(120)]  # ~1.6 KB of CBOR


async def test_a_body_in_block1_blocks_becomes_one_mitigation(tmp_path: Path) -> None:
    if shutil.which(CLIENT) is None:
        pytest.skip(f"{CLIENT} not installed (Debian libcoap3-bin)")
    body = tmp_path / "mitigation.cbor"
    body.write_bytes(json_to_cbor(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {
        "scope": [{"target-prefix": PREFIXES, "lifetime": 600}]}})))
    assert body.stat().st_size > 1500  # more than one datagram
    async with EmbeddedServer(transports=("udp",)) as server:
        cuid = server.credentials.cert_cuid
        proc = await asyncio.create_subprocess_exec(
            CLIENT, "-v", "6", "-m", "put", "-t", "271", "-b", "64", "-f", str(body),
            "-B", "20", *server.credentials.coap_client_args(),
            server.uri(f"mitigate/cuid={cuid}/mid=5"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
        # libcoap consumes the 2.31 of each block itself (it prints only the final answer):
        # the last block's 2.01 echoes Block1 24 (RFC 7959 §2.3), and only a whole body
        # could have made the mitigation below.
        assert "t:ACK c:2.01" in output and "Block1:24/_/64" in output, output[-3000:]
        held = await server.wait_for_mitigation(lambda m: m["mid"] == 5)
        assert held["cuid"] == cuid
        assert held["target-prefix"] == PREFIXES
