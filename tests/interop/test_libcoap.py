"""libcoap's example clients (Debian libcoap3-bin 4.3.1) against the DOTS server under test.

``coap-client-openssl`` links Debian's OpenSSL 3.0, ``coap-client-gnutls`` GnuTLS 3.7. Both
exit 0 whatever happens (even after a failed handshake: they print ``ERR cannot send CoAP
pdu``), so every test reads their output; ``-v 6`` makes them print each PDU they receive
(``v:1 t:ACK c:2.04 ...``). Every run has ``-B`` (give up after N seconds) and a subprocess
timeout on top.

The last section (cross-process ticket resumption) uses our own client; it lives here
because this suite's file list is fixed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs.identity import PeerIdentity
from gateway.transport.dtls_client import connect_dtls
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    TicketKey,
    write_secret_file,
)
from tests.interop.conftest import REPO, require
from tests.interop.peers import (
    DOTS_CBOR,
    HB_BODY,
    HB_PATH,
    NOT_FOUND,
    DotsServer,
    PeerRun,
    coap_client,
    coaps_uri,
    run_peer,
)

pytestmark = pytest.mark.interop

OPENSSL = "coap-client-openssl"
GNUTLS = "coap-client-gnutls"
CLIENTS = [OPENSSL, GNUTLS]
HB = "/".join(HB_PATH)
#: -B for runs expected to succeed (they return as soon as the answer arrives) and for runs
#: expected to fail (some failures are silent, e.g. a wrong PSK, and last the whole -B).
WAIT_OK, WAIT_FAIL = 5, 2


async def run(argv: list[str]) -> PeerRun:
    wait = int(argv[argv.index("-B") + 1])
    return await run_peer(argv, timeout=wait + 10)


def host_of(server: DotsServer, family: str) -> str:
    return server.host if family == "ipv4" else server.host6


def credentials(server: DotsServer, auth: str, psk: tuple[str, str]) -> dict[str, Any]:
    pki = server.pki_dir
    if auth == "cert":
        return {"cert": pki / "client.pem", "key": pki / "client.key", "ca": pki / "ca.pem"}
    return {"psk": psk}


async def assert_server_idle(server: DotsServer) -> None:
    """No DTLS session (half-open or established) and no TLS connection is left. A refused
    or abandoned handshake may stay until the handshake deadline (3 s in the responder)."""
    if server.inproc is None:
        return  # TODO(dots-gateway server): read the daemon's counters once it has them
    assert await server.inproc.wait_idle(timeout=6.0), (
        f"server kept state: dtls sessions={list(server.inproc.dtls.sessions)} "
        f"handshaking={server.inproc.dtls.handshaking} "
        f"tls connections={len(server.inproc.tls.connections)}")


# --- positive: PUT hb -> 2.04 ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("auth", ["cert", "psk"])
@pytest.mark.parametrize("binary", CLIENTS)
async def test_dtls_put_hb_gets_2_04(binary: str, auth: str, family: str,
                                     dots_server: DotsServer, hb_body: Path,
                                     psk: tuple[str, str]) -> None:
    require(binary)
    uri = coaps_uri("coaps", host_of(dots_server, family), dots_server.port_udp, HB)
    result = await run(coap_client(binary, uri, body=hb_body, wait=WAIT_OK,
                                   **credentials(dots_server, auth, psk)))
    assert result.got_changed, result
    assert "t:ACK c:2.04" in result.output, result  # piggybacked on the ACK of the CON
    if dots_server.inproc is not None:
        [seen] = dots_server.inproc.seen
        assert (seen.transport, seen.mtype, seen.path) == ("coaps", "CON", HB_PATH)
        assert (seen.content_format, seen.payload) == (DOTS_CBOR, HB_BODY)
        assert seen.peer["kind"] == ("x509" if auth == "cert" else "psk")
        assert seen.peer["version"] == "DTLSv1.2"
        # RFC 9132 §7.1: ECDHE for certificates and PSK alike.
        assert seen.peer["cipher"].startswith("ECDHE-"), seen.peer
        assert seen.peer["local"].startswith(
            "[::1]" if family == "ipv6" else "127.0.0.1"), seen.peer
        # The 2.04 was sealed by our own record layer (dtls_records) after the hand-over.
        assert dots_server.inproc.dtls.counters.sessions_handed_over == 1
    await assert_server_idle(dots_server)  # the client's close_notify ended the session


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("binary", CLIENTS)
async def test_tls_put_hb_with_client_certificate_gets_2_04(
        binary: str, family: str, dots_server: DotsServer, hb_body: Path,
        psk: tuple[str, str]) -> None:
    require(binary)
    uri = coaps_uri("coaps+tcp", host_of(dots_server, family), dots_server.port_tcp, HB)
    result = await run(coap_client(binary, uri, body=hb_body, wait=WAIT_OK,
                                   **credentials(dots_server, "cert", psk)))
    assert result.got_changed, result
    if dots_server.inproc is not None:
        [seen] = dots_server.inproc.seen
        assert (seen.transport, seen.mtype, seen.path) == ("coaps+tcp", None, HB_PATH)
        assert (seen.content_format, seen.payload) == (DOTS_CBOR, HB_BODY)
        assert seen.peer["kind"] == "x509"
    await assert_server_idle(dots_server)


@pytest.mark.parametrize("binary", CLIENTS)
async def test_tls_put_hb_with_psk(binary: str, dots_server: DotsServer, hb_body: Path,
                                   psk: tuple[str, str]) -> None:
    """Not required by RFC 9132 for TCP, but the server offers PSK on both transports."""
    require(binary)
    uri = coaps_uri("coaps+tcp", dots_server.host, dots_server.port_tcp, HB)
    result = await run(coap_client(binary, uri, body=hb_body, wait=WAIT_OK, psk=psk))
    assert result.got_changed, result
    if dots_server.inproc is not None:
        [seen] = dots_server.inproc.seen
        assert seen.peer["kind"] == "psk" and seen.peer["name"] == psk[0]
    await assert_server_idle(dots_server)


async def test_dtls_non_confirmable_put_hb_gets_non_2_04(dots_server: DotsServer,
                                                         hb_body: Path,
                                                         psk: tuple[str, str]) -> None:
    """RFC 9132 §4.7: heartbeats are NON; a NON request gets a NON response."""
    require(OPENSSL)
    uri = coaps_uri("coaps", dots_server.host, dots_server.port_udp, HB)
    result = await run(coap_client(OPENSSL, uri, body=hb_body, wait=WAIT_OK, psk=psk,
                                   extra=["-N"]))
    assert "t:NON c:2.04" in result.output, result
    if dots_server.inproc is not None:
        assert [s.mtype for s in dots_server.inproc.seen] == ["NON"]
    await assert_server_idle(dots_server)


@pytest.mark.parametrize("auth", ["cert", "psk"])
@pytest.mark.parametrize("scheme", ["coaps", "coaps+tcp"])
async def test_whoami_reports_the_authenticated_identity(scheme: str, auth: str,
                                                         dots_server: DotsServer,
                                                         psk: tuple[str, str]) -> None:
    """The identity the transport hands up is the one the peer authenticated with: the cuid
    of RFC 9132 §4.4.1.1 (checked against certs.identity for the certificate on disk)."""
    require(OPENSSL)
    if dots_server.inproc is None:
        pytest.skip("/whoami exists only in the in-test responder")
    port = dots_server.port_udp if scheme == "coaps" else dots_server.port_tcp
    uri = coaps_uri(scheme, dots_server.host, port, "whoami")
    result = await run(coap_client(OPENSSL, uri, method="get", wait=WAIT_OK,
                                   verbosity=3, **credentials(dots_server, auth, psk)))
    body = json.loads(result.output.strip().splitlines()[-1])
    if auth == "cert":
        expected = PeerIdentity.from_certificate(
            (dots_server.pki_dir / "client.pem").read_bytes())
    else:
        expected = PeerIdentity.from_psk_identity(psk[0])
    assert (body["kind"], body["cuid"], body["transport"]) == (
        expected.kind.value, expected.cuid, scheme), result


async def test_unknown_path_gets_4_04(dots_server: DotsServer, psk: tuple[str, str]) -> None:
    require(OPENSSL)
    uri = coaps_uri("coaps", dots_server.host, dots_server.port_udp, ".well-known/dots/nope")
    result = await run(coap_client(OPENSSL, uri, method="get", wait=WAIT_OK, psk=psk))
    assert "c:4.04" in result.output, result
    if dots_server.inproc is not None:
        assert [s.answer for s in dots_server.inproc.seen] == [NOT_FOUND]


# --- negative: refused handshakes leave nothing behind -----------------------------------------

#: case -> (what coap-client-openssl prints, what coap-client-gnutls prints); None: nothing
#: specific (the run just times out after -B). GnuTLS only sends a certificate whose issuer
#: is in the server's CertificateRequest CA list, and refuses to sign with one whose key
#: usage lacks digitalSignature, so for GnuTLS the untrusted and CA cases degenerate into
#: "no certificate" (the server answers handshake_failure, alert 40).
REFUSALS: dict[str, tuple[str | None, str | None]] = {
    "untrusted-ca": ("alert read:fatal:unknown CA", "Alert '40'"),
    "no-certificate": ("alert read:fatal:handshake failure", "Alert '40'"),
    "ca-as-client-certificate": ("alert read:fatal:unsupported certificate",
                                 "Local certificate does not allow digital signatures"),
    "expired-certificate": ("alert read:fatal:certificate expired", "Alert '45'"),
    # DTLS drops records that fail authentication silently (RFC 6347 §4.1.2.7): the
    # server never sees a valid Finished, so nobody sends an alert and the server's
    # half-open session lasts until its handshake deadline.
    "wrong-psk-key": (None, None),
    "unknown-psk-identity": ("alert read:fatal:unknown PSK identity", "Alert '115'"),
}


def refused_credentials(case: str, server: DotsServer, rogue_pki: Path,
                        expired: tuple[Path, Path], psk: tuple[str, str]) -> dict[str, Any]:
    pki = server.pki_dir
    ca = pki / "ca.pem"
    return {
        "untrusted-ca": {"cert": rogue_pki / "client.pem", "key": rogue_pki / "client.key",
                         "ca": ca},
        "no-certificate": {"ca": ca},
        "ca-as-client-certificate": {"cert": ca, "key": pki / "ca.key", "ca": ca},
        "expired-certificate": {"cert": expired[0], "key": expired[1], "ca": ca},
        "wrong-psk-key": {"psk": (psk[0], psk[1][::-1])},
        "unknown-psk-identity": {"psk": ("nobody-" + psk[0], psk[1])},
    }[case]


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("binary", CLIENTS)
async def test_dtls_refused_handshake(binary: str, case: str, dots_server: DotsServer,
                                      hb_body: Path, rogue_pki: Path,
                                      expired_client: tuple[Path, Path],
                                      psk: tuple[str, str]) -> None:
    require(binary)
    uri = coaps_uri("coaps", dots_server.host, dots_server.port_udp, HB)
    creds = refused_credentials(case, dots_server, rogue_pki, expired_client, psk)
    result = await run(coap_client(binary, uri, body=hb_body, wait=WAIT_FAIL, **creds))
    assert not result.got_changed, result
    assert "c:2." not in result.output, result
    expected = REFUSALS[case][CLIENTS.index(binary)]
    if expected is not None:
        assert expected in result.output, result
    await assert_server_idle(dots_server)
    if dots_server.inproc is not None:
        counters = dots_server.inproc.dtls.counters
        assert dots_server.inproc.seen == []  # no request reached the CoAP layer
        assert counters.handshakes_completed == 0, counters
        assert counters.handshakes_failed + counters.handshakes_timed_out >= 1, counters


@pytest.mark.parametrize("case", ["untrusted-ca", "no-certificate", "expired-certificate"])
async def test_tls_refused_handshake(case: str, dots_server: DotsServer, hb_body: Path,
                                     rogue_pki: Path, expired_client: tuple[Path, Path],
                                     psk: tuple[str, str]) -> None:
    require(OPENSSL)
    uri = coaps_uri("coaps+tcp", dots_server.host, dots_server.port_tcp, HB)
    creds = refused_credentials(case, dots_server, rogue_pki, expired_client, psk)
    result = await run(coap_client(OPENSSL, uri, body=hb_body, wait=WAIT_FAIL, **creds))
    assert not result.got_changed, result
    await assert_server_idle(dots_server)
    if dots_server.inproc is not None:
        counters = dots_server.inproc.tls.counters
        assert dots_server.inproc.seen == []
        assert counters.handshakes_completed == 0, counters
        assert counters.handshakes_failed >= 1, counters


@pytest.mark.parametrize("scheme", ["coaps", "coaps+tcp"])
@pytest.mark.parametrize("binary", CLIENTS)
async def test_ca_certificate_that_openssl_accepts_is_refused(
        binary: str, scheme: str, dots_server: DotsServer, hb_body: Path,
        sub_ca_client: tuple[Path, Path]) -> None:
    """A CA:TRUE certificate with digitalSignature and clientAuth passes OpenSSL's own
    checks; the transport's end-entity check must refuse it (the prototype accepted it)."""
    require(binary)
    port = dots_server.port_udp if scheme == "coaps" else dots_server.port_tcp
    uri = coaps_uri(scheme, dots_server.host, port, HB)
    result = await run(coap_client(binary, uri, body=hb_body, wait=WAIT_FAIL,
                                   cert=sub_ca_client[0], key=sub_ca_client[1],
                                   ca=dots_server.pki_dir / "ca.pem"))
    assert not result.got_changed, result
    await assert_server_idle(dots_server)
    if dots_server.inproc is not None:
        endpoint = dots_server.inproc.dtls if scheme == "coaps" else dots_server.inproc.tls
        assert dots_server.inproc.seen == []
        assert endpoint.counters.handshakes_completed == 0, endpoint.counters
        assert endpoint.counters.handshakes_failed == 1, endpoint.counters


@pytest.mark.parametrize("scheme", ["coaps", "coaps+tcp"])
async def test_ca_certificate_refusal_is_signalled_with_a_fatal_alert(
        scheme: str, dots_server: DotsServer, hb_body: Path,
        sub_ca_client: tuple[Path, Path]) -> None:
    require(OPENSSL)
    port = dots_server.port_udp if scheme == "coaps" else dots_server.port_tcp
    uri = coaps_uri(scheme, dots_server.host, port, HB)
    result = await run(coap_client(OPENSSL, uri, body=hb_body, wait=WAIT_FAIL,
                                   cert=sub_ca_client[0], key=sub_ca_client[1],
                                   ca=dots_server.pki_dir / "ca.pem"))
    assert not result.got_changed, result
    assert "alert read:fatal" in result.output, result


# --- cross-process ticket resumption (our own client) ------------------------------------------


class TicketServer:
    """``python -m tests.interop.ticket_server`` in a subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls, pki: Path, keys: Path) -> TicketServer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.interop.ticket_server", str(pki), str(keys),
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if not line.startswith(b"ready "):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"ticket server did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    async def stop(self) -> dict[str, Any]:
        """SIGTERM; returns the counters it prints on the way out."""
        assert self.proc.stdout is not None
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            out = await asyncio.wait_for(self.proc.stdout.read(), 10)
        except TimeoutError:
            self.proc.kill()
            out = b""
        await self.proc.wait()
        for line in out.decode().splitlines():
            if line.startswith("stopped "):
                return dict(json.loads(line.removeprefix("stopped ")))
        return {}


@pytest.fixture
async def ticket_servers(pki: Path, tmp_path: Path) -> AsyncIterator[list[TicketServer]]:
    """Three server processes: the first two share a ticket key file, the third has its own."""
    shared, other = tmp_path / "shared.keys", tmp_path / "other.keys"
    write_secret_file(shared, TicketKey.LENGTH)
    write_secret_file(other, TicketKey.LENGTH)
    started = await asyncio.gather(*(TicketServer.start(pki, keys)
                                     for keys in (shared, shared, other)),
                                   return_exceptions=True)
    servers = [s for s in started if isinstance(s, TicketServer)]
    try:
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def echo(port: int, ctx: ClientContext, *, resume: bytes | None = None) -> Any:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    conn = await connect_dtls("127.0.0.1", port, ctx,
                              lambda data: got.done() or got.set_result(data),
                              server_name="localhost", resume=resume, timeout=5)
    conn.send(b"ping")
    assert await asyncio.wait_for(got, 5) == b"ping"
    return conn


async def test_resumption_across_processes_sharing_the_ticket_key_file(
        ticket_servers: list[TicketServer], pki: Path) -> None:
    """RFC 9132 §7.1 stateless resumption across an anycast fleet: a ticket issued by one
    process is accepted by another process that loaded the same key file
    (``TicketKeyRing.from_file``), and not by one with a different file, which then falls
    back to a full handshake."""
    first, second, stranger = ticket_servers
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    conn = await echo(first.port, ctx)
    assert not conn.session.resumed
    ticket = conn.ticket
    conn.close()
    assert ticket, "the first server issued no session ticket"

    again = await echo(second.port, ctx, resume=ticket)
    assert again.session.resumed, "the second process did not resume the first one's ticket"
    assert again.session.peer is not None and again.session.peer.certificate is not None
    again.close()

    full = await echo(stranger.port, ctx, resume=ticket)
    assert not full.session.resumed
    full.close()

    counters = [await server.stop() for server in ticket_servers]
    assert [c.get("handshakes_completed") for c in counters] == [1, 1, 1], counters
    assert [c.get("sessions_resumed") for c in counters] == [0, 1, 0], counters
