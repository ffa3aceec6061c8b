"""Where and how the node accepts DOTS sessions: ``[server]``, ``[tls]``, ``[[psk]]``, ``[limits]``.

Owns their settings types, defaults and readers: the listening addresses, port and transports,
the (D)TLS credentials (operator files, or the dev PKI in the state directory), the PSK table
and the transport limits. ``gateway.credentials`` and the transports turn these into contexts
and endpoints. Imports: standard library, ``gateway.config.schema``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.config.schema import IPAddress, Table, Unique, parse_ip

DEFAULT_PORT = 4646  # RFC 9132 §3: same number for UDP and TCP


class Transport(StrEnum):
    UDP = "udp"  # coaps: CoAP over DTLS
    TCP = "tcp"  # coaps+tcp: CoAP over TLS


@dataclass(frozen=True, slots=True)
class ServerSettings:
    addresses: tuple[IPAddress, ...]
    port: int
    transports: tuple[Transport, ...]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Either the three operator files, or ``dev_pki_dir`` (no ``[tls]``: dev PKI there)."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    dev_pki_dir: Path | None
    #: Optional CRL (PEM) checked for client certificates.
    crl: Path | None = None
    #: Files shared by every node of an anycast fleet (one hex secret per line, first one
    #: active): DTLS cookie HMAC secrets and session-ticket keys. None: random per process.
    cookie_secret_file: Path | None = None
    #: Test peers only (tinydtls): also offer PSK suites without (EC)DHE, which RFC 9132 §7.1
    #: does not allow for production.
    allow_legacy_psk: bool = False
    ticket_key_file: Path | None = None

    @property
    def dev_pki(self) -> bool:
        return self.dev_pki_dir is not None


@dataclass(frozen=True, slots=True)
class PskEntry:
    identity: str
    key: bytes = field(repr=False)  # never in logs or tracebacks


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Transport limits; each one, when hit, gives the client a defined outcome and a log
    line (no cookie / refused connection), never silent memory growth."""

    max_sessions: int = 20_000
    max_handshakes: int = 512
    handshake_deadline: int = 20  # seconds to finish a (D)TLS handshake
    idle_timeout: int = 6 * 3600  # seconds without any datagram or byte from the peer
    handshakes_per_source: int = 20  # per second, per source address (burst: twice that)
    max_handshakes_per_source: int = 8  # concurrent DTLS handshakes per source address
    handshake_deadline_min: int = 4  # DTLS deadline when max_handshakes are all in use
    pmtu: int = 1280  # path MTU assumed for DTLS records (RFC 9132 §7.3)
    handshake_threads: int = 2
    #: Niceness of the handshake threads: 19 lets the event loop (established sessions)
    #: win every contest for a core; 0 gives them the loop's priority, for hosts where
    #: other processes compete and handshakes must keep up.
    handshake_nice: int = 19


def read_server(t: Table) -> ServerSettings:
    before = t.error_count
    seen = Unique("address")
    addresses = [
        address
        for key, address in t.parsed_list("addresses", parse_ip, ("127.0.0.1", "::1"))
        if seen.check(t, key, address)
    ]
    if not addresses and t.error_count == before:
        t.error("addresses", "must list at least one address to listen on")
    port = t.integer("port", DEFAULT_PORT, 1, 65535)
    before = t.error_count
    seen = Unique("transport")
    transports = []
    for key, text in t.strings("transports", ("udp", "tcp")):
        if text not in {"udp", "tcp"}:
            t.error_at(key, f"must be 'udp' or 'tcp', got {text!r}")
        elif seen.check(t, key, text):
            transports.append(Transport(text))
    if not transports and t.error_count == before:
        t.error("transports", "must list at least one of 'udp', 'tcp'")
    t.finish()
    return ServerSettings(tuple(addresses), port, tuple(transports))


def read_tls(t: Table, base_dir: Path | None, state_dir: Path) -> TlsSettings:
    names = ("ca", "cert", "key")
    given = [name for name in names if t.has(name)]
    paths = [t.opt_path(name, base_dir) for name in names]
    listed = " and ".join(f"tls.{name}" for name in given)
    for name in names:
        if given and name not in given:
            t.error(name, f"required when {listed} is set (all three, or none for the dev PKI)")
    extras: dict[str, Any] = {name: t.opt_path(name, base_dir)
                              for name in ("crl", "cookie_secret_file", "ticket_key_file")}
    extras["allow_legacy_psk"] = t.boolean("allow_legacy_psk", False)
    t.finish()
    if given:
        return TlsSettings(paths[0], paths[1], paths[2], dev_pki_dir=None, **extras)
    return TlsSettings(None, None, None, dev_pki_dir=state_dir / "pki", **extras)


def read_psk(root: Table) -> tuple[tuple[PskEntry, ...], set[str]]:
    """The entries, and every identity named, even with a bad key: a client that refers to one
    should not get a second, misleading error."""
    entries: list[PskEntry] = []
    identities: set[str] = set()
    seen = Unique("identity")
    for t in root.tables("psk"):
        identity = t.opt_string("identity", required=True)
        if identity is not None and len(identity.encode()) > 128:
            t.error("identity", f"must be at most 128 bytes of UTF-8, got {len(identity.encode())}")
        elif identity is not None:
            seen.check(t, t.key("identity"), identity)
            identities.add(identity)
        has_text, has_hex = t.has("key"), t.has("key_hex")
        text = t.opt_string("key", secret=True)
        hex_text = t.opt_string("key_hex", secret=True)
        secret, which = None, "key"
        if has_text and has_hex:
            t.error("key_hex", "give either key or key_hex, not both")
        elif not has_text and not has_hex:
            t.error(None, "needs a key: key (text) or key_hex (hex digits)")
        elif text is not None:
            if text.isprintable():
                secret = text.encode()
            else:
                t.error("key", "must be printable text; write other keys as key_hex")
        elif hex_text is not None:
            which = "key_hex"
            if re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", hex_text):
                secret = bytes.fromhex(hex_text)
            else:
                t.error("key_hex", "must be an even number of hex digits (no spaces, no 0x)")
        # Short PSKs fall to offline guessing; 128 bits is the floor.
        if secret is not None and len(secret) < 16:
            t.error(which, f"must be at least 16 bytes, got {len(secret)}")
        t.finish()
        if identity is not None and secret is not None:
            entries.append(PskEntry(identity, secret))
    return tuple(entries), identities


def read_limits(t: Table) -> LimitSettings:
    d = LimitSettings()
    limits = LimitSettings(
        max_sessions=t.integer("max_sessions", d.max_sessions, 1, 10_000_000),
        max_handshakes=t.integer("max_handshakes", d.max_handshakes, 1, 1_000_000),
        handshake_deadline=t.integer("handshake_deadline", d.handshake_deadline, 1, 600),
        idle_timeout=t.integer("idle_timeout", d.idle_timeout, 10, 30 * 86400),
        handshakes_per_source=t.integer("handshakes_per_source", d.handshakes_per_source, 1,
                                        1_000_000),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, 1, 1_000_000),
        handshake_deadline_min=t.integer("handshake_deadline_min", d.handshake_deadline_min,
                                         1, 600),
        # IPv4's 576 is the smallest a DOTS agent may assume (RFC 9132 §7.3).
        pmtu=t.integer("pmtu", d.pmtu, 576, 65535),
        handshake_threads=t.integer("handshake_threads", d.handshake_threads, 1, 64),
        handshake_nice=t.integer("handshake_nice", d.handshake_nice, 0, 19),
    )
    t.finish()
    return limits
