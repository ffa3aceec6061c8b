"""RFC 9133 filter control from a peer we did not write: libcoap's coap-client sends a
hand-encoded mitigation request carrying ``ietf-dots-signal-control:acl-list`` to our
server; with the client's ACL known (a ``MemoryAclCatalog`` where the data channel would
keep it) it is accepted and returned by GET, activation type spelled out; the real
``dots-gateway server`` process, which has no data channel, answers 4.04 saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.daemon import start_server
from gateway.dots.codec import cbor_to_json
from tests.integration.test_filter_control import catalog_for, settings_for
from tests.interop.conftest import require, subprocess_dots_server
from tests.interop.peers import coap_client, coaps_uri, free_port, run_peer

pytestmark = pytest.mark.interop
OPENSSL = "coap-client-openssl"
# {1: {2: [{6: ["192.0.2.1/32"], 10: [17], 14: 3600,
#           53: [{23: "my-accept-list", 52: 2}]}]}}  (RFC 9133 §3.2, key 52 = immediate)
FILTER_CONTROL = bytes.fromhex(
    "a101a10281a406816c3139322e302e322e312f33320a81110e190e10"
    "183581a2176e6d792d6163636570742d6c697374183402")


def payload_of(output: str) -> bytes:
    found = re.findall(r"<<([0-9a-f]+)>>", output)
    return bytes.fromhex(found[-1]) if found else b""


async def test_libcoap_activates_an_acl(tmp_path: Path) -> None:
    require(OPENSSL)
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    body = tmp_path / "filter.cbor"
    body.write_bytes(FILTER_CONTROL)
    port = free_port()
    running = await start_server(settings_for(tmp_path, pki, port),
                                 acl_catalog=catalog_for(pki))
    auth = {"cert": pki / "client.pem", "key": pki / "client.key", "ca": pki / "ca.pem"}
    uri = coaps_uri("coaps", "127.0.0.1", port, f".well-known/dots/mitigate/cuid={cuid}/mid=5")
    try:
        put = await run_peer(coap_client(OPENSSL, uri, body=body, extra=["-N"], **auth),
                             timeout=20)  # type: ignore[arg-type]
        assert "c:2.01" in put.output, put
        get = await run_peer(coap_client(OPENSSL, uri, method="get", **auth),
                             timeout=20)  # type: ignore[arg-type]
        assert "c:2.05" in get.output, get
        scope = cbor_to_json(payload_of(get.output))[
            "ietf-dots-signal-channel:mitigation-scope"]["scope"][0]
        assert scope["ietf-dots-signal-control:acl-list"] == [
            {"acl-name": "my-accept-list", "activation-type": "immediate"}]
    finally:
        await running.stop()


async def test_daemon_without_data_channel_answers_libcoap_4_04(tmp_path: Path) -> None:
    require(OPENSSL)
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    body = tmp_path / "filter.cbor"
    body.write_bytes(FILTER_CONTROL)
    async with subprocess_dots_server(pki) as daemon:
        uri = coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                        f".well-known/dots/mitigate/cuid={cuid}/mid=5")
        put = await run_peer(coap_client(OPENSSL, uri, body=body, extra=["-N"],
                                         cert=pki / "client.pem", key=pki / "client.key",
                                         ca=pki / "ca.pem"), timeout=20)
        assert "c:4.04" in put.output, put
        assert "no data channel" in put.output, put
