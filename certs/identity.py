"""Peer identities and the cuid/cdid derivation of RFC 9132 §4.4.1.1-§4.4.1.2 and App. B.

This module owns the one hash procedure that turns a client's credential (the DER
SubjectPublicKeyInfo of its X.509 certificate, its RFC 7250 raw public key, or its PSK
identity) into a cuid, and the ``PeerIdentity`` value that transports hand to the DOTS layer.
A server-domain gateway computes the cdid with the same procedure over the downstream client's
credential, so there is no separate cdid function.

It is pure: it works on bytes and ``cryptography`` objects that callers pass in, and must not
import sockets, asyncio, ssl or anything else that does I/O.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import typing
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "DERIVED_ID_LENGTH",
    "IdentityError",
    "IdentityKind",
    "PeerIdentity",
    "cuid_from_certificate",
    "cuid_from_psk_identity",
    "cuid_from_public_key",
    "cuid_from_spki",
    "derive_id",
]

DERIVED_ID_LENGTH = 22
"""Length of a derived cuid/cdid: 16 bytes in unpadded base64url (RFC 9132 §4.4.1.1)."""

# RFC 4279 §2 / RFC 8446 §4.2.11: the identity travels in a 16-bit length field.
_MAX_PSK_IDENTITY = 0xFFFF

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
# Whatever key types this cryptography release knows; the union grows between releases.
_PUBLIC_KEY_CLASSES: tuple[type, ...] = typing.get_args(PublicKeyTypes)


class IdentityError(ValueError):
    """A certificate, public key or PSK identity that no cuid can be derived from."""


class IdentityKind(enum.Enum):
    """How the peer authenticated; the same three credentials RFC 9132 App. B hashes."""

    X509 = "x509"
    RAW_PUBLIC_KEY = "raw-public-key"
    PSK = "psk"


def derive_id(material: bytes) -> str:
    """SHA-256 over ``material``, first 16 bytes kept, base64url without padding (22 chars).

    This is the whole RFC 9132 App. B procedure; callers choose the material.
    """
    digest = hashlib.sha256(material).digest()
    # RFC 9132 §4.4.1.1: "strip the final 16 bytes" and the two trailing "=".
    return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")


def cuid_from_spki(spki_der: bytes) -> str:
    """cuid of a DER SubjectPublicKeyInfo, as received in a certificate or as an RFC 7250 key.

    The key is parsed and re-encoded before hashing, so the value depends on the key and not
    on how a peer happened to encode it (a compressed EC point, RSA parameters without NULL),
    and the certificate and raw-public-key paths of one key give the same cuid. For ordinary
    keys (uncompressed points, NULL RSA parameters) the re-encoding is byte-identical to the
    input, so the value equals the one computed from ``openssl pkey -pubin -outform DER``.
    """
    return derive_id(_canonical_spki(_load_spki(spki_der)))


def cuid_from_public_key(key: PublicKeyTypes | bytes) -> str:
    """cuid of a raw public key (RFC 7250): a ``cryptography`` public key or DER SPKI bytes."""
    if isinstance(key, bytes | bytearray | memoryview):
        return cuid_from_spki(bytes(key))
    return derive_id(_canonical_spki(key))


def cuid_from_certificate(cert: x509.Certificate | bytes) -> str:
    """cuid of an X.509 certificate's SPKI.

    ``cert`` is a ``cryptography`` Certificate or bytes holding one certificate in DER or, if
    the bytes start with ``-----BEGIN``, in PEM (only the first PEM block is used).
    """
    return derive_id(_canonical_spki(_certificate_public_key(_load_certificate(cert))))


def cuid_from_psk_identity(identity: bytes | str) -> str:
    """cuid of a PSK identity (TLS 1.2 ClientKeyExchange or TLS 1.3 ``pre_shared_key``).

    A ``str`` is encoded as UTF-8, which is what command-line peers such as
    ``coap-client -u`` put on the wire.
    """
    return derive_id(_psk_identity_bytes(identity))


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of an authenticated (D)TLS session.

    ``cuid`` is the derived identifier: the value a client would use as its cuid and the value
    a server-domain gateway inserts as cdid for this peer (RFC 9132 §4.4.1.2). ``name`` is for
    logs and operators only; it is never used for authorization and is escaped so that it
    cannot break a log line. ``spki`` holds the DER SubjectPublicKeyInfo for X509 and
    RAW_PUBLIC_KEY peers, so a trust store can pin keys without re-parsing the certificate.
    """

    kind: IdentityKind
    cuid: str
    name: str
    certificate: bytes | None = field(default=None, repr=False)
    psk_identity: bytes | None = None
    spki: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, IdentityKind):
            raise IdentityError(f"kind must be an IdentityKind, not {self.kind!r}")
        # RFC 9132 §4.4.1.1: any non-empty string is a cuid; do not insist on the derived form.
        if not isinstance(self.cuid, str) or not self.cuid:
            raise IdentityError("cuid must be a non-empty string")
        wanted = {
            IdentityKind.X509: ("certificate", "spki"),
            IdentityKind.RAW_PUBLIC_KEY: ("spki",),
            IdentityKind.PSK: ("psk_identity",),
        }[self.kind]
        for name in ("certificate", "psk_identity", "spki"):
            present = getattr(self, name) is not None
            if present != (name in wanted):
                verb = "needs" if name in wanted else "must not have"
                raise IdentityError(f"a {self.kind.value} identity {verb} {name}")

    @classmethod
    def from_certificate(cls, cert: x509.Certificate | bytes) -> PeerIdentity:
        """The identity of a peer that presented ``cert`` (Certificate, DER or PEM bytes)."""
        certificate = _load_certificate(cert)
        spki = _canonical_spki(_certificate_public_key(certificate))
        cuid = derive_id(spki)
        return cls(
            kind=IdentityKind.X509,
            cuid=cuid,
            name=_certificate_name(certificate) or f"x509:{cuid}",
            certificate=certificate.public_bytes(_DER),
            spki=spki,
        )

    @classmethod
    def from_public_key(cls, key: PublicKeyTypes | bytes) -> PeerIdentity:
        """The identity of a peer that authenticated with an RFC 7250 raw public key."""
        if isinstance(key, bytes | bytearray | memoryview):
            key = _load_spki(bytes(key))
        spki = _canonical_spki(key)
        cuid = derive_id(spki)
        # A raw key carries no name at all; the cuid is the only stable handle for operators.
        return cls(kind=IdentityKind.RAW_PUBLIC_KEY, cuid=cuid, name=f"rpk:{cuid}", spki=spki)

    @classmethod
    def from_psk_identity(cls, identity: bytes | str) -> PeerIdentity:
        """The identity of a peer that authenticated with a pre-shared key under ``identity``."""
        raw = _psk_identity_bytes(identity)
        return cls(
            kind=IdentityKind.PSK,
            cuid=derive_id(raw),
            name=_printable(raw.decode("utf-8", "backslashreplace")),
            psk_identity=raw,
        )


def _load_certificate(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if not isinstance(cert, bytes | bytearray | memoryview):
        raise TypeError(f"expected an x509.Certificate or bytes, not {type(cert).__name__}")
    data = bytes(cert)
    if not data:
        raise IdentityError("empty certificate")
    is_pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        if is_pem:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        form = "PEM" if is_pem else "DER"
        raise IdentityError(f"not a valid {form} X.509 certificate: {exc}") from None


def _certificate_public_key(cert: x509.Certificate) -> PublicKeyTypes:
    try:
        return cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise IdentityError(
            f"certificate public key ({cert.public_key_algorithm_oid.dotted_string}) "
            f"cannot be used: {exc}"
        ) from None


def _load_spki(spki_der: bytes) -> PublicKeyTypes:
    if not isinstance(spki_der, bytes | bytearray | memoryview):
        raise TypeError(f"expected DER SubjectPublicKeyInfo bytes, not {type(spki_der).__name__}")
    if not spki_der:
        raise IdentityError("empty SubjectPublicKeyInfo")
    try:
        return serialization.load_der_public_key(bytes(spki_der))
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise IdentityError(f"not a usable DER SubjectPublicKeyInfo: {exc}") from None


def _canonical_spki(key: PublicKeyTypes) -> bytes:
    if not isinstance(key, _PUBLIC_KEY_CLASSES):
        raise TypeError(f"expected a public key object, not {type(key).__name__}")
    try:
        return key.public_bytes(_DER, _SPKI)
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise IdentityError(f"public key has no SubjectPublicKeyInfo form: {exc}") from None


def _psk_identity_bytes(identity: bytes | str) -> bytes:
    if isinstance(identity, str):
        try:
            raw = identity.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise IdentityError(f"PSK identity is not encodable as UTF-8: {exc}") from None
    elif isinstance(identity, bytes | bytearray | memoryview):
        raw = bytes(identity)
    else:
        raise TypeError(f"expected a PSK identity as bytes or str, not {type(identity).__name__}")
    # An empty identity names nobody, and every such client would share one cuid.
    if not raw:
        raise IdentityError("empty PSK identity")
    if len(raw) > _MAX_PSK_IDENTITY:
        raise IdentityError(f"PSK identity of {len(raw)} bytes exceeds {_MAX_PSK_IDENTITY}")
    return raw


def _certificate_name(cert: x509.Certificate) -> str:
    """CN, else the first SAN entry, else the whole subject; "" if the certificate has none."""
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if common_names and common_names[0].value:
        return _printable(str(common_names[0].value))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        # A malformed extension must not turn a handshake the TLS stack accepted into a crash.
        san = None
    if san is not None:
        for general_name in san:
            if isinstance(general_name, x509.DNSName | x509.RFC822Name | x509.IPAddress):
                return _printable(str(general_name.value))
            if isinstance(general_name, x509.UniformResourceIdentifier):
                return _printable(general_name.value)
    return _printable(cert.subject.rfc4514_string())


def _printable(text: str) -> str:
    # Names come from peers and end up in one-line logs: escape anything that could split or
    # forge a line (newlines, ANSI escapes, bidi controls).
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
