"""Typed DOTS signal-channel messages (RFC 9132 §5.1 tree), as frozen dataclasses.

Field names are the YANG leaf names with ``_`` for ``-``. Constructors validate every field
that has direction-independent rules (prefix syntax, port order, protocol range, FQDN and URI
syntax, empty values), raising ``InvalidValue``; what depends on the direction of a message
(what a request may carry) is in ``gateway.dots.validate``. Unknown comprehension-optional
keys ride along in ``extensions`` so a gateway can relay them unchanged.

This module holds the types and their field checks only: turning a key tree into these
objects and back is ``gateway.dots.tree``, bytes and JSON are ``gateway.dots.codec``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from gateway.dots.codes import AttackStatus, ConflictCause, ConflictStatus, Status
from gateway.dots.errors import InvalidValue
from gateway.dots.keys import K

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Extensions = tuple[tuple[int, Any], ...]

# RFC 6991 inet:domain-name, without the lone "." (a root name is no mitigation target).
_LABEL = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
_DOMAIN_NAME = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}\.?$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# RFC 9132 §4.4.1.1: no broadcast, loopback or multicast targets.
_FORBIDDEN_TARGETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "ff00::/8",
        "::ffff:127.0.0.0/104",
        "::ffff:224.0.0.0/100",
        "::ffff:255.255.255.255/128",
    )
)


# --- field checks ------------------------------------------------------------------------------


def parse_prefix(text: str) -> IPNetwork:
    """An ``inet:ip-prefix`` in CIDR notation; host bits are cleared (RFC 6991 canonical form)."""
    if "/" not in text:
        raise InvalidValue(f"target-prefix {text!r} is not in CIDR notation (address/length)")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidValue(f"target-prefix {text!r} is not a valid IP prefix") from None
    for forbidden in _FORBIDDEN_TARGETS:
        if network.version == forbidden.version and network.overlaps(forbidden):
            raise InvalidValue(
                f"target-prefix {text} covers loopback, multicast or broadcast addresses "
                "(RFC 9132 §4.4.1.1)"
            )
    return network


def check_domain_name(text: str, what: str) -> str:
    if not text or len(text) > 253 or not _DOMAIN_NAME.match(text):
        raise InvalidValue(f"{what} {text!r} is not a valid domain name")
    return text


def check_uri(text: str) -> str:
    scheme, _, rest = text.partition(":")
    if not rest or not _URI_SCHEME.match(scheme) or any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidValue(f"target-uri {text!r} is not a valid URI (RFC 3986)")
    try:
        host = urlsplit(text).hostname
    except ValueError:
        host = None
    if not host:
        raise InvalidValue(f"target-uri {text!r} has no host to resolve")
    return text


def check_nonempty(values: tuple[Any, ...], what: str) -> None:
    # RFC 9132 §4.4.1.1: attributes with empty values make the whole request invalid.
    for v in values:
        if v == "":
            raise InvalidValue(f"{what} contains an empty value")


def _unique(values: Iterable[Any], what: str) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise InvalidValue(f"{what} lists {v} twice")
        seen.add(v)


# --- mitigation scope --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortRange:
    lower_port: int
    upper_port: int | None = None
    extensions: Extensions = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.lower_port <= 65535:
            raise InvalidValue(f"lower-port {self.lower_port} is not a port number")
        if self.upper_port is not None:
            if not 0 <= self.upper_port <= 65535:
                raise InvalidValue(f"upper-port {self.upper_port} is not a port number")
            if self.upper_port < self.lower_port:
                raise InvalidValue(
                    f"upper-port {self.upper_port} is lower than lower-port {self.lower_port}"
                )

    @property
    def upper(self) -> int:
        return self.lower_port if self.upper_port is None else self.upper_port

    def overlaps(self, other: PortRange) -> bool:
        return self.lower_port <= other.upper and other.lower_port <= self.upper


@dataclass(frozen=True, slots=True)
class AclEntry:
    acl_name: str
    acl_type: str | None = None
    extensions: Extensions = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Targets:
    """The target clauses shared by a scope and a conflict-scope."""

    target_prefix: tuple[IPNetwork, ...] = ()
    target_port_range: tuple[PortRange, ...] = ()
    target_protocol: tuple[int, ...] = ()
    target_fqdn: tuple[str, ...] = ()
    target_uri: tuple[str, ...] = ()
    alias_name: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_targets(self)

    def has_target(self) -> bool:
        """At least one of prefix, FQDN, URI or alias (RFC 9132 §4.4.1.1)."""
        return bool(self.target_prefix or self.target_fqdn or self.target_uri or self.alias_name)

    def overlap(self, other: Targets) -> Targets | None:
        """The common part of two target sets, or None when they do not overlap.

        Two requests overlap when they share an address, prefix, FQDN, URI or alias
        (RFC 9132 §4.4.1.3); ports and protocols only narrow an overlap that exists.
        """
        prefixes = tuple(
            a if a.prefixlen >= b.prefixlen else b
            for a in self.target_prefix
            for b in other.target_prefix
            if a.version == b.version and a.overlaps(b)
        )
        fqdns = tuple(
            sorted(
                {f.lower().rstrip(".") for f in self.target_fqdn}
                & {f.lower().rstrip(".") for f in other.target_fqdn}
            )
        )
        uris = tuple(sorted(set(self.target_uri) & set(other.target_uri)))
        aliases = tuple(sorted(set(self.alias_name) & set(other.alias_name)))
        if not (prefixes or fqdns or uris or aliases):
            return None
        ports = tuple(
            p
            for p in self.target_port_range
            if not other.target_port_range or any(p.overlaps(q) for q in other.target_port_range)
        )
        protocols = tuple(sorted(set(self.target_protocol) & set(other.target_protocol)))
        return Targets(tuple(dict.fromkeys(prefixes)), ports, protocols, fqdns, uris, aliases)

    def target_key(self) -> tuple[frozenset[Any], ...]:
        """Order-insensitive identity of the targets, for "same parameters" checks."""
        return (
            frozenset(self.target_prefix),
            frozenset(self.target_port_range),
            frozenset(self.target_protocol),
            frozenset(f.lower() for f in self.target_fqdn),
            frozenset(self.target_uri),
            frozenset(self.alias_name),
        )


def _validate_targets(t: Targets) -> None:
    for p in t.target_protocol:
        if not 0 <= p <= 255:
            raise InvalidValue(f"target-protocol {p} is outside 0-255")
    _unique(t.target_protocol, "target-protocol")
    _unique((r.lower_port for r in t.target_port_range), "target-port-range lower-port")
    _unique(t.target_prefix, "target-prefix")
    for fqdn in t.target_fqdn:
        check_domain_name(fqdn, "target-fqdn")
    for uri in t.target_uri:
        check_uri(uri)
    check_nonempty(t.alias_name, "alias-name")


@dataclass(frozen=True, slots=True)
class ConflictScope(Targets):
    acl_list: tuple[AclEntry, ...] = ()
    mid: int | None = None
    extensions: Extensions = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class ConflictInformation:
    conflict_cause: ConflictCause
    conflict_status: ConflictStatus | None = None
    retry_timer: int | None = None
    conflict_scope: ConflictScope | None = None
    extensions: Extensions = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # RFC 9132 §4.4.1.3: a cuid collision carries the cause alone.
        if self.conflict_cause is ConflictCause.CUID_COLLISION and (
            self.conflict_status is not None
            or self.retry_timer is not None
            or self.conflict_scope is not None
        ):
            raise InvalidValue(
                "cuid-collision must not carry conflict-status, -scope or retry-timer"
            )


@dataclass(frozen=True, slots=True)
class Scope(Targets):
    """One entry of ``scope``: a mitigation request, or its status in a response."""

    lifetime: int | None = None
    trigger_mitigation: bool | None = None
    # server-to-client only
    mid: int | None = None
    mitigation_start: int | None = None
    status: Status | None = None
    conflict_information: ConflictInformation | None = None
    bytes_dropped: int | None = None
    bps_dropped: int | None = None
    pkts_dropped: int | None = None
    pps_dropped: int | None = None
    # client-to-server only
    attack_status: AttackStatus | None = None
    extensions: Extensions = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _validate_targets(self)
        if self.lifetime is not None and not (self.lifetime == -1 or 0 <= self.lifetime < 2**32):
            raise InvalidValue(f"lifetime {self.lifetime} is neither -1 nor a uint32")

    @property
    def triggers_immediately(self) -> bool:
        return self.trigger_mitigation is not False  # absent means true (RFC 9132 §4.4.1.1)

    def request_key(self) -> tuple[Any, ...]:
        """What must be identical between a request and its refresh (all but lifetime)."""
        return (*self.target_key(), self.triggers_immediately)

    def targets(self) -> Targets:
        return Targets(
            self.target_prefix,
            self.target_port_range,
            self.target_protocol,
            self.target_fqdn,
            self.target_uri,
            self.alias_name,
        )


@dataclass(frozen=True, slots=True)
class MitigationScope:
    scope: tuple[Scope, ...]
    extensions: Extensions = field(default=(), compare=False)
    #: Unknown comprehension-optional keys beside the container, at the top of the message.
    outer_extensions: Extensions = field(default=(), compare=False)


# --- session configuration ---------------------------------------------------------------------


Number = int | Decimal


@dataclass(frozen=True, slots=True)
class ConfigValue:
    """One negotiable parameter: current value and, from servers only, its bounds."""

    current_value: Number | None = None
    min_value: Number | None = None
    max_value: Number | None = None
    extensions: Extensions = field(default=(), compare=False)


CONFIG_PARAMETERS: tuple[tuple[str, int, bool], ...] = (
    # (field name, CBOR key, decimal?)
    ("heartbeat_interval", K.HEARTBEAT_INTERVAL, False),
    ("missing_hb_allowed", K.MISSING_HB_ALLOWED, False),
    ("probing_rate", K.PROBING_RATE, False),
    ("max_retransmit", K.MAX_RETRANSMIT, False),
    ("ack_timeout", K.ACK_TIMEOUT, True),
    ("ack_random_factor", K.ACK_RANDOM_FACTOR, True),
)


@dataclass(frozen=True, slots=True)
class ConfigSet:
    heartbeat_interval: ConfigValue | None = None
    missing_hb_allowed: ConfigValue | None = None
    probing_rate: ConfigValue | None = None
    max_retransmit: ConfigValue | None = None
    ack_timeout: ConfigValue | None = None
    ack_random_factor: ConfigValue | None = None
    extensions: Extensions = field(default=(), compare=False)

    def items(self) -> Iterable[tuple[str, ConfigValue]]:
        for name, _key, _dec in CONFIG_PARAMETERS:
            value = getattr(self, name)
            if value is not None:
                yield name, value


@dataclass(frozen=True, slots=True)
class SignalConfig:
    mitigating_config: ConfigSet | None = None
    idle_config: ConfigSet | None = None
    extensions: Extensions = field(default=(), compare=False)
    #: Unknown comprehension-optional keys beside the container, at the top of the message.
    outer_extensions: Extensions = field(default=(), compare=False)


# --- redirect and heartbeat --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedirectedSignal:
    alt_server: str
    alt_server_record: tuple[IPAddress, ...] = ()
    extensions: Extensions = field(default=(), compare=False)
    #: Unknown comprehension-optional keys beside the container, at the top of the message.
    outer_extensions: Extensions = field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_domain_name(self.alt_server, "alt-server")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    peer_hb_status: bool
    extensions: Extensions = field(default=(), compare=False)
    #: Unknown comprehension-optional keys beside the container, at the top of the message.
    outer_extensions: Extensions = field(default=(), compare=False)


Message = MitigationScope | SignalConfig | RedirectedSignal | Heartbeat
