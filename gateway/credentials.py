"""Settings -> (D)TLS server contexts: operator files or the dev PKI, PSKs, fleet secrets.

Also maps an authenticated peer credential to the identity the DOTS layer works with
(RFC 9132 App. B cuid of the certificate's SPKI or of the PSK identity), and re-checks an
established session's credential against newly loaded ones (``Trust``): a PSK withdrawn or
changed, a certificate revoked, expired, or issued by a CA no longer trusted.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.devpki import DevPki, init_dev_pki
from certs.identity import PeerIdentity
from gateway.config import LimitSettings, Settings
from gateway.transport.dtls_server import Limits
from gateway.transport.secure_session import PeerCredential
from gateway.transport.tls_context import (
    CookieSecrets,
    Kind,
    ServerContext,
    ServerCredentials,
    TicketKeyRing,
)
from gateway.transport.tls_stream import StreamLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerContexts:
    dtls: ServerContext
    tls: ServerContext
    dev_pki: DevPki | None


def server_credentials(settings: Settings) -> tuple[ServerCredentials, DevPki | None]:
    """The server's certificate, client CAs and PSK table; creates the dev PKI if needed."""
    tls = settings.tls
    psk = {entry.identity.encode(): entry.key for entry in settings.psk}
    dev: DevPki | None = None
    if tls.dev_pki_dir is not None:
        dev = init_dev_pki(tls.dev_pki_dir)
        # The dev PSK works out of the box, like the dev client certificate.
        dev_psk = json.loads(dev.psk_file.read_text())
        psk.setdefault(dev_psk["identity"].encode(), dev_psk["key"].encode())
        chain, key, ca = dev.server_cert, dev.server_key, dev.ca_cert
    else:
        assert tls.cert is not None and tls.key is not None and tls.ca is not None
        chain, key, ca = tls.cert, tls.key, tls.ca
    return ServerCredentials(chain, key, ca, psk=psk, crl=tls.crl,
                             allow_legacy_psk=tls.allow_legacy_psk), dev


def server_contexts(settings: Settings) -> ServerContexts:
    credentials, dev = server_credentials(settings)
    tls = settings.tls
    cookies = CookieSecrets.from_file(tls.cookie_secret_file) if tls.cookie_secret_file else None
    tickets = TicketKeyRing.from_file(tls.ticket_key_file) if tls.ticket_key_file else None
    if tickets is None:
        log.info("no tls.ticket_key_file: session tickets work on this node only")
    return ServerContexts(
        dtls=ServerContext(Kind.DTLS, credentials, cookies=cookies, tickets=tickets),
        tls=ServerContext(Kind.TLS, credentials, tickets=tickets),
        dev_pki=dev,
    )


def datagram_limits(limits: LimitSettings) -> Limits:
    return Limits(
        max_sessions=limits.max_sessions,
        max_handshakes=limits.max_handshakes,
        handshake_deadline=float(limits.handshake_deadline),
        idle_timeout=float(limits.idle_timeout),
        handshakes_per_source_per_second=float(limits.handshakes_per_source),
        handshake_burst=2 * limits.handshakes_per_source,
        max_handshakes_per_source=limits.max_handshakes_per_source,
        handshake_deadline_min=float(limits.handshake_deadline_min),
        datagram_size=limits.pmtu - 48,  # IPv6 + UDP headers
        handshake_threads=limits.handshake_threads,
    )


def stream_limits(limits: LimitSettings) -> StreamLimits:
    return StreamLimits(
        max_connections=limits.max_sessions,
        max_handshakes=limits.max_handshakes,
        handshake_deadline=float(limits.handshake_deadline),
        idle_timeout=float(limits.idle_timeout),
        handshake_threads=limits.handshake_threads,
    )


def peer_identity(credential: PeerCredential) -> PeerIdentity:
    """The DOTS identity of an authenticated peer (its cuid per RFC 9132 App. B)."""
    if credential.certificate is not None:
        return _identity_of_certificate(credential.certificate)
    assert credential.psk_identity is not None
    return PeerIdentity.from_psk_identity(credential.psk_identity)


@functools.lru_cache(maxsize=4096)
def certificate_subject(der: bytes) -> str:
    """RFC 4514 subject, as ``[[clients]] cert_subject`` is written."""
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


@functools.lru_cache(maxsize=4096)
def _identity_of_certificate(der: bytes) -> PeerIdentity:
    # Clients reconnect with the same certificate; parsing it costs more than the hash.
    return PeerIdentity.from_certificate(der)


def write_fleet_secrets(directory: Path) -> tuple[Path, Path]:
    """Create ``cookie.secret`` and ``ticket.keys`` (mode 0600) for an anycast fleet."""
    from gateway.transport.tls_context import TicketKey, write_secret_file

    directory.mkdir(parents=True, exist_ok=True)
    cookie, tickets = directory / "cookie.secret", directory / "ticket.keys"
    write_secret_file(cookie, CookieSecrets.LENGTH)
    write_secret_file(tickets, TicketKey.LENGTH)
    return cookie, tickets


@functools.lru_cache(maxsize=4096)
def certificate_not_after(der: bytes) -> float:
    """The end of a certificate's validity, in seconds since the epoch."""
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


@functools.lru_cache(maxsize=4096)
def _certificate(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


@dataclass(frozen=True)
class Trust:
    """The client credentials as one (re)load left them: what established sessions are
    checked against. Built from the same files as the handshake contexts."""

    psk: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)
    cas: tuple[x509.Certificate, ...] = ()
    #: DER issuer name -> revoked serial numbers, from the CRL's lists whose signature a
    #: trusted CA verifies (OpenSSL refuses the others at handshake time too).
    revoked: Mapping[bytes, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, credentials: ServerCredentials) -> Trust:
        """Read the CA and CRL files named in ``credentials`` (OSError, ValueError)."""
        cas: tuple[x509.Certificate, ...] = ()
        if credentials.client_ca is not None:
            cas = tuple(x509.load_pem_x509_certificates(credentials.client_ca.read_bytes()))
        revoked: dict[bytes, frozenset[int]] = {}
        if credentials.crl is not None:
            for crl in _crls(credentials.crl.read_bytes()):
                if not any(ca.subject == crl.issuer and _crl_signed_by(crl, ca) for ca in cas):
                    log.warning("CRL of %s not signed by a trusted CA: ignored",
                                crl.issuer.rfc4514_string())
                    continue
                key = crl.issuer.public_bytes()
                revoked[key] = revoked.get(key, frozenset()) | {r.serial_number for r in crl}
        return cls(dict(credentials.psk), cas, revoked)

    def problem(self, credential: PeerCredential, before: Trust, now: float
                ) -> tuple[str, str] | None:
        """Why a session authenticated with ``credential`` (under ``before``) may not go on
        under this trust: (reason label, detail), or None. ``now``: seconds since the epoch.

        A certificate's chain is known by its issuer only (the session keeps the leaf):
        one issued by a CA of this trust must verify with it; one whose issuer is in
        neither trust (an intermediate the client sent) keeps its chain unchecked here."""
        if credential.certificate is None:
            identity = credential.psk_identity or b""
            key = self.psk.get(identity)
            if key is None:
                return "psk_withdrawn", "its PSK identity is no longer configured"
            if key != before.psk.get(identity, key):
                return "psk_withdrawn", "its PSK changed"
            return None
        leaf = _certificate(credential.certificate)
        if now >= leaf.not_valid_after_utc.timestamp():
            return "certificate_expired", (
                f"its certificate expired at {leaf.not_valid_after_utc.isoformat()}")
        if leaf.serial_number in self.revoked.get(leaf.issuer.public_bytes(), ()):
            return "certificate_revoked", (
                f"its certificate (serial {leaf.serial_number:x}) is revoked by the CRL")
        issuers = [ca for ca in self.cas if ca.subject == leaf.issuer]
        if issuers:
            if not any(_issued_by(leaf, ca) for ca in issuers):
                return "ca_withdrawn", "its certificate's issuer is no longer trusted"
        elif any(ca.subject == leaf.issuer for ca in before.cas):
            return "ca_withdrawn", (
                f"its CA {leaf.issuer.rfc4514_string()} is no longer trusted")
        return None


@functools.lru_cache(maxsize=4096)
def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:  # a key type that cannot sign (X25519, say)
        return False


def _crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (OpenSSL's X509_STORE_load_file reads them all), or one DER."""
    marker = b"-----BEGIN X509 CRL-----"
    if marker not in data:
        return [x509.load_der_x509_crl(data)]
    return [x509.load_pem_x509_crl(marker + part) for part in data.split(marker)[1:]]
