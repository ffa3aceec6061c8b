"""cuid/cdid derivation (RFC 9132 §4.4.1.1, App. B) and PeerIdentity."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import re
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.identity import (
    DERIVED_ID_LENGTH,
    IdentityError,
    IdentityKind,
    PeerIdentity,
    cuid_from_certificate,
    cuid_from_psk_identity,
    cuid_from_public_key,
    cuid_from_spki,
    derive_id,
)

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
BASE64URL_22 = re.compile(r"[A-Za-z0-9_-]{22}")
NO_DATABASE = settings(database=None)

# Known answers, computed once outside this module and written down literally:
#   printf Client_identity | openssl dgst -sha256 -binary | head -c16 | base64 | tr +/ -_
PSK_VECTOR = (b"Client_identity", "Qu61DPs0qZJ-NyTbKgP2zQ")
# SPKI of the P-256 key whose private scalar is 1 (its public point is the generator G).
G_SPKI_HEX = (
    "3059301306072a8648ce3d020106082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277"
    "037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837"
    "bf51f5"
)
G_CUID = "XNJS-wzokyQ2-vjM0QQJgQ"


def independent_derivation(material: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(material).digest()[:16]).decode().rstrip("=")


def make_certificate(
    subject: list[x509.NameAttribute[str]] | None = None,
    san: list[x509.GeneralName] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(subject or [])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256())


def cn(value: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(x509.NameOID.COMMON_NAME, value)


@pytest.fixture(scope="module")
def certificate() -> x509.Certificate:
    return make_certificate([cn("client1.dots.example")])


# -- the hash procedure --------------------------------------------------------------------


def test_psk_known_answer() -> None:
    identity, expected = PSK_VECTOR
    assert independent_derivation(identity) == expected
    assert derive_id(identity) == expected
    assert cuid_from_psk_identity(identity) == expected
    assert cuid_from_psk_identity(identity.decode()) == expected


def test_spki_known_answer() -> None:
    spki = bytes.fromhex(G_SPKI_HEX)
    key = ec.derive_private_key(1, ec.SECP256R1()).public_key()
    assert key.public_bytes(DER, SPKI) == spki
    assert independent_derivation(spki) == G_CUID
    assert cuid_from_spki(spki) == G_CUID
    assert cuid_from_public_key(key) == G_CUID
    assert cuid_from_public_key(spki) == G_CUID


@NO_DATABASE
@given(st.binary())
def test_any_bytes_give_22_base64url_chars(material: bytes) -> None:
    value = derive_id(material)
    assert len(value) == DERIVED_ID_LENGTH
    assert BASE64URL_22.fullmatch(value)
    assert value == independent_derivation(material)


@NO_DATABASE
@given(st.text(min_size=1, max_size=200))
def test_psk_identity_str_and_utf8_bytes_agree(identity: str) -> None:
    assert cuid_from_psk_identity(identity) == cuid_from_psk_identity(identity.encode("utf-8"))
    assert PeerIdentity.from_psk_identity(identity) == PeerIdentity.from_psk_identity(
        identity.encode("utf-8")
    )


# -- certificates and raw public keys ------------------------------------------------------


def test_certificate_paths_agree(certificate: x509.Certificate) -> None:
    spki = certificate.public_key().public_bytes(DER, SPKI)
    expected = independent_derivation(spki)
    assert cuid_from_certificate(certificate) == expected
    assert cuid_from_certificate(certificate.public_bytes(DER)) == expected
    assert cuid_from_certificate(b"\n" + certificate.public_bytes(PEM)) == expected
    assert cuid_from_certificate(bytearray(certificate.public_bytes(DER))) == expected  # type: ignore[arg-type]
    assert cuid_from_spki(spki) == expected
    assert cuid_from_public_key(certificate.public_key()) == expected
    assert PeerIdentity.from_certificate(certificate).cuid == expected
    # The same key met as an RFC 7250 raw key is the same client.
    assert PeerIdentity.from_public_key(spki).cuid == expected


@pytest.mark.parametrize(
    "key",
    [
        ed25519.Ed25519PrivateKey.generate().public_key(),
        x25519.X25519PrivateKey.generate().public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
    ],
    ids=["ed25519", "x25519", "rsa", "p384"],
)
def test_raw_public_key_object_and_der_agree(key: object) -> None:
    spki = key.public_bytes(DER, SPKI)  # type: ignore[attr-defined]
    assert cuid_from_public_key(key) == cuid_from_spki(spki) == independent_derivation(spki)  # type: ignore[arg-type]


def test_compressed_point_gives_the_cuid_of_the_key() -> None:
    # Same key, encoded with a compressed point: the cuid follows the key, not the encoding.
    key = ec.derive_private_key(1, ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    compressed = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + point
    assert serialization.load_der_public_key(compressed) == key
    assert cuid_from_spki(compressed) == G_CUID
    assert derive_id(compressed) != G_CUID


def test_key_without_spki_form() -> None:
    key = mock.Mock(spec=ec.EllipticCurvePublicKey)
    key.public_bytes.side_effect = ValueError("no SubjectPublicKeyInfo for this one")
    with pytest.raises(IdentityError, match="no SubjectPublicKeyInfo form"):
        cuid_from_public_key(key)


def test_unsupported_key_algorithm_in_certificate(certificate: x509.Certificate) -> None:
    # Rewrite the P-256 curve OID into an unknown one; the certificate still parses.
    p256 = bytes.fromhex("06082a8648ce3d030107")
    der = certificate.public_bytes(DER)
    assert der.count(p256) == 1
    patched = der.replace(p256, p256[:-1] + b"\x63")
    with pytest.raises(IdentityError, match="certificate public key"):
        cuid_from_certificate(patched)
    with pytest.raises(IdentityError):
        PeerIdentity.from_certificate(patched)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty certificate"),
        (b"\x30\x03\x02\x01", "not a valid DER"),
        (b"not a certificate at all", "not a valid DER"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid PEM"),
    ],
)
def test_bad_certificate(value: bytes, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        cuid_from_certificate(value)


def test_truncated_certificate(certificate: x509.Certificate) -> None:
    with pytest.raises(IdentityError):
        cuid_from_certificate(certificate.public_bytes(DER)[:-10])


@pytest.mark.parametrize(
    "value", [b"", b"\x30\x00", bytes.fromhex(G_SPKI_HEX)[:-1], bytes.fromhex(G_SPKI_HEX) + b"\0"]
)
def test_bad_spki(value: bytes) -> None:
    with pytest.raises(IdentityError):
        cuid_from_spki(value)
    with pytest.raises(IdentityError):
        PeerIdentity.from_public_key(value)


@NO_DATABASE
@given(st.binary(max_size=400))
def test_any_bytes_as_certificate_or_spki_give_a_cuid_or_identity_error(data: bytes) -> None:
    for parse in (cuid_from_certificate, cuid_from_spki):
        try:
            assert BASE64URL_22.fullmatch(parse(data))
        except IdentityError:
            pass


def test_wrong_types_are_type_errors(certificate: x509.Certificate) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TypeError):
        cuid_from_certificate("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="public key object"):
        cuid_from_public_key(private_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="public key object"):
        cuid_from_public_key(certificate)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cuid_from_spki("3059")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cuid_from_psk_identity(42)  # type: ignore[arg-type]


# -- PSK identities -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "message"),
    [(b"", "empty"), ("", "empty"), (b"x" * 65536, "exceeds"), ("\udc80", "UTF-8")],
)
def test_bad_psk_identity(identity: bytes | str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        cuid_from_psk_identity(identity)
    with pytest.raises(IdentityError, match=message):
        PeerIdentity.from_psk_identity(identity)


def test_longest_psk_identity_is_accepted() -> None:
    assert len(cuid_from_psk_identity(b"x" * 65535)) == DERIVED_ID_LENGTH


# -- PeerIdentity --------------------------------------------------------------------------


def test_peer_identity_from_certificate(certificate: x509.Certificate) -> None:
    peer = PeerIdentity.from_certificate(certificate.public_bytes(PEM))
    assert peer.kind is IdentityKind.X509
    assert peer.name == "client1.dots.example"
    assert peer.certificate == certificate.public_bytes(DER)
    assert peer.spki == certificate.public_key().public_bytes(DER, SPKI)
    assert peer.psk_identity is None
    assert peer == PeerIdentity.from_certificate(certificate)
    assert "BEGIN" not in repr(peer) and peer.cuid in repr(peer)


@pytest.mark.parametrize(
    ("subject", "san", "name"),
    [
        ([cn("a\nforged=line")], None, "a\\nforged=line"),
        ([], [x509.DNSName("gw.example")], "gw.example"),
        ([], [x509.UniformResourceIdentifier("urn:x"), x509.DNSName("b")], "urn:x"),
        ([], [x509.DirectoryName(x509.Name([cn("d")])), x509.DNSName("b")], "b"),
        (
            [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Org")],
            [x509.DirectoryName(x509.Name([cn("d")]))],
            "O=Org",
        ),
        ([], [x509.IPAddress(ipaddress.ip_address("::1"))], "::1"),
    ],
)
def test_certificate_name(
    subject: list[x509.NameAttribute[str]], san: list[x509.GeneralName] | None, name: str
) -> None:
    assert PeerIdentity.from_certificate(make_certificate(subject, san)).name == name


def test_certificate_without_any_name_is_named_by_cuid() -> None:
    peer = PeerIdentity.from_certificate(make_certificate())
    assert peer.name == f"x509:{peer.cuid}"


def test_peer_identity_from_psk_identity() -> None:
    identity, expected = PSK_VECTOR
    peer = PeerIdentity.from_psk_identity(identity.decode())
    assert peer == PeerIdentity(
        IdentityKind.PSK, expected, "Client_identity", psk_identity=identity
    )
    assert peer.certificate is None and peer.spki is None


@pytest.mark.parametrize(
    ("identity", "name"),
    [
        (b"dev\x1b[31m\r\n", "dev\\x1b[31m\\r\\n"),
        (b"\xff\xfeid", "\\xff\\xfeid"),
        ("caf\u00e9 \u202e".encode(), "caf\u00e9 \\u202e"),
    ],
)
def test_psk_name_cannot_break_a_log_line(identity: bytes, name: str) -> None:
    peer = PeerIdentity.from_psk_identity(identity)
    assert peer.name == name
    assert peer.psk_identity == identity


def test_peer_identity_from_public_key() -> None:
    key = ec.derive_private_key(1, ec.SECP256R1()).public_key()
    peer = PeerIdentity.from_public_key(key)
    assert peer.kind is IdentityKind.RAW_PUBLIC_KEY
    assert peer.cuid == G_CUID
    assert peer.name == f"rpk:{G_CUID}"
    assert peer.spki == bytes.fromhex(G_SPKI_HEX)
    assert peer == PeerIdentity.from_public_key(memoryview(bytes.fromhex(G_SPKI_HEX)))  # type: ignore[arg-type]


def test_peer_identity_is_frozen_with_slots(certificate: x509.Certificate) -> None:
    peer = PeerIdentity.from_certificate(certificate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        peer.cuid = "other"  # type: ignore[misc]
    assert not hasattr(peer, "__dict__")
    assert hash(peer) == hash(PeerIdentity.from_certificate(certificate))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "psk", "psk_identity": b"x"}, "IdentityKind"),
        ({"kind": IdentityKind.PSK, "cuid": "", "psk_identity": b"x"}, "non-empty"),
        ({"kind": IdentityKind.PSK}, "needs psk_identity"),
        ({"kind": IdentityKind.PSK, "psk_identity": b"x", "spki": b"k"}, "must not have spki"),
        ({"kind": IdentityKind.X509, "spki": b"k"}, "needs certificate"),
        ({"kind": IdentityKind.RAW_PUBLIC_KEY, "spki": b"k", "certificate": b"c"}, "must not"),
    ],
)
def test_peer_identity_rejects_inconsistent_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"cuid": "any-client-chosen-cuid", "name": "n", **kwargs}
    with pytest.raises(IdentityError, match=message):
        PeerIdentity(**fields)  # type: ignore[arg-type]


def test_peer_identity_accepts_any_non_empty_cuid() -> None:
    # RFC 9132 §4.4.1.1: a client may use e.g. a UUID after a cuid collision.
    peer = PeerIdentity(
        IdentityKind.PSK, "c2d1c5a2-6a4e-4bd1-9a7d-3c3f5e0f6b1a", "n", psk_identity=b"n"
    )
    assert peer.cuid.startswith("c2d1")
