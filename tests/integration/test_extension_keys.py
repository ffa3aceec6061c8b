"""Issue 18 item 5 end to end: an upstream server that puts RFC 9133's acl-list (key 53) into
its mitigation GET answers, as go-dots' server does (an empty array when unused). The
answer decodes in the client role, and the gateway relays it unchanged.

The upstream is our own server, in this process, with a hook on its core that adds the key
to each scope of a 2.05 mitigation answer (re-encoded deterministically, as our codec does).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.client.role import DotsClient, make_scope
from gateway.config import load_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codes import Code, Method
from gateway.dots.keys import K
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.uri import Resource, parse_path
from gateway.transport.tls_context import ClientCredentials
from tests.integration.test_client_role import free_port
from tests.integration.test_gateway import (
    FAST,
    Pkis,
    client_of,
    gateway,
    gateway_config,
    pkis,  # noqa: F401 (the module-scoped fixture)
    upstream_config,
)

# Written as numbers so that this test runs unchanged against a codec without them.
ACL_LIST = 53  # RFC 9133 'ietf-dots-signal-control:acl-list'
ACTIVATION_TYPE = 52  # RFC 9133, inside an acl-list entry (2: immediate)
ACL_LISTS = [
    pytest.param([], id="empty"),
    pytest.param([{K.ACL_NAME: "an-accept-list", ACTIVATION_TYPE: 2}], id="one-acl"),
]


def with_acl_list(payload: bytes, acl_list: list[dict[int, Any]]) -> bytes:
    tree = cbor2.loads(payload)
    for scope in tree[K.MITIGATION_SCOPE][K.SCOPE]:
        scope[ACL_LIST] = acl_list
    return cbor2.dumps(tree, canonical=True)


@pytest.mark.parametrize("acl_list", ACL_LISTS)
async def test_client_decodes_a_get_answer_carrying_acl_list(
        pkis: Pkis, tmp_path: Path, acl_list: list[dict[int, Any]]) -> None:  # noqa: F811
    sent: list[bytes] = []
    port = free_port()
    (tmp_path / "up").mkdir(parents=True, exist_ok=True)
    config = upstream_config(tmp_path / "up", pkis, port)
    async with upstream_on(config, acl_list, sent):
        credentials = ClientCredentials(pkis.up / "client.pem", pkis.up / "client.key",
                                        pkis.up / "ca.pem")
        async with DotsClient(credentials, f"coaps://127.0.0.1:{port}",
                              state_dir=tmp_path / "client", request_timeout=15,
                              preferred_idle=FAST, preferred_mitigating=FAST) as client:
            created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/26"],
                                                       lifetime=600), mid=7)
            assert created.code is Code.CREATED, created
            got = await client.get(7)
            assert got.code is Code.CONTENT, got
            assert got.message is not None, got.diagnostic
            assert got.scopes[0].mid == 7
            assert got.scopes[0].extensions == ((ACL_LIST, acl_list),)
            assert got.response.payload == sent[-1]
            # Our server acts on acl-list (RFC 9133): without a data channel no ACL exists,
            # so one that names an ACL is refused with 4.04; an empty one is accepted.
            scope = replace(make_scope(target_prefix=["192.0.2.64/26"], lifetime=600),
                            extensions=((ACL_LIST, acl_list),))
            answered = await client.mitigate(scope, mid=8)
            if acl_list:
                assert answered.code is Code.NOT_FOUND, answered
                assert "no data channel" in answered.diagnostic
            else:
                assert answered.code is Code.CREATED, answered


@pytest.mark.parametrize("acl_list", ACL_LISTS)
async def test_gateway_relays_a_get_answer_carrying_acl_list_unchanged(
        pkis: Pkis, tmp_path: Path, acl_list: list[dict[int, Any]]) -> None:  # noqa: F811
    sent: list[bytes] = []
    up_port = free_port()
    (tmp_path / "up").mkdir(parents=True, exist_ok=True)
    config = upstream_config(tmp_path / "up", pkis, up_port)
    async with upstream_on(config, acl_list, sent):
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{up_port}"])), \
                client_of(pkis, port, tmp_path / "client") as client:
            created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/26"],
                                                       lifetime=600), mid=9)
            assert created.code is Code.CREATED, created
            got = await client.get(9)
            assert got.code is Code.CONTENT, got
            assert got.message is not None, got.diagnostic
            assert got.scopes[0].extensions == ((ACL_LIST, acl_list),)
            # What the upstream sent is what the client got: the scope differs only where
            # the gateway maps the client's request onto its own (cdid), nowhere near key 53.
            upstream_scope = cbor2.loads(sent[-1])[K.MITIGATION_SCOPE][K.SCOPE][0]
            client_scope = cbor2.loads(got.response.payload)[K.MITIGATION_SCOPE][K.SCOPE][0]
            assert client_scope[ACL_LIST] == upstream_scope[ACL_LIST]
            assert client_scope == upstream_scope


@contextlib.asynccontextmanager
async def upstream_on(config: Path, acl_list: list[dict[int, Any]], sent: list[bytes]
                      ) -> AsyncIterator[RunningServer]:
    running = await start_server(load_config(config))
    core = running.role.core
    plain = core.receive_request

    def receive_request(session: Any, request: DotsRequest, now: float) -> DotsResponse | None:
        response = plain(session, request, now)
        if (response is not None and request.method is Method.GET
                and response.code is Code.CONTENT and response.payload
                and parse_path(request.path).resource is Resource.MITIGATE):
            response = replace(response, payload=with_acl_list(response.payload, acl_list))
            sent.append(response.payload)
        return response

    core.receive_request = receive_request  # type: ignore[method-assign]
    try:
        yield running
    finally:
        await running.stop()
