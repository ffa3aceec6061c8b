"""A mitigation request too large for one datagram, from our client with Q-Block off (what
it does after a server refused Q-Block with 4.02): sent in RFC 7959 Block1 blocks to a real
server over DTLS, also through a relay that drops a fifth of the datagrams. On the old code
it never left: "no answer to PUT ... in 0 s"."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.client.role import DotsClient, make_scope
from gateway.dots.codec import cbor_to_json
from tests.integration.test_client_role import cert_credentials, running_server
from tests.support.lossy_udp import LossyRelay

PREFIXES = [f"2001:db8:{0x2000 + i:x}::/48" for i in range(400)]  # ~9 KB of CBOR


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


def prefixes_of(payload: bytes) -> list[str]:
    scope = cbor_to_json(payload)["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]
    return list(scope["target-prefix"])


@pytest.mark.parametrize("loss", [0.0, 0.2])
async def test_a_large_put_goes_in_block1_blocks_without_q_block(pki: Path, tmp_path: Path,
                                                                 loss: float) -> None:
    with running_server(tmp_path / "server", pki, transports=("udp",),
                        level="warning") as server:
        relay = await LossyRelay.start(("127.0.0.1", server.port), seed=7)
        try:
            async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{relay.port}",
                                  state_dir=tmp_path / "client", request_timeout=90,
                                  negotiate=False) as client:
                client.q_block = False
                relay.loss = loss
                reply = await client.mitigate(make_scope(target_prefix=PREFIXES), mid=7)
                assert reply.ok, reply
                assert client.stats.q_block_transfers == 0
                relay.loss = 0.0
                got = await client.get(7)  # in Block2: Q-Block is off
                assert got.ok and prefixes_of(got.response.payload) == PREFIXES
                if loss:
                    assert relay.dropped > 0
        finally:
            relay.close()
