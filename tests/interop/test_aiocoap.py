"""aiocoap as a client: coaps+tcp with a client certificate, coaps (tinydtls) with PSK.

aiocoap cannot name a client certificate through its public API; ``peers.aiocoap_tls_client``
replaces a private hook (pinned to aiocoap 0.4.17, checked below). Its DTLS transport is
tinydtls through DTLSSocket: PSK only, and only the non-ECDHE suites PSK-AES128-CCM8 /
PSK-AES128-CCM, so the server must opt in with ``allow_legacy_psk=True`` (a test-only
setting) and tinydtls keys are at most 16 bytes (``DTLS_PSK_MAX_KEY_LEN``; the dev PKI's
32-character key makes tinydtls abort the handshake with an internal_error alert), so the
DTLS tests give the responder an extra 16-byte PSK.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from certs.identity import PeerIdentity
from tests.interop.peers import (
    DOTS_CBOR,
    HB_BODY,
    HB_PATH,
    DotsServer,
    aiocoap_dtls_client,
    aiocoap_tls_client,
    client_ssl_context,
)

aiocoap = pytest.importorskip("aiocoap")

pytestmark = pytest.mark.interop

PINNED_AIOCOAP = "0.4.17"
HB = "/".join(HB_PATH)
#: A PSK tinydtls can use (identity <= 32 bytes, key <= 16 bytes).
TINYDTLS_PSK = ("aiocoap-tinydtls", "0123456789abcdef")


def tinydtls_missing() -> str | None:
    import aiocoap.defaults

    missing = aiocoap.defaults.dtls_missing_modules()
    if missing:
        return (f"aiocoap's tinydtls transport is unavailable (missing {missing}); "
                "`pip install DTLSSocket` needs autoconf (autoreconf) and a C compiler")
    return None


def url(scheme: str, host: str, port: int, path: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}:{port}/{path}"


def put_hb(uri: str) -> Any:
    return aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=HB_BODY,
                           content_format=DOTS_CBOR)


async def request(ctx: Any, message: Any, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(ctx.request(message).response, timeout)


class Clients:
    """aiocoap client contexts of one test; each is shut down exactly once (a second
    ``Context.shutdown()`` raises AttributeError in aiocoap 0.4.17)."""

    def __init__(self) -> None:
        self.open: list[Any] = []

    async def __call__(self, creating: Awaitable[Any]) -> Any:
        ctx = await creating
        self.open.append(ctx)
        return ctx

    async def shutdown(self, ctx: Any) -> None:
        if ctx in self.open:
            self.open.remove(ctx)
            await ctx.shutdown()


@pytest.fixture
async def client_context() -> AsyncIterator[Clients]:
    clients = Clients()
    yield clients
    for ctx in list(clients.open):
        await clients.shutdown(ctx)


async def idle(server: DotsServer, timeout: float = 6.0) -> bool:
    return server.inproc is None or await server.inproc.wait_idle(timeout)


def test_aiocoap_private_hook_is_where_we_expect_it() -> None:
    """peers.aiocoap_tls_client overrides CredentialsMap.ssl_client_context, which
    aiocoap.transports.tls.TLSClient calls per connection. Fails on another aiocoap
    version so that someone re-checks the hook (then update PINNED_AIOCOAP)."""
    import inspect

    import aiocoap.credentials
    import aiocoap.meta
    import aiocoap.transports.tls

    assert aiocoap.meta.version == PINNED_AIOCOAP
    assert importlib.metadata.version("aiocoap") == PINNED_AIOCOAP
    assert callable(aiocoap.credentials.CredentialsMap.ssl_client_context)
    source = inspect.getsource(aiocoap.transports.tls.TLSClient._ssl_context_factory)
    assert "self.credentials.ssl_client_context(self._scheme, hostinfo)" in source


# --- coaps+tcp with a client certificate -------------------------------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_tls_put_hb_with_client_certificate_gets_2_04(
        family: str, dots_server: DotsServer, client_context: Clients) -> None:
    pki = dots_server.pki_dir
    ctx = await client_context(aiocoap_tls_client(
        client_ssl_context(pki / "client.pem", pki / "client.key", pki / "ca.pem")))
    host = dots_server.host if family == "ipv4" else dots_server.host6
    response = await request(ctx, put_hb(url("coaps+tcp", host, dots_server.port_tcp, HB)))
    assert str(response.code) == "2.04 Changed", response
    whoami = await request(ctx, aiocoap.Message(
        code=aiocoap.GET, uri=url("coaps+tcp", host, dots_server.port_tcp, "whoami")))
    if dots_server.inproc is not None:
        assert str(whoami.code) == "2.05 Content"
        identity = json.loads(whoami.payload)
        expected = PeerIdentity.from_certificate((pki / "client.pem").read_bytes())
        assert (identity["kind"], identity["cuid"]) == ("x509", expected.cuid)
        seen = dots_server.inproc.seen[0]
        assert (seen.transport, seen.path, seen.content_format, seen.payload) == (
            "coaps+tcp", HB_PATH, DOTS_CBOR, HB_BODY)
    await client_context.shutdown(ctx)  # sends Release; the server closes (RFC 8323 §5.5)
    assert await idle(dots_server)


async def test_tls_without_client_certificate_is_refused(dots_server: DotsServer,
                                                         client_context: Clients) -> None:
    pki = dots_server.pki_dir
    import ssl

    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(pki / "ca.pem")
    ctx = await client_context(aiocoap_tls_client(no_cert))
    uri = url("coaps+tcp", dots_server.host, dots_server.port_tcp, HB)
    with pytest.raises(aiocoap.error.NetworkError):
        await request(ctx, put_hb(uri))
    assert await idle(dots_server)
    if dots_server.inproc is not None:
        assert dots_server.inproc.seen == []
        assert dots_server.inproc.tls.counters.handshakes_failed == 1


# --- coaps (DTLS) with PSK through tinydtls ----------------------------------------------------


@pytest.fixture
async def legacy_psk_server(responder: Callable[..., Awaitable[DotsServer]]) -> DotsServer:
    """The in-test responder with the legacy (non-ECDHE) PSK suites tinydtls needs."""
    if (reason := tinydtls_missing()) is not None:
        pytest.skip(reason)
    identity, key = TINYDTLS_PSK
    return await responder(allow_legacy_psk=True, extra_psk={identity.encode(): key.encode()})


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_dtls_psk_put_hb_gets_2_04_with_tinydtls(family: str,
                                                        legacy_psk_server: DotsServer,
                                                        client_context: Clients) -> None:
    server = legacy_psk_server
    host = server.host if family == "ipv4" else server.host6
    identity, key = TINYDTLS_PSK
    ctx = await client_context(aiocoap_dtls_client(
        url("coaps", host, server.port_udp, "*"), identity, key))
    response = await request(ctx, put_hb(url("coaps", host, server.port_udp, HB)))
    assert str(response.code) == "2.04 Changed", response
    assert server.inproc is not None
    [seen] = server.inproc.seen
    assert (seen.transport, seen.mtype, seen.path, seen.payload) == (
        "coaps", "CON", HB_PATH, HB_BODY)
    assert (seen.peer["kind"], seen.peer["name"]) == ("psk", identity)
    assert seen.peer["cipher"] in ("PSK-AES128-CCM8", "PSK-AES128-CCM"), seen.peer
    # The answer above was already sealed by our own record layer (dtls_records), OpenSSL's
    # state freed after the request: tinydtls reads CCM records we protected.
    assert server.inproc.dtls.counters.sessions_handed_over == 1
    response = await request(ctx, put_hb(url("coaps", host, server.port_udp, HB)))
    assert str(response.code) == "2.04 Changed", response
    await client_context.shutdown(ctx)  # tinydtls sends close_notify
    assert await idle(server)


async def test_dtls_psk_without_legacy_opt_in_is_refused(
        responder: Callable[..., Awaitable[DotsServer]], client_context: Clients) -> None:
    """The default cipher policy (ECDHE-PSK only) shares no suite with tinydtls."""
    if (reason := tinydtls_missing()) is not None:
        pytest.skip(reason)
    identity, key = TINYDTLS_PSK
    server = await responder(extra_psk={identity.encode(): key.encode()})
    ctx = await client_context(aiocoap_dtls_client(
        url("coaps", server.host, server.port_udp, "*"), identity, key))
    with pytest.raises(aiocoap.error.NetworkError):
        await request(ctx, put_hb(url("coaps", server.host, server.port_udp, HB)))
    assert await idle(server)
    assert server.inproc is not None
    assert server.inproc.seen == []
    assert server.inproc.dtls.counters.handshakes_failed == 1
