"""Helpers for the interop suite: the in-test DOTS responder and the foreign peers' glue.

The responder (:class:`InProcessServer`) is our DTLS and TLS transports plus our CoAP message
layer (``gateway.coap``), answering just what the interop tests need:

* ``PUT /.well-known/dots/hb`` -> 2.04 (piggybacked ACK for CON, NON for NON; over TCP there
  are no types);
* ``GET /whoami`` -> 2.05, a JSON object with the identity the transport authenticated;
* any other path -> 4.04, another method on the hb path -> 4.05.

It stands in for ``dots-gateway server`` until that command exists (see the ``dots_server``
fixture in ``conftest.py``). It also records every request it answered, so tests can check
what a foreign client actually put on the wire.

The peer helpers run libcoap's example clients (always with ``-B`` and a subprocess
timeout, and reading their output, since ``coap-client-openssl`` 4.3.1 exits 0 even when
the handshake fails) and set aiocoap up with a client certificate, which its public API
cannot do (see :func:`aiocoap_tls_client`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.identity import PeerIdentity
from gateway.coap import (
    CoapMessage,
    ConnectionAborted,
    MessageLayer,
    ReleaseReceived,
    RequestReceived,
    TcpLayer,
)
from gateway.transport.dtls_server import DtlsServer, Limits
from gateway.transport.tls_context import Kind, ServerContext, ServerCredentials
from gateway.transport.tls_stream import StreamLimits, TlsServer

log = logging.getLogger(__name__)

HB_PATH = (".well-known", "dots", "hb")
#: application/dots+cbor (RFC 9132 §10.3)
DOTS_CBOR = 271
#: The heartbeat body of RFC 9132 §4.7: {"ietf-dots-signal-channel:heartbeat":
#: {"peer-hb-status": true}} with the CBOR keys 49 and 51.
HB_BODY = bytes.fromhex("a11831a11833f5")

GET, PUT = 1, 3
CHANGED, CONTENT, NOT_FOUND, METHOD_NOT_ALLOWED = 68, 69, 132, 133  # 2.04 2.05 4.04 4.05
JSON = 50


# --- the in-test responder ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the responder answered."""

    transport: str  # "coaps" or "coaps+tcp"
    method: int
    path: tuple[str, ...]
    mtype: str | None  # CON/NON over DTLS, None over TCP
    content_format: int | None
    payload: bytes
    peer: dict[str, Any]
    answer: int


def identity_of(conn: Any) -> dict[str, Any]:
    """What the transport authenticated, as /whoami reports it."""
    out: dict[str, Any] = {"transport": "coaps" if conn.kind is Kind.DTLS else "coaps+tcp",
                           "remote": str(conn.remote), "local": str(conn.local),
                           "cipher": conn.session.cipher, "version": conn.session.version}
    peer = conn.peer
    if peer is not None and peer.certificate is not None:
        ident = PeerIdentity.from_certificate(peer.certificate)
    elif peer is not None and peer.psk_identity is not None:
        ident = PeerIdentity.from_psk_identity(peer.psk_identity)
    else:
        return out | {"kind": None}
    return out | {"kind": ident.kind.value, "cuid": ident.cuid, "name": ident.name}


def route(request: CoapMessage, conn: Any, seen: list[Seen]) -> CoapMessage:
    path = request.uri_path
    if path == HB_PATH:
        response = (request.response(CHANGED) if request.code == PUT
                    else request.response(METHOD_NOT_ALLOWED))
    elif path == ("whoami",):
        body = json.dumps(identity_of(conn), sort_keys=True).encode()
        response = (request.response(CONTENT, payload=body, content_format=JSON)
                    if request.code == GET else request.response(METHOD_NOT_ALLOWED))
    else:
        response = request.response(NOT_FOUND)
    seen.append(Seen("coaps" if conn.kind is Kind.DTLS else "coaps+tcp", request.code, path,
                     request.mtype.name if request.mtype is not None else None,
                     request.content_format, request.payload, identity_of(conn),
                     response.code))
    return response


class UdpResponder:
    """The session handler for one DTLS session: our RFC 7252 message layer."""

    def __init__(self, conn: Any, seen: list[Seen]) -> None:
        self.conn = conn
        self.seen = seen
        self.layer = MessageLayer()
        self.lost: str | None = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.layer.receive(data, now)
        while (event := self.layer.next_event()) is not None:
            if isinstance(event, RequestReceived):
                response = route(event.message, self.conn, self.seen)
                self.layer.send_response(event.key, response, now)
            else:
                log.info("responder: %s from %s", event, self.conn.remote)
        for datagram in self.layer.datagrams_to_send():
            self.conn.send(datagram)

    def connection_lost(self, reason: str) -> None:
        self.lost = reason
        self.layer.close()


class TcpResponder:
    """The session handler for one TLS connection: our RFC 8323 layer (CSM first)."""

    def __init__(self, conn: Any, seen: list[Seen]) -> None:
        self.conn = conn
        self.seen = seen
        self.layer = TcpLayer()
        self.lost: str | None = None
        conn.send(self.layer.data_to_send())  # our CSM

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.layer.receive(data, now)
        aborted = False
        while (event := self.layer.next_event()) is not None:
            if isinstance(event, RequestReceived):
                self.layer.send_response(event.key, route(event.message, self.conn, self.seen),
                                         now)
            elif isinstance(event, ConnectionAborted):
                aborted = True
            elif isinstance(event, ReleaseReceived):
                # RFC 8323 §5.5: the sender of Release leaves closing to us. aiocoap's
                # client shutdown sends Release and never closes its side itself.
                aborted = True
            else:
                log.info("responder: %s from %s", event, self.conn.remote)
        out = self.layer.data_to_send()
        if out:
            self.conn.send(out)
        if aborted:
            self.conn.close("CoAP Abort or Release")

    def connection_lost(self, reason: str) -> None:
        self.lost = reason
        self.layer.close()


def read_psk(pki: Path) -> tuple[str, str]:
    psk = json.loads((pki / "psk.json").read_text())
    return psk["identity"], psk["key"]


def server_credentials(pki: Path, *, allow_legacy_psk: bool = False,
                       extra_psk: dict[bytes, bytes] | None = None) -> ServerCredentials:
    identity, key = read_psk(pki)
    return ServerCredentials(pki / "server.pem", pki / "server.key", pki / "ca.pem",
                             psk={identity.encode(): key.encode(), **(extra_psk or {})},
                             allow_legacy_psk=allow_legacy_psk)


#: Short deadlines so that a refused or abandoned handshake is swept within the test's time.
TEST_LIMITS = Limits(handshake_deadline=3.0, handshakes_per_source_per_second=1000.0,
                     handshake_burst=1000)
TEST_STREAM_LIMITS = StreamLimits(handshake_deadline=3.0)


def free_port(kind: int | None = None) -> int:
    """A port that was free on 127.0.0.1 and ::1 a moment ago, for ``kind`` (or for both
    UDP and TCP when None: the daemon uses one number for both)."""
    kinds = (kind,) if kind is not None else (socket.SOCK_DGRAM, socket.SOCK_STREAM)
    for _ in range(50):  # other processes hold ephemeral ports; retry until one fits all
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                for k in kinds:
                    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                        if family == socket.AF_INET and k == kinds[0]:
                            continue
                        with socket.socket(family, k) as probe:
                            if family == socket.AF_INET6:
                                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                            probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for UDP and TCP on 127.0.0.1 and ::1")


@dataclass
class InProcessServer:
    """Our DTLS and TLS endpoints with the responder, on one UDP and one TCP port shared by
    127.0.0.1 and ::1 (as ``dots-gateway server`` will listen on 4646 for both)."""

    pki: Path
    allow_legacy_psk: bool = False
    extra_psk: dict[bytes, bytes] = field(default_factory=dict)
    dtls: DtlsServer = field(init=False)
    tls: TlsServer = field(init=False)
    seen: list[Seen] = field(default_factory=list)
    handlers: list[UdpResponder | TcpResponder] = field(default_factory=list)

    def __post_init__(self) -> None:
        creds = server_credentials(self.pki, allow_legacy_psk=self.allow_legacy_psk,
                                   extra_psk=self.extra_psk)
        self.dtls = DtlsServer(ServerContext(Kind.DTLS, creds), self._udp, TEST_LIMITS)
        self.tls = TlsServer(ServerContext(Kind.TLS, creds), self._tcp, TEST_STREAM_LIMITS)

    def _udp(self, conn: Any) -> UdpResponder:
        handler = UdpResponder(conn, self.seen)
        self.handlers.append(handler)
        return handler

    def _tcp(self, conn: Any) -> TcpResponder:
        handler = TcpResponder(conn, self.seen)
        self.handlers.append(handler)
        return handler

    async def start(self) -> None:
        # Both families on one port, as the real server will use 4646 for both: pick a port
        # free on 127.0.0.1 and ::1, then start each endpoint once with both addresses
        # (IPV6_V6ONLY is set, so they never clash with each other). Retry on a lost race.
        for _ in range(20):
            try:
                await self.dtls.start([("127.0.0.1", port := free_port(socket.SOCK_DGRAM)),
                                       ("::1", port)])
                break
            except OSError:
                await self.dtls.stop()
                self.dtls = DtlsServer(self.dtls.context, self._udp, TEST_LIMITS)
        else:
            raise RuntimeError("no UDP port free on both 127.0.0.1 and ::1")
        for _ in range(20):
            try:
                await self.tls.start([("127.0.0.1", port := free_port(socket.SOCK_STREAM)),
                                      ("::1", port)])
                break
            except OSError:
                await self.tls.stop()
                self.tls = TlsServer(self.tls.context, self._tcp, TEST_STREAM_LIMITS)
        else:
            raise RuntimeError("no TCP port free on both 127.0.0.1 and ::1")

    @property
    def port_udp(self) -> int:
        return self.dtls.bound[0].port

    @property
    def port_tcp(self) -> int:
        return self.tls.bound[0].port

    async def stop(self) -> None:
        await self.dtls.stop()
        await self.tls.stop()

    def idle(self) -> bool:
        return (not self.dtls.sessions and self.dtls.handshaking == 0
                and not self.tls.connections)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no DTLS session (established or half-open) and no TLS connection is
        left; the handshake deadline (3 s here) and a 1 s sweep bound the wait."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


@dataclass(frozen=True)
class DotsServer:
    """What the ``dots_server`` fixture yields: where the server under test listens.

    ``host``/``host6`` serve the same ``port_udp`` (coaps) and ``port_tcp`` (coaps+tcp).
    ``inproc`` is set only for the in-test responder and gives tests access to its
    transports' sessions and counters; tests that look at it skip when it is None.
    """

    host: str
    port_udp: int
    port_tcp: int
    pki_dir: Path
    host6: str = "::1"
    inproc: InProcessServer | None = None

    def __iter__(self) -> Any:
        return iter((self.host, self.port_udp, self.port_tcp, self.pki_dir))


# --- libcoap -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRun:
    argv: list[str]
    returncode: int | None
    output: str  # stdout and stderr, interleaved in order
    elapsed: float

    @property
    def got_changed(self) -> bool:
        """A 2.04 response arrived (``-v 6`` prints the received PDU ``c:2.04``; at the
        default verbosity coap-client prints nothing for a 2.04 without payload)."""
        return "c:2.04" in self.output

    def __str__(self) -> str:
        head = f"$ {' '.join(self.argv)}\n(rc={self.returncode}, {self.elapsed:.1f}s)"
        return f"{head}\n{self.output}"


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


async def run_peer(argv: Sequence[str], *, timeout: float) -> PeerRun:
    """Run a peer without blocking the event loop (our server runs on it); kill it after
    ``timeout`` seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        out += f"\n[killed after {timeout}s]".encode()
    return PeerRun(list(argv), proc.returncode, out.decode("utf-8", "replace"),
                   time.monotonic() - started)


def coap_client(binary: str, uri: str, *, method: str = "put", body: Path | None = None,
                content_format: int | None = DOTS_CBOR, cert: Path | None = None,
                key: Path | None = None, ca: Path | None = None,
                psk: tuple[str, str] | None = None, wait: int = 5,
                verbosity: int = 6, extra: Sequence[str] = ()) -> list[str]:
    """argv for libcoap's example client. ``wait`` is its ``-B`` (give up after N s)."""
    argv = [binary, "-v", str(verbosity), "-B", str(wait), "-m", method]
    if body is not None:
        argv += ["-f", str(body)]
    if content_format is not None and body is not None:
        argv += ["-t", str(content_format)]
    if cert is not None:
        argv += ["-c", str(cert)]
    if key is not None:
        argv += ["-j", str(key)]
    if ca is not None:
        argv += ["-C", str(ca)]
    if psk is not None:
        argv += ["-u", psk[0], "-k", psk[1]]
    return [*argv, *extra, uri]


def coaps_uri(scheme: str, host: str, port: int, path: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}:{port}/{path}"


# --- certificates the dev PKI does not make ----------------------------------------------------


def _client_certificate(pki: Path, out: Path, name: str, *, days: tuple[int, int],
                        ca: bool, key_usage: x509.KeyUsage | None) -> tuple[Path, Path]:
    """A certificate with its key, signed by the dev CA, for cases the dev PKI lacks."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def make_expired_client(pki: Path, out: Path) -> tuple[Path, Path]:
    """A client certificate signed by the dev CA whose validity ended yesterday."""
    return _client_certificate(pki, out, "expired-client", days=(-30, -1), ca=False,
                               key_usage=None)


def make_sub_ca_client(pki: Path, out: Path) -> tuple[Path, Path]:
    """A CA certificate (CA:TRUE, signed by the dev CA) that OpenSSL's purpose check still
    lets through as a TLS client: key usage includes digitalSignature, EKU clientAuth.

    The dev CA itself is refused by OpenSSL already (its key usage is keyCertSign/cRLSign
    only), so only this certificate reaches the transport's own end-entity check
    (``tls_context.leaf_problem``), the case the prototype got wrong.
    """
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    return _client_certificate(pki, out, "sub-ca-client", days=(-1, 30), ca=True,
                               key_usage=usage)


# --- aiocoap -----------------------------------------------------------------------------------


def client_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    return ctx


async def aiocoap_tls_client(ssl_context: ssl.SSLContext) -> Any:
    """An aiocoap client context whose coaps+tcp connections use ``ssl_context``.

    PRIVATE API, pinned to aiocoap 0.4.17 (checked in ``test_aiocoap.py``): aiocoap's
    credentials format (``client_credentials.load_from_dict``) can name a CA file but not a
    client certificate, so the only way to present one is to replace the bound method
    ``CredentialsMap.ssl_client_context(scheme, hostinfo)`` that ``transports/tls.py``
    calls for each connection. (Its own fallback for ``coaps+tcp://*`` keys is also broken
    in 0.4.17: it returns before trying the wildcard.) Revisit when upgrading aiocoap.
    """
    import aiocoap

    ctx = await aiocoap.Context.create_client_context(transports=["tlsclient"])
    ctx.client_credentials.ssl_client_context = lambda scheme, hostinfo: ssl_context
    return ctx


async def aiocoap_dtls_client(uri_pattern: str, identity: str, key: str) -> Any:
    """An aiocoap client context with only the tinydtls transport and one PSK credential
    (public API: ``client_credentials.load_from_dict``)."""
    import aiocoap

    ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    ctx.client_credentials.load_from_dict({
        uri_pattern: {"dtls": {"psk": key.encode(), "client-identity": identity.encode()}},
    })
    return ctx
