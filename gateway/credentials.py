"""Settings -> (D)TLS server contexts: operator files or the dev PKI, PSKs, fleet secrets.

Also maps an authenticated peer credential to the identity the DOTS layer works with
(RFC 9132 App. B cuid of the certificate's SPKI or of the PSK identity).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

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
