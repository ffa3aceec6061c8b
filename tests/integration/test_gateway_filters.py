"""RFC 9133 filter control through a gateway: the client's acl-list travels unchanged to the
upstream server, which checks and applies it, and comes back in GET answers and Observe
notifications; the upstream's 4.04 for an unknown ACL reaches the client.

The upstream server runs in this process with a ``MemoryAclCatalog`` (where its data
channel would keep the client's ACLs); the gateway and the client are the real ones over
DTLS, as in ``test_gateway``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cbor2

from gateway.client.role import make_scope
from gateway.config import load_config
from gateway.daemon import start_server
from gateway.dots.codec import decode_message
from gateway.dots.codes import Code
from gateway.dots.filters import AclActivation, MemoryAclCatalog, acl_list_of
from gateway.dots.keys import K
from gateway.dots.model import MitigationScope
from gateway.server.mitigator import JOURNAL_NAME
from tests.integration.test_client_role import free_port
from tests.integration.test_filter_control import settle
from tests.integration.test_gateway import (
    Pkis,
    client_of,
    gateway,
    gateway_config,
    pkis,  # noqa: F401 (the module-scoped fixture)
    relay_of,
    upstream_config,
)
from tests.unit.dots.test_filters import ACCEPT_LIST, RATE_LIMIT


async def test_acl_list_is_relayed_both_ways(pkis: Pkis, tmp_path: Path) -> None:  # noqa: F811
    catalog = MemoryAclCatalog()
    # The ACLs belong to the client (its cuid travels unchanged through the gateway).
    catalog.add(pkis.client_cuid, ACCEPT_LIST)
    catalog.add(pkis.client_cuid, RATE_LIMIT)
    up_port = free_port()
    (tmp_path / "up").mkdir()
    upstream = await start_server(load_config(upstream_config(tmp_path / "up", pkis, up_port)),
                                  acl_catalog=catalog)
    seen: list[bytes] = []
    core = upstream.role.core
    plain = core.receive_request

    def receive_request(session, request, now):  # type: ignore[no-untyped-def]
        if "mitigate" in request.path and request.payload:
            seen.append(request.payload)  # what the gateway sent upstream
        return plain(session, request, now)

    core.receive_request = receive_request  # type: ignore[method-assign]
    try:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port,
                                          [f"127.0.0.1:{up_port}"])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            scope = make_scope(target_prefix=["192.0.2.0/26"], lifetime=600,
                               acl_list=["my-accept-list:immediate"])
            created = await client.mitigate(scope, mid=3)
            assert created.code is Code.CREATED, created
            assert cbor2.loads(seen[-1])[K.MITIGATION_SCOPE][K.SCOPE][0][
                K.CONTROL_ACL_LIST] == [{K.ACL_NAME: "my-accept-list", K.ACTIVATION_TYPE: 2}]
            assert catalog.lookup(pkis.client_cuid, "my-accept-list")["activation-type"] == (
                "immediate")

            got = await client.get(3)
            assert got.code is Code.CONTENT, got
            assert acl_list_of(got.scopes[0]) == (AclActivation("my-accept-list", "immediate"),)

            observation = await client.observe(3)
            assert observation.first is not None
            assert acl_list_of(observation.first.scopes[0]) == (
                AclActivation("my-accept-list", "immediate"),)

            # During the mitigation, through the gateway: one off, one on.
            changed = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600,
                acl_list=["my-accept-list:deactivate", "rate-limit-udp:immediate"]), mid=3)
            assert changed.code is Code.CHANGED, changed
            got = await client.get(3)
            assert acl_list_of(got.scopes[0]) == (
                AclActivation("my-accept-list", "deactivate"),
                AclActivation("rate-limit-udp", "immediate"))

            # A refresh without acl-list leaves the upstream's as it was; the gateway keeps
            # it in the body it would re-install elsewhere (failover, restart).
            refreshed = await client.mitigate(make_scope(target_prefix=["192.0.2.0/26"],
                                                         lifetime=900), mid=3)
            assert refreshed.code is Code.CHANGED, refreshed
            assert K.CONTROL_ACL_LIST not in cbor2.loads(seen[-1])[K.MITIGATION_SCOPE][
                K.SCOPE][0]
            record = relay_of(gw).table.get(pkis.client_cuid, 3)
            message = decode_message(record.body)
            assert isinstance(message, MitigationScope)
            assert message.scope[0].lifetime == 900
            assert acl_list_of(message.scope[0]) == (
                AclActivation("my-accept-list", "deactivate"),
                AclActivation("rate-limit-udp", "immediate"))

            unknown = await client.mitigate(make_scope(
                target_prefix=["192.0.2.64/26"], lifetime=600, acl_list=["no-such-acl"]), mid=4)
            assert unknown.code is Code.NOT_FOUND, unknown
            assert "no ACL named 'no-such-acl'" in unknown.diagnostic
            await observation.cancel()
        journal = tmp_path / "up" / "state" / JOURNAL_NAME

        def entries() -> list[dict[str, object]]:
            return [json.loads(line) for line in journal.read_text().splitlines()]

        await settle(lambda: journal.exists() and len(entries()) >= 2)
        actions = [(e["action"], [a["name"] for a in e["acls"]]) for e in entries()[:2]]
        assert actions == [("apply", ["my-accept-list"]), ("update", ["rate-limit-udp"])]
    finally:
        await upstream.stop()
