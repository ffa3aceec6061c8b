"""Real (D)TLS handshakes on the system OpenSSL, joined in memory (no sockets).

Every handshake here is a real one with real certificates from the dev PKI; only the
network is replaced by moving bytes between two ``SecureSession`` objects.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.devpki import init_dev_pki
from gateway.transport.dtls_records import pack_records
from gateway.transport.openssl_ffi import OpenSSLError
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    CookieSecrets,
    Kind,
    ServerContext,
    ServerCredentials,
    TicketKey,
    TicketKeyRing,
    leaf_problem,
    write_secret_file,
)
from tests.support.secure_pair import handshake


@pytest.fixture(scope="module")
def psk(pki: Path) -> tuple[bytes, bytes]:
    data = json.loads((pki / "psk.json").read_text())
    return data["identity"].encode(), data["key"].encode()


def server_creds(pki: Path, psk: tuple[bytes, bytes]) -> ServerCredentials:
    return ServerCredentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem", psk={psk[0]: psk[1]}
    )


def cert_client(pki: Path, cert: str = "client", ca: str = "ca.pem") -> ClientCredentials:
    return ClientCredentials(pki / f"{cert}.pem", pki / f"{cert}.key", pki / ca)


def pair(
    kind: Kind, client_creds: ClientCredentials, server_ctx: ServerContext, **client_kw: object
) -> tuple[SecureSession, SecureSession]:
    client = SecureSession(ClientContext(kind, client_creds), **client_kw)  # type: ignore[arg-type]
    server = SecureSession(server_ctx)
    handshake(client, server)
    return client, server


@pytest.mark.parametrize("kind", list(Kind))
def test_certificate_handshake_carries_application_data(
    kind: Kind, pki: Path, psk: tuple[bytes, bytes]
) -> None:
    ctx = ServerContext(kind, server_creds(pki, psk))
    client, server = pair(kind, cert_client(pki), ctx, server_name="localhost")
    assert (client.state, server.state) == (State.ESTABLISHED, State.ESTABLISHED)
    assert client.version in ("DTLSv1.2", "TLSv1.2", "TLSv1.3")
    assert "ECDHE" in client.cipher or client.version == "TLSv1.3"
    assert server.peer is not None and server.peer.certificate is not None
    assert (
        x509.load_der_x509_certificate(server.peer.certificate).subject
        == x509.load_pem_x509_certificate((pki / "client.pem").read_bytes()).subject
    )
    client.send(b"\x40\x01\x00\x01")
    received = [r for d in client.take_output() for r in server.feed(d)]
    assert received == [b"\x40\x01\x00\x01"]
    server.send(b"reply")
    assert [r for d in server.take_output() for r in client.feed(d)] == [b"reply"]


@pytest.mark.parametrize("kind", list(Kind))
def test_psk_handshake_uses_ecdhe_and_reports_identity(
    kind: Kind, pki: Path, psk: tuple[bytes, bytes]
) -> None:
    ctx = ServerContext(kind, server_creds(pki, psk))
    client, server = pair(kind, ClientCredentials(psk_identity=psk[0], psk_key=psk[1]), ctx)
    assert server.state is State.ESTABLISHED
    assert server.peer is not None and server.peer.psk_identity == psk[0]
    if client.version != "TLSv1.3":
        assert client.cipher.startswith("ECDHE-PSK")  # RFC 9132 §7.1: PSK with (EC)DHE
    assert ctx.psk_identities == {}  # nothing left behind per handshake


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize(
    "case",
    [
        "untrusted-ca",
        "no-cert",
        "ca-as-client",
        "server-as-client",
        "wrong-psk",
        "wrong-server-name",
    ],
)
def test_refused_handshakes(
    kind: Kind, case: str, pki: Path, psk: tuple[bytes, bytes], tmp_path: Path
) -> None:
    ctx = ServerContext(kind, server_creds(pki, psk))
    kw: dict[str, object] = {}
    if case == "untrusted-ca":
        rogue = tmp_path / "rogue"
        init_dev_pki(rogue)
        creds = ClientCredentials(rogue / "client.pem", rogue / "client.key", pki / "ca.pem")
    elif case == "no-cert":
        creds = ClientCredentials(server_ca=pki / "ca.pem")
    elif case == "ca-as-client":
        creds = ClientCredentials(pki / "ca.pem", pki / "ca.key", pki / "ca.pem")
    elif case == "server-as-client":
        creds = ClientCredentials(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    elif case == "wrong-psk":
        creds = ClientCredentials(psk_identity=psk[0], psk_key=b"not-the-right-key-at-all")
    else:
        creds = cert_client(pki)
        kw["server_name"] = "other.example"
    client, server = pair(kind, creds, ctx, **kw)
    assert server.state is not State.ESTABLISHED
    assert server.peer is None
    server.free()
    assert ctx.psk_identities == {}


def test_expired_client_certificate_is_refused(
    pki: Path, psk: tuple[bytes, bytes], tmp_path: Path
) -> None:
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # type: ignore[arg-type]
    (tmp_path / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "expired.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ServerContext(Kind.DTLS, server_creds(pki, psk))
    creds = ClientCredentials(tmp_path / "expired.pem", tmp_path / "expired.key", pki / "ca.pem")
    _client, server = pair(Kind.DTLS, creds, ctx)
    assert server.state is State.FAILED and "certificate" in (server.failure or "")


@pytest.mark.parametrize("kind", list(Kind))
def test_resumption_on_another_server_sharing_ticket_keys(
    kind: Kind, pki: Path, psk: tuple[bytes, bytes], tmp_path: Path
) -> None:
    keyfile = tmp_path / "tickets"
    write_secret_file(keyfile, TicketKey.LENGTH)
    node_a = ServerContext(kind, server_creds(pki, psk), tickets=TicketKeyRing.from_file(keyfile))
    node_b = ServerContext(kind, server_creds(pki, psk), tickets=TicketKeyRing.from_file(keyfile))
    stranger = ServerContext(kind, server_creds(pki, psk))
    client, _ = pair(kind, cert_client(pki), node_a, server_name="localhost")
    ticket = client.session_ticket()
    assert ticket is not None and not client.resumed
    resumed, server = pair(kind, cert_client(pki), node_b, server_name="localhost", resume=ticket)
    assert resumed.state is State.ESTABLISHED and resumed.resumed
    assert server.peer is not None and server.peer.certificate is not None  # identity kept
    full, _ = pair(kind, cert_client(pki), stranger, server_name="localhost", resume=ticket)
    assert full.state is State.ESTABLISHED and not full.resumed


def test_ticket_key_rotation_keeps_accepting_the_previous_key(
    pki: Path, psk: tuple[bytes, bytes]
) -> None:
    old = TicketKeyRing()
    ctx = ServerContext(Kind.DTLS, server_creds(pki, psk), tickets=old)
    client, _ = pair(Kind.DTLS, cert_client(pki), ctx)
    ticket = client.session_ticket()
    ctx.tickets = TicketKeyRing([TicketKeyRing().keys[0], old.keys[0]])  # new first, old kept
    resumed, _ = pair(Kind.DTLS, cert_client(pki), ctx, resume=ticket)
    assert resumed.resumed


def test_cookie_secrets_bind_the_peer_and_rotate(tmp_path: Path) -> None:
    old = CookieSecrets()
    cookie = old.generate(b"192.0.2.1:4000")
    assert old.verify(b"192.0.2.1:4000", cookie)
    assert not old.verify(b"192.0.2.1:4001", cookie)
    rotated = CookieSecrets([CookieSecrets().keys[0], old.keys[0]])
    assert rotated.verify(b"192.0.2.1:4000", cookie)
    assert not CookieSecrets().verify(b"192.0.2.1:4000", cookie)
    path = tmp_path / "cookie"
    write_secret_file(path, CookieSecrets.LENGTH)
    assert CookieSecrets.from_file(path).keys[0].hex() == path.read_text().strip()
    (tmp_path / "bad").write_text("zz\n")
    with pytest.raises(ValueError, match="not hex"):
        CookieSecrets.from_file(tmp_path / "bad")
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(ValueError, match="32 bytes"):
        CookieSecrets.from_file(tmp_path / "short")


def test_records_are_packed_into_datagrams_at_record_boundaries() -> None:
    def record(n: int) -> bytes:
        return bytes([23, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2, "big") + bytes(n)

    records = [record(500), record(500), record(500)]
    data = b"".join(records)
    datagrams = pack_records(records, 1232)
    assert [len(d) for d in datagrams] == [1026, 513]
    assert b"".join(datagrams) == data


def test_send_refuses_what_cannot_fit_one_datagram(pki: Path, psk: tuple[bytes, bytes]) -> None:
    ctx = ServerContext(Kind.DTLS, server_creds(pki, psk))
    client, _ = pair(Kind.DTLS, cert_client(pki), ctx)
    with pytest.raises(OpenSSLError, match="do not fit"):
        client.send(bytes(1300))
    client.close()
    assert client.take_output()  # close_notify
    client.free()
    assert client.take_output() == [] and client.state is State.CLOSED
    with pytest.raises(OpenSSLError):
        client.send(b"x")


def test_leaf_policy() -> None:
    assert leaf_problem(b"garbage", client=True) is not None


def test_garbage_never_breaks_an_established_dtls_session(
    pki: Path, psk: tuple[bytes, bytes]
) -> None:
    ctx = ServerContext(Kind.DTLS, server_creds(pki, psk))
    client, server = pair(Kind.DTLS, cert_client(pki), ctx)
    for junk in (b"", b"\x17\xfe\xfd" + bytes(20), bytes(range(256)), b"\x16" * 100):
        assert server.feed(junk) == []
    assert server.state is State.ESTABLISHED
    client.send(b"still here")
    assert [r for d in client.take_output() for r in server.feed(d)] == [b"still here"]


def _crl(pki: Path, revoked_cert: Path, path: Path) -> None:
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(hours=1))
        .next_update(now + datetime.timedelta(days=1))
    )
    for cert_path in (revoked_cert,) if revoked_cert else ():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=5))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("kind", list(Kind))
def test_revoked_client_certificate_is_refused_with_a_crl(
    kind: Kind, pki: Path, psk: tuple[bytes, bytes], tmp_path: Path
) -> None:
    crl = tmp_path / "clients.crl"
    _crl(pki, pki / "client.pem", crl)
    creds = ServerCredentials(pki / "server.pem", pki / "server.key", pki / "ca.pem", crl=crl)
    _client, server = pair(kind, cert_client(pki), ServerContext(kind, creds))
    assert server.state is State.FAILED and "certificate" in (server.failure or "")
    # An empty CRL from the same CA lets the same client in.
    crl_ok = tmp_path / "empty.crl"
    _crl(pki, None, crl_ok)  # type: ignore[arg-type]
    creds = ServerCredentials(pki / "server.pem", pki / "server.key", pki / "ca.pem", crl=crl_ok)
    _client, server = pair(kind, cert_client(pki), ServerContext(kind, creds))
    assert server.state is State.ESTABLISHED


def test_every_declared_openssl_function_resolves() -> None:
    """The binding names OpenSSL 3.0 symbols; a libssl without one must fail here, loudly."""
    import re

    from gateway.transport import openssl_ffi

    source = Path(openssl_ffi.__file__).read_text()
    cdef = source.split("ffi.cdef(", 1)[1].split('"""\n)', 1)[0]
    declared = re.findall(r"\b([A-Za-z0-9_]+)\(", cdef)
    names = {n for n in declared if n[0].isupper() or n.startswith(("i2d_", "d2i_"))}
    assert len(names) > 60
    missing = []
    for name in sorted(names):
        lib = (
            openssl_ffi.ssl
            if name.startswith(("SSL_", "DTLS", "TLS_", "d2i_SSL", "i2d_SSL"))
            else openssl_ffi.crypto
        )
        try:
            getattr(lib, name)
        except AttributeError:
            missing.append(name)
    assert missing == []
