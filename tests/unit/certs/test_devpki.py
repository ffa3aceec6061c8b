"""The dev PKI: what lands on disk, its reuse rules, and a real mutual-TLS handshake with it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import devpki
from certs.devpki import DevPki, DevPkiError, init_dev_pki, load_dev_pki
from certs.identity import PeerIdentity, cuid_from_certificate, cuid_from_psk_identity

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
LEAVES = (devpki.SERVER_CERT, devpki.CLIENT_CERT)
TIMEOUT = 5.0


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in devpki.ALL_FILES}


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return init_dev_pki(tmp_path / "state" / "pki")


def test_file_names_are_the_documented_interface() -> None:
    assert devpki.ALL_FILES == (
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
        "psk.json",
    )


def test_files_and_modes(pki: DevPki) -> None:
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert sorted(os.listdir(pki.directory)) == sorted(devpki.ALL_FILES)  # no temp files left
    secret = {"ca.key", "server.key", "client.key", "psk.json"}
    for name in devpki.ALL_FILES:
        mode = stat.S_IMODE((pki.directory / name).stat().st_mode)
        assert mode == (0o600 if name in secret else 0o644), name
    assert [pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key] == [
        pki.directory / n for n in devpki.ALL_FILES[:4]
    ]
    assert [pki.client_cert, pki.client_key, pki.psk_file] == [
        pki.directory / n for n in devpki.ALL_FILES[4:]
    ]


def test_keys_are_unencrypted_pkcs8_p256_matching_their_certificates(pki: DevPki) -> None:
    for cert_path, key_path in (
        (pki.ca_cert, pki.ca_key),
        (pki.server_cert, pki.server_key),
        (pki.client_cert, pki.client_key),
    ):
        pem = key_path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not "EC PRIVATE KEY"
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert key.public_key() == load_cert(cert_path).public_key()


def test_ca_certificate(pki: DevPki) -> None:
    ca = load_cert(pki.ca_cert)
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())


@pytest.mark.parametrize(
    ("name", "usage", "common_name"),
    [
        (devpki.SERVER_CERT, ExtendedKeyUsageOID.SERVER_AUTH, "dots-dev-server"),
        (devpki.CLIENT_CERT, ExtendedKeyUsageOID.CLIENT_AUTH, "dots-dev-client"),
    ],
)
def test_leaf_certificate(
    pki: DevPki, name: str, usage: x509.ObjectIdentifier, common_name: str
) -> None:
    ca = load_cert(pki.ca_cert)
    leaf = load_cert(pki.directory / name)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert leaf.signature_hash_algorithm is not None
    ca_key.verify(
        leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
    )
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
    extensions = leaf.extensions
    basic = extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    key_usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature
    assert not key_usage.value.key_cert_sign
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert leaf.serial_number > 0


def test_serials_are_random_and_distinct(tmp_path: Path) -> None:
    serials = set()
    for index in range(2):
        pki = init_dev_pki(tmp_path / str(index))
        serials |= {
            load_cert(p).serial_number for p in (pki.ca_cert, pki.server_cert, pki.client_cert)
        }
    assert len(serials) == 6


def test_validity_period(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path, days=30, now=NOW)
    for path in (pki.ca_cert, pki.server_cert, pki.client_cert):
        cert = load_cert(path)
        assert cert.not_valid_before_utc == NOW.replace(microsecond=0) - dt.timedelta(hours=1)
        assert cert.not_valid_after_utc == NOW.replace(microsecond=0) + dt.timedelta(days=30)


def test_psk_file(pki: DevPki) -> None:
    raw = pki.psk_file.read_bytes()
    assert all(0x20 <= byte < 0x7F or byte in b"\n" for byte in raw)
    document = json.loads(raw)
    assert set(document) == {"identity", "key"}
    assert re.fullmatch(r"dots-dev-client-[0-9a-f]{8}", document["identity"])
    assert re.fullmatch(r"[A-Za-z0-9]{32}", document["key"])
    assert (pki.psk_identity, pki.psk_key) == (document["identity"], document["key"])
    assert pki.psk_cuid == cuid_from_psk_identity(document["identity"].encode("ascii"))
    assert pki.psk_key not in repr(pki)


def test_client_cuid(pki: DevPki) -> None:
    assert pki.client_cuid == cuid_from_certificate(pki.client_cert.read_bytes())
    assert pki.client_cuid in repr(pki)


def test_second_call_reuses_the_pki(pki: DevPki) -> None:
    before = snapshot(pki.directory)
    again = init_dev_pki(pki.directory)
    assert again == pki
    assert snapshot(pki.directory) == before
    assert load_dev_pki(pki.directory) == pki


def test_overwrite_regenerates_everything(pki: DevPki) -> None:
    before = snapshot(pki.directory)
    fresh = init_dev_pki(pki.directory, overwrite=True)
    after = snapshot(pki.directory)
    assert all(before[name] != after[name] for name in devpki.ALL_FILES)
    assert fresh.client_cuid != pki.client_cuid
    assert fresh.psk_identity != pki.psk_identity


def test_partial_set_names_the_missing_files_and_touches_nothing(pki: DevPki) -> None:
    pki.server_key.unlink()
    pki.psk_file.unlink()
    before = {name: (pki.directory / name).read_bytes() for name in os.listdir(pki.directory)}
    with pytest.raises(DevPkiError, match=r"missing server\.key, psk\.json"):
        init_dev_pki(pki.directory)
    with pytest.raises(DevPkiError, match=r"missing server\.key, psk\.json"):
        load_dev_pki(pki.directory)
    assert {n: (pki.directory / n).read_bytes() for n in os.listdir(pki.directory)} == before
    assert init_dev_pki(pki.directory, overwrite=True).client_cuid != pki.client_cuid


def test_directory_with_unrelated_files_gets_a_pki(tmp_path: Path) -> None:
    (tmp_path / "gateway.sqlite").write_bytes(b"")
    init_dev_pki(tmp_path)
    assert (tmp_path / "gateway.sqlite").exists()


def test_load_of_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DevPkiError, match="missing ca.pem, ca.key, server.pem"):
        load_dev_pki(tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"client.pem": "client.pem"}, r"client\.key is not the key of client\.pem"),
        ({"client.pem": "client.pem", "client.key": "client.key"}, r"client\.pem was not issued"),
        ({"server.key": "client.key"}, r"server\.key is not the key of server\.pem"),
    ],
)
def test_material_from_two_generations_is_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    first = init_dev_pki(tmp_path / "first")
    other = init_dev_pki(tmp_path / "other")
    for target, source in files.items():
        shutil.copyfile(other.directory / source, first.directory / target)
    with pytest.raises(DevPkiError, match=message):
        init_dev_pki(first.directory)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ca.pem", b"garbage", r"ca\.pem is not a PEM certificate"),
        ("server.key", b"garbage", r"server\.key is not an unencrypted PEM private key"),
        ("psk.json", b"{", r"psk\.json is not JSON"),
        ("psk.json", b"[]", r'"identity" must be'),
        ("psk.json", b'{"identity": "id"}', r'"key" must be'),
        ("psk.json", b'{"identity": "a\\nb", "key": "k"}', r'"identity" must be'),
        ("psk.json", b'{"identity": "caf\\u00e9", "key": "k"}', r'"identity" must be'),
        ("psk.json", b'{"identity": "id", "key": ""}', r'"key" must be'),
    ],
)
def test_corrupt_files(pki: DevPki, name: str, content: bytes, message: str) -> None:
    (pki.directory / name).write_bytes(content)
    with pytest.raises(DevPkiError, match=message):
        load_dev_pki(pki.directory)


def test_encrypted_key_is_refused(pki: DevPki) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    pki.client_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(DevPkiError, match="unencrypted"):
        load_dev_pki(pki.directory)


def test_unreadable_file(pki: DevPki) -> None:
    pki.ca_cert.unlink()
    pki.ca_cert.mkdir()
    with pytest.raises(DevPkiError, match=r"cannot read .*ca\.pem"):
        load_dev_pki(pki.directory)


def test_expired_or_not_yet_valid(tmp_path: Path) -> None:
    init_dev_pki(tmp_path, days=10, now=NOW)
    load_dev_pki(tmp_path, now=NOW + dt.timedelta(days=9))
    with pytest.raises(DevPkiError, match=r"ca\.pem is not valid on 2030-01-13.*init --force"):
        init_dev_pki(tmp_path, now=NOW + dt.timedelta(days=11))
    with pytest.raises(DevPkiError, match="not valid on 2030-01-01"):
        load_dev_pki(tmp_path, now=NOW - dt.timedelta(days=1))


def test_custom_names_and_reuse_must_cover_them(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path, hostnames=["gw.example", "localhost"], addresses=["192.0.2.1"])
    san = load_cert(pki.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gw.example", "localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert init_dev_pki(tmp_path, hostnames="gw.example", addresses=()) == pki
    with pytest.raises(DevPkiError, match=r"server\.pem does not cover other\.example, ::1"):
        init_dev_pki(tmp_path, hostnames=["other.example"], addresses=["::1"])


def test_reuse_with_a_server_certificate_without_san(pki: DevPki) -> None:
    # An operator dropped in their own server certificate under the same CA key.
    ca = load_cert(pki.ca_cert)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    server_key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy")]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .sign(ca_key, ca.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert load_dev_pki(pki.directory) == pki
    with pytest.raises(DevPkiError, match="does not cover localhost"):
        init_dev_pki(pki.directory)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"addresses": ["localhost"]}, "not an IPv4 or IPv6 address"),
        ({"hostnames": ["dots.bücher.example"]}, "ASCII DNS name"),
        ({"hostnames": [""]}, "ASCII DNS name"),
        ({"hostnames": [], "addresses": []}, "at least one hostname or address"),
        ({"days": 0}, "days must be at least 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DevPkiError, match=message):
        init_dev_pki(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki").exists()


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DevPkiError, match="exists and is not a directory"):
        init_dev_pki(tmp_path / "file")
    with pytest.raises(DevPkiError, match="cannot create"):
        init_dev_pki(tmp_path / "file" / "pki")


def test_existing_directory_keeps_its_mode_and_a_new_one_is_0700_whatever_the_umask(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)
    init_dev_pki(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    old_umask = os.umask(0o277)
    try:
        pki = init_dev_pki(tmp_path / "new")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600


def test_failed_write_leaves_no_temporary_file(
    pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(pki.directory)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DevPkiError, match="No space left on device"):
        init_dev_pki(pki.directory, overwrite=True)
    assert sorted(os.listdir(pki.directory)) == sorted(devpki.ALL_FILES)
    assert snapshot(pki.directory) == before


def test_concurrent_initialisation_yields_one_pki(tmp_path: Path) -> None:
    results: list[DevPki | BaseException] = []

    def initialise() -> None:
        try:
            results.append(init_dev_pki(tmp_path / "shared"))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=initialise) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(results) == 4
    assert all(result == results[0] for result in results), results


# -- a real mutual-TLS handshake with the generated material -------------------------------


def server_context(
    pki: DevPki, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9132 §7.1
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(cert or pki.server_cert, key or pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(pki.ca_cert)
    return context


def client_context(
    pki: DevPki, cert: Path | None = None, key: Path | None = None, *, present: bool = True
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if present:
        context.load_cert_chain(cert or pki.client_cert, key or pki.client_key)
    context.load_verify_locations(pki.ca_cert)
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[bytes | BaseException, str | BaseException]:
    """Run both ends over a socket pair; return (client cert seen by the server, TLS version)."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(TIMEOUT)
    client_sock.settimeout(TIMEOUT)
    server_result: list[bytes | BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                peer = tls.getpeercert(binary_form=True)
                assert tls.recv(4) == b"ping"
                tls.sendall(b"pong")
                server_result.append(peer or b"")
        except (OSError, AssertionError) as exc:
            server_result.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_sock, server_hostname=hostname) as tls:
            tls.sendall(b"ping")
            # With TLS 1.3 a refused client certificate only shows up here.
            client_result: str | BaseException = tls.version() or ""
            if tls.recv(4) != b"pong":
                client_result = ConnectionError("no pong")
    except OSError as exc:
        client_result = exc
    finally:
        client_sock.close()
        thread.join(TIMEOUT)
        server_sock.close()
    assert not thread.is_alive()
    return server_result[0], client_result


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mutual_tls_handshake(pki: DevPki, hostname: str, version: ssl.TLSVersion) -> None:
    client = client_context(pki)
    client.maximum_version = version
    seen_by_server, negotiated = handshake(server_context(pki), client, hostname)
    assert negotiated == version.name.replace("v1_", "v1.")
    assert isinstance(seen_by_server, bytes)
    assert seen_by_server == load_cert(pki.client_cert).public_bytes(serialization.Encoding.DER)
    peer = PeerIdentity.from_certificate(seen_by_server)
    assert (peer.cuid, peer.name) == (pki.client_cuid, "dots-dev-client")


def test_wrong_hostname_is_refused_by_the_client(pki: DevPki) -> None:
    _, client_result = handshake(server_context(pki), client_context(pki), "dots.example")
    assert isinstance(client_result, ssl.SSLCertVerificationError)
    assert "dots.example" in str(client_result)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_server_certificate_is_no_client_certificate(pki: DevPki, version: ssl.TLSVersion) -> None:
    client = client_context(pki, pki.server_cert, pki.server_key)
    client.maximum_version = version
    server_result, client_result = handshake(server_context(pki), client, "localhost")
    assert isinstance(server_result, ssl.SSLError)
    assert "unsuitable certificate purpose" in str(server_result)
    assert isinstance(client_result, OSError)


def test_client_without_certificate_is_refused(pki: DevPki) -> None:
    client = client_context(pki, present=False)
    server_result, client_result = handshake(server_context(pki), client, "localhost")
    assert isinstance(server_result, ssl.SSLError)
    assert isinstance(client_result, OSError)


def test_other_dev_pki_is_not_trusted(pki: DevPki, tmp_path: Path) -> None:
    other = init_dev_pki(tmp_path / "other")
    client = client_context(pki, other.client_cert, other.client_key)
    server_result, _ = handshake(server_context(pki), client, "localhost")
    assert isinstance(server_result, ssl.SSLCertVerificationError)


def test_ca_certificate_is_no_client_identity(pki: DevPki) -> None:
    # The DTLS prototype accepted a CA presented as a client; this CA's key usage forbids it.
    client = client_context(pki, pki.ca_cert, pki.ca_key)
    server_result, _ = handshake(server_context(pki), client, "localhost")
    assert isinstance(server_result, ssl.SSLCertVerificationError)
    assert "unsuitable certificate purpose" in str(server_result)
