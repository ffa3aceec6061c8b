"""Q-Block (RFC 9177) through the gateway: a client's large GET and PUT go in Q-Block on
the downstream hop, and the gateway's upstream client uses Q-Block towards the server."""

from __future__ import annotations

from pathlib import Path

from gateway.client.role import make_scope
from gateway.dots.codes import Code
from tests.integration.test_gateway import (  # noqa: F401 - pkis is a fixture
    Pkis,
    client_of,
    free_port,
    gateway,
    gateway_config,
    pkis,
    relay_of,
    upstream_server,
)


async def test_large_get_and_put_in_q_block_on_both_hops(pkis: Pkis,  # noqa: F811
                                                          tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            mids = []
            for i in range(40):
                reply = await client.mitigate(make_scope(
                    target_prefix=[f"2001:db8:{i:x}::/48"], lifetime=900))
                assert reply.code is Code.CREATED, reply
                mids.append(reply.mid)
            big = make_scope(target_prefix=[f"2001:db8:{0x1000 + i:x}::/48"
                                            for i in range(300)], lifetime=900)
            reply = await client.mitigate(big)
            assert reply.code is Code.CREATED, reply
            mids.append(reply.mid)
            whole = await client.get()
            assert whole.code is Code.CONTENT and len(whole.response.payload) > 4096
            assert sorted(s.mid for s in whole.scopes) == mids
            assert client.stats.q_block_transfers >= 2  # the PUT and the GET, downstream
            upstream = relay_of(gw).upstream
            assert upstream is not None and upstream.stats.q_block_transfers >= 2
