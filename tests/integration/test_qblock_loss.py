"""Q-Block (RFC 9177) between our client and our server through a relay that drops 25% of
the datagrams either way (seeded): a GET of 200 mitigations and a PUT of a 1,000-prefix
mitigation complete, and they went in Q-Block."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.client.role import DotsClient, make_scope
from gateway.dots.codec import cbor_to_json
from tests.integration.test_client_role import cert_credentials, running_server
from tests.support.lossy_udp import LossyRelay

MITIGATIONS = 200
LOSS = 0.25


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


def listed(payload: bytes) -> list[dict[str, object]]:
    return cbor_to_json(payload)["ietf-dots-signal-channel:mitigation-scope"]["scope"]


async def test_large_get_and_put_complete_under_loss(pki: Path, tmp_path: Path) -> None:
    with running_server(tmp_path / "server", pki, transports=("udp",),
                        level="warning") as server:
        relay = await LossyRelay.start(("127.0.0.1", server.port), seed=1919)
        try:
            async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{relay.port}",
                                  state_dir=tmp_path / "client", request_timeout=90,
                                  negotiate=False) as client:
                for i in range(MITIGATIONS):
                    scope = make_scope(target_prefix=[f"2001:db8:{i:x}::/48"])
                    assert (await client.mitigate(scope, mid=i + 1)).ok
                relay.loss = LOSS
                before = relay.dropped
                started = time.monotonic()
                reply = await client.get()
                print(f"GET {time.monotonic() - started:.1f} s")
                assert reply.ok, reply
                assert sorted(s["mid"] for s in listed(reply.response.payload)) == list(
                    range(1, MITIGATIONS + 1))
                big = make_scope(target_prefix=[f"2001:db8:{0x1000 + i:x}::/48"
                                                for i in range(1000)])
                started = time.monotonic()
                reply = await client.mitigate(big, mid=MITIGATIONS + 1)
                print(f"PUT {time.monotonic() - started:.1f} s dropped {relay.dropped - before}")
                assert reply.ok, reply
                assert client.stats.q_block_transfers >= 2
                assert relay.dropped - before > 5  # the loss did happen
                relay.loss = 0.0
                got = await client.get(MITIGATIONS + 1)
                assert got.ok
                assert len(listed(got.response.payload)[0]["target"]["target-prefix"]
                           if "target" in listed(got.response.payload)[0]
                           else listed(got.response.payload)[0]["target-prefix"]) == 1000
        finally:
            relay.close()
