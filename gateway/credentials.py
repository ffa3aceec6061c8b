"""Settings -> (D)TLS server contexts: operator files or the dev PKI, PSKs, fleet secrets.

``file_problems`` checks the state directory and the mitigation command, opens and parses
every file the settings name (certificates, keys, CAs, CRL, fleet secrets, the gateway's
upstream credential, an existing dev PKI) and checks that each key matches its certificate
and each chain verifies: ``check-config`` and ``run`` list what it finds, one line per
problem, instead of failing half-way through start-up.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certs.devpki import ALL_FILES, DevPki, DevPkiError, init_dev_pki, load_dev_pki
from certs.identity import PeerIdentity
from gateway.config import Backend, ConfigError, LimitSettings, Settings
from gateway.transport.dtls_server import Limits
from gateway.transport.openssl_ffi import OpenSSLError
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


def file_problems(settings: Settings, now: float | None = None) -> list[ConfigError]:
    """Every problem with the files ``settings`` name (state directory, credentials, the
    mitigation command), each a ``ConfigError`` naming its key ("file: tls.cert: PATH: what
    is wrong"); [] when all of them load.

    Reads only: a state directory or dev PKI that does not exist yet is fine (``run``
    creates them). ``now``: seconds since the epoch, for the validity periods."""
    found: list[ConfigError] = []

    def problem(key: str, message: str) -> None:
        found.append(ConfigError(key, message, source=settings.source))

    state_dir = settings.general.state_dir
    if state_dir.exists() and not state_dir.is_dir():
        problem("general.state_dir", f"{state_dir} exists and is not a directory")
    if settings.mitigation.backend is Backend.COMMAND and settings.mitigation.command:
        try:
            program = shlex.split(settings.mitigation.command)[0]
        except (ValueError, IndexError):
            program = None  # the config check reports it
        if program is not None and shutil.which(program) is None:
            problem("mitigation.command", f"{program}: no such executable")

    at = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    tls, gw = settings.tls, settings.gateway
    cas: list[x509.Certificate] = []
    if tls.dev_pki_dir is not None:
        if any((tls.dev_pki_dir / name).exists() for name in ALL_FILES):
            try:
                load_dev_pki(tls.dev_pki_dir, now=at)
            except DevPkiError as exc:
                problem("tls", f"the dev PKI (no [tls] files given): {exc}")
    else:
        cas = _certificates(problem, "tls.ca", tls.ca)
        _check_pair(problem, "tls", tls.cert, tls.key, cas, at)
    if tls.crl is not None:
        try:
            _crls(tls.crl.read_bytes())
        except OSError as exc:
            problem("tls.crl", f"{tls.crl}: cannot read: {exc.strerror or exc}")
        except ValueError:
            problem("tls.crl", f"{tls.crl}: not a PEM or DER CRL")
    for key, path, reader in (("tls.cookie_secret_file", tls.cookie_secret_file,
                               CookieSecrets.from_file),
                              ("tls.ticket_key_file", tls.ticket_key_file,
                               TicketKeyRing.from_file)):
        if path is None:
            continue
        try:
            reader(path)
        except OSError as exc:
            problem(key, f"{path}: cannot read: {exc.strerror or exc}")
        except (ValueError, UnicodeDecodeError) as exc:
            problem(key, str(exc) if str(path) in str(exc) else f"{path}: {exc}")
    upstream_cas = _certificates(problem, "gateway.ca", gw.ca) if gw.ca is not None else []
    if gw.cert is not None or gw.key is not None:
        _check_pair(problem, "gateway", gw.cert, gw.key, upstream_cas + cas, at)
    anchors = settings.discovery.dnssec_trust_anchors
    if anchors is not None and settings.discovery.dnssec.value != "off":
        from gateway.discovery.dnssec import TrustAnchorError
        from gateway.discovery.resolver import ANCHORS_KEY, load_trust_anchors

        try:
            load_trust_anchors(anchors)
        except TrustAnchorError as exc:
            problem(ANCHORS_KEY, str(exc).removeprefix(f"{ANCHORS_KEY}: "))
    if not found and tls.dev_pki_dir is None:
        try:  # what OpenSSL itself refuses (a key too weak for its security level, say)
            server_contexts(settings)
        except (OpenSSLError, OSError, ValueError) as exc:
            problem("tls", f"OpenSSL refuses the credentials: {exc}")
    return found


def _certificates(problem: Callable[[str, str], None], key: str,
                  path: Path | None) -> list[x509.Certificate]:
    """The PEM certificates in ``path`` (at least one), or [] after reporting why not."""
    if path is None:
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem(key, f"{path}: cannot read: {exc.strerror or exc}")
        return []
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        problem(key, f"{path}: no PEM certificate in it")
    return certificates


def _check_pair(problem: Callable[[str, str], None], section: str, cert: Path | None,
                key: Path | None, cas: list[x509.Certificate], at: dt.datetime) -> None:
    """A certificate chain and its key: readable, matching, each link issued by the next
    (the last one by a CA in ``cas`` when that CA is there), the leaf valid ``at``."""
    chain = _certificates(problem, f"{section}.cert", cert)
    private = None
    if key is not None:
        try:
            private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except OSError as exc:
            problem(f"{section}.key", f"{key}: cannot read: {exc.strerror or exc}")
        except TypeError:
            problem(f"{section}.key", f"{key}: the key is encrypted; give it unencrypted")
        except (ValueError, UnsupportedAlgorithm):
            problem(f"{section}.key", f"{key}: not a PEM private key")
    if not chain:
        return
    leaf = chain[0]
    if private is not None and _spki(private.public_key()) != _spki(leaf.public_key()):
        problem(f"{section}.key", f"{key} is not the key of the certificate in {cert}")
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        problem(f"{section}.cert", f"{cert}: the certificate is valid only from "
                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    for lower, upper in zip(chain, chain[1:], strict=False):
        if not _issued_by(lower, upper):
            problem(f"{section}.cert", f"{cert}: {lower.subject.rfc4514_string()} was not "
                    f"issued by the next certificate, {upper.subject.rfc4514_string()}")
            return
    top = chain[-1]
    issuers = [ca for ca in cas if ca.subject == top.issuer]
    if issuers and not any(_issued_by(top, ca) for ca in issuers):
        problem(f"{section}.cert", f"{cert}: {top.subject.rfc4514_string()} does not verify "
                f"with its CA {top.issuer.rfc4514_string()}")


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


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
        handshake_nice=limits.handshake_nice,
    )


def stream_limits(limits: LimitSettings) -> StreamLimits:
    return StreamLimits(
        max_connections=limits.max_sessions,
        max_handshakes=limits.max_handshakes,
        handshake_deadline=float(limits.handshake_deadline),
        idle_timeout=float(limits.idle_timeout),
        handshake_threads=limits.handshake_threads,
        handshake_nice=limits.handshake_nice,
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


def rotate_fleet_secrets(directory: Path, keep: int = 1) -> list[tuple[Path, int]]:
    """A new first line in ``cookie.secret`` and ``ticket.keys`` of ``directory``, the
    ``keep`` previous secrets kept below it; (file, secrets dropped) for each. Both files
    are read and checked before either is changed."""
    from gateway.transport.tls_context import TicketKey, TicketKeyRing, rotate_secret_file

    files = ((directory / "cookie.secret", CookieSecrets.LENGTH, "cookie secret"),
             (directory / "ticket.keys", TicketKey.LENGTH, "ticket key"))
    CookieSecrets.from_file(files[0][0])
    TicketKeyRing.from_file(files[1][0])
    return [(path, rotate_secret_file(path, length, what, keep)) for path, length, what in files]


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
