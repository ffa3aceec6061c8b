"""The real ``dots-gateway server`` process against libcoap's coap-client (a peer we did not
write): heartbeats over DTLS (certificate and PSK, IPv4 and IPv6) and TLS, a hand-encoded
CBOR mitigation PUT, GET and DELETE, refused credentials, and a clean SIGTERM shutdown.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs.identity import cuid_from_certificate
from gateway.dots.codec import cbor_to_json
from tests.interop.conftest import require, subprocess_dots_server
from tests.interop.peers import DotsServer, coap_client, coaps_uri, read_psk, run_peer

pytestmark = pytest.mark.interop
OPENSSL = "coap-client-openssl"
HB = ".well-known/dots/hb"

@pytest.fixture
async def daemon(pki: Path) -> AsyncIterator[DotsServer]:
    async with subprocess_dots_server(pki) as server:
        yield server


def body_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def mitigation_body() -> bytes:
    from gateway.dots.codec import json_to_cbor

    data = json_to_cbor(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["2001:db8:6401::/64"], "target-protocol": [6], "lifetime": 3600}]}}))
    # The same bytes, spelled out, so the peer gets what RFC 9132 Table 5 prescribes:
    assert data == bytes.fromhex(
        "a101a10281a306817232303031"  # {1: {2: [{6: ["2001...
        "3a6462383a363430313a3a2f3634"  # ...:db8:6401::/64"],
        "0a81060e190e10")  # 10: [6], 14: 3600}]}}
    return data


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("credential", ["certificate", "psk"])
async def test_heartbeat_over_dtls(daemon: DotsServer, hb_body: Path, host: str,
                                   credential: str) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    auth = ({"cert": pki / "client.pem", "key": pki / "client.key", "ca": pki / "ca.pem"}
            if credential == "certificate" else {"psk": read_psk(pki)})
    result = await run_peer(coap_client(OPENSSL, coaps_uri("coaps", host, daemon.port_udp, HB),
                                        body=hb_body, **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.04" in result.output, result


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_heartbeat_over_tls(daemon: DotsServer, hb_body: Path, host: str) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    result = await run_peer(coap_client(
        OPENSSL, coaps_uri("coaps+tcp", host, daemon.port_tcp, HB), body=hb_body,
        cert=pki / "client.pem", key=pki / "client.key", ca=pki / "ca.pem"), timeout=20)
    assert "c:2.04" in result.output, result


def payload_of(output: str) -> bytes:
    """The hex payload libcoap prints between << and >> at verbosity 6."""
    found = re.findall(r"<<([0-9a-f]+)>>", output)
    return bytes.fromhex(found[-1]) if found else b""


@pytest.mark.parametrize("scheme", ["coaps", "coaps+tcp"])
async def test_mitigation_put_get_delete(daemon: DotsServer, tmp_path: Path, scheme: str) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    port = daemon.port_udp if scheme == "coaps" else daemon.port_tcp
    auth = {"cert": pki / "client.pem", "key": pki / "client.key", "ca": pki / "ca.pem"}
    base = f".well-known/dots/mitigate/cuid={cuid}"
    mid = 7 if scheme == "coaps" else 8
    put = await run_peer(coap_client(
        OPENSSL, coaps_uri(scheme, "127.0.0.1", port, f"{base}/mid={mid}"),
        body=body_file(tmp_path, "m.cbor", mitigation_body()),
        extra=["-N"] if scheme == "coaps" else [], **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.01" in put.output, put
    created = cbor_to_json(payload_of(put.output))
    assert created["ietf-dots-signal-channel:mitigation-scope"]["scope"][0] == {
        "mid": mid, "lifetime": 3600}
    get = await run_peer(coap_client(
        OPENSSL, coaps_uri(scheme, "127.0.0.1", port, f"{base}/mid={mid}"), method="get",
        **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.05" in get.output, get
    scope = cbor_to_json(payload_of(get.output))["ietf-dots-signal-channel:mitigation-scope"][
        "scope"][0]
    assert scope["status"] == "attack-mitigation-in-progress"
    assert scope["target-prefix"] == ["2001:db8:6401::/64"]
    delete = await run_peer(coap_client(
        OPENSSL, coaps_uri(scheme, "127.0.0.1", port, f"{base}/mid={mid}"), method="delete",
        **auth), timeout=20)  # type: ignore[arg-type]
    assert "c:2.02" in delete.output, delete
    again = await run_peer(coap_client(
        OPENSSL, coaps_uri(scheme, "127.0.0.1", port, f"{base}/mid={mid}"), method="get",
        **auth), timeout=20)  # type: ignore[arg-type]
    status = cbor_to_json(payload_of(again.output))["ietf-dots-signal-channel:mitigation-scope"][
        "scope"][0]["status"]
    assert status == "dots-client-withdrawn-mitigation"  # active-but-terminating (§4.4.4)


async def test_another_clients_cuid_is_a_conflict(daemon: DotsServer, tmp_path: Path) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    body = body_file(tmp_path, "m.cbor", mitigation_body())
    uri = coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                    f".well-known/dots/mitigate/cuid={cuid}/mid=1")
    first = await run_peer(coap_client(OPENSSL, uri, body=body, cert=pki / "client.pem",
                                       key=pki / "client.key", ca=pki / "ca.pem"), timeout=20)
    assert "c:2.01" in first.output, first
    # The PSK client borrows the certificate client's cuid: RFC 9132 §4.4.1.1 cuid collision.
    second = await run_peer(coap_client(OPENSSL, uri, body=body, psk=read_psk(pki)), timeout=20)
    assert "c:4.09" in second.output, second
    conflict = cbor_to_json(payload_of(second.output))
    assert conflict["ietf-dots-signal-channel:mitigation-scope"]["scope"][0][
        "conflict-information"] == {"conflict-cause": "cuid-collision"}


async def test_untrusted_client_is_refused(daemon: DotsServer, rogue_pki: Path,
                                           hb_body: Path) -> None:
    require(OPENSSL)
    result = await run_peer(coap_client(
        OPENSSL, coaps_uri("coaps", "127.0.0.1", daemon.port_udp, HB), body=hb_body, wait=3,
        cert=rogue_pki / "client.pem", key=rogue_pki / "client.key",
        ca=daemon.pki_dir / "ca.pem"), timeout=20)
    assert "c:2.04" not in result.output
    assert "alert" in result.output, result


async def test_cuid_not_derived_from_the_credential_is_unauthorized(daemon: DotsServer,
                                                                    tmp_path: Path) -> None:
    require(OPENSSL)
    pki = daemon.pki_dir
    uri = coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                    ".well-known/dots/mitigate/cuid=someoneelse0000000000A/mid=1")
    result = await run_peer(coap_client(OPENSSL, uri, body=body_file(tmp_path, "m.cbor",
                                                                     mitigation_body()),
                                        cert=pki / "client.pem", key=pki / "client.key",
                                        ca=pki / "ca.pem"), timeout=20)
    assert "c:4.01" in result.output, result
    assert "not the one derived from your credential" in result.output


async def test_prefix_outside_the_clients_domain_is_unauthorized(daemon: DotsServer,
                                                                  tmp_path: Path) -> None:
    require(OPENSSL)
    from gateway.dots.codec import json_to_cbor

    pki = daemon.pki_dir
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    body = json_to_cbor(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["198.51.100.0/24"], "lifetime": 3600}]}}))
    uri = coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                    f".well-known/dots/mitigate/cuid={cuid}/mid=1")
    result = await run_peer(coap_client(OPENSSL, uri, body=body_file(tmp_path, "o.cbor", body),
                                        cert=pki / "client.pem", key=pki / "client.key",
                                        ca=pki / "ca.pem"), timeout=20)
    assert "c:4.01" in result.output, result
    assert "outside the prefixes configured for client cert-client" in result.output


async def test_overlapping_request_of_another_client_is_4_09(daemon: DotsServer,
                                                             tmp_path: Path) -> None:
    """RFC 9132 §4.4.1.3, default policy reject-new: the newcomer gets 4.09 with
    conflict-information naming the overlap and a retry-timer."""
    require(OPENSSL)
    from certs.identity import cuid_from_psk_identity
    from gateway.dots.codec import json_to_cbor

    pki = daemon.pki_dir
    cert_cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    psk = read_psk(pki)

    def body(prefix: str) -> Path:
        return body_file(tmp_path, prefix.replace("/", "_"), json_to_cbor(json.dumps(
            {"ietf-dots-signal-channel:mitigation-scope": {"scope": [
                {"target-prefix": [prefix], "lifetime": 600}]}})))

    first = await run_peer(coap_client(
        OPENSSL, coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                           f".well-known/dots/mitigate/cuid={cert_cuid}/mid=20"),
        body=body("192.0.2.0/24"), cert=pki / "client.pem", key=pki / "client.key",
        ca=pki / "ca.pem"), timeout=20)
    assert "c:2.01" in first.output, first
    second = await run_peer(coap_client(
        OPENSSL, coaps_uri("coaps", "127.0.0.1", daemon.port_udp,
                           f".well-known/dots/mitigate/cuid={cuid_from_psk_identity(psk[0])}"
                           "/mid=1"),
        body=body("192.0.2.128/25"), psk=psk), timeout=20)
    assert "c:4.09" in second.output, second
    info = cbor_to_json(payload_of(second.output))["ietf-dots-signal-channel:mitigation-scope"][
        "scope"][0]["conflict-information"]
    assert info["conflict-status"] == "request-inactive-other-active"
    assert info["conflict-cause"] == "overlapping-targets"
    assert info["conflict-scope"]["target-prefix"] == ["192.0.2.128/25"]
    assert 0 < int(info["retry-timer"]) <= 600
