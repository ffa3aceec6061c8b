"""Typed DOTS signal-channel messages (RFC 9132 §5.1 tree), as frozen dataclasses.

Field names are the YANG leaf names with ``_`` for ``-``. Constructors validate every field
that has direction-independent rules (prefix syntax, port order, protocol range, FQDN and URI
syntax, empty values), raising ``InvalidValue``; what depends on the direction of a message
(what a request may carry) is in ``gateway.dots.validate``. Unknown comprehension-optional
keys ride along in ``extensions`` so a gateway can relay them unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.dots.codes import AttackStatus, ConflictCause, ConflictStatus, LabelledEnum, Status
from gateway.dots.errors import InvalidValue, MalformedPayload
from gateway.dots.keys import KEYS, K

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Extensions = tuple[tuple[int, Any], ...]
E = TypeVar("E", bound=LabelledEnum)

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


def _nonempty(values: tuple[Any, ...], what: str) -> None:
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
    _nonempty(t.alias_name, "alias-name")


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


# --- tree <-> model ----------------------------------------------------------------------------


def message_from_tree(tree: Mapping[int, Any]) -> Message:
    """A checked tree (see ``gateway.dots.codec``) -> typed message."""
    message = _message_from_tree(tree)
    outer = _extensions(tree)
    return replace(message, outer_extensions=outer) if outer else message


def _message_from_tree(tree: Mapping[int, Any]) -> Message:
    if K.MITIGATION_SCOPE in tree:
        return _mitigation_from_tree(tree[K.MITIGATION_SCOPE])
    if K.SIGNAL_CONFIG in tree:
        return _config_from_tree(tree[K.SIGNAL_CONFIG])
    if K.REDIRECTED_SIGNAL in tree:
        node = tree[K.REDIRECTED_SIGNAL]
        if K.ALT_SERVER not in node:
            raise MalformedPayload("redirected-signal without the mandatory alt-server")
        records = _leaf_list(node, K.ALT_SERVER_RECORD, "alt-server-record", _parse_address)
        return RedirectedSignal(node[K.ALT_SERVER], records, _extensions(node))
    node = tree[K.HEARTBEAT]
    if K.PEER_HB_STATUS not in node:
        raise MalformedPayload("heartbeat without the mandatory peer-hb-status")
    return Heartbeat(node[K.PEER_HB_STATUS], _extensions(node))


def _extensions(node: Mapping[int, Any]) -> Extensions:
    return tuple((k, v) for k, v in node.items() if k not in KEYS)


def _parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IP address") from None


T = TypeVar("T")


def _leaf_list(
    node: Mapping[int, Any], key: int, what: str, convert: Callable[[Any], T] | None = None
) -> tuple[T, ...]:
    values = node.get(key)
    if values is None:
        return ()
    if not values:
        raise InvalidValue(f"{what} is present but empty")
    _nonempty(tuple(values), what)
    return tuple(convert(v) for v in values) if convert else tuple(values)


def _enum(enum_type: type[E], value: int | None, what: str) -> E | None:
    if value is None:
        return None
    try:
        return enum_type(value)
    except ValueError:
        raise InvalidValue(f"{what} {value} is not a known value") from None


def _targets_kwargs(node: Mapping[int, Any]) -> dict[str, Any]:
    ranges = node.get(K.TARGET_PORT_RANGE)
    if ranges is not None and not ranges:
        raise InvalidValue("target-port-range is present but empty")
    port_ranges = []
    for entry in ranges or ():
        if K.LOWER_PORT not in entry:
            raise InvalidValue("target-port-range entry without lower-port")
        port_ranges.append(PortRange(entry[K.LOWER_PORT], entry.get(K.UPPER_PORT),
                                     _extensions(entry)))
    return {
        "target_prefix": _leaf_list(node, K.TARGET_PREFIX, "target-prefix", parse_prefix),
        "target_port_range": tuple(port_ranges),
        "target_protocol": _leaf_list(node, K.TARGET_PROTOCOL, "target-protocol"),
        "target_fqdn": _leaf_list(node, K.TARGET_FQDN, "target-fqdn"),
        "target_uri": _leaf_list(node, K.TARGET_URI, "target-uri"),
        "alias_name": _leaf_list(node, K.ALIAS_NAME, "alias-name"),
    }


def _mitigation_from_tree(node: Mapping[int, Any]) -> MitigationScope:
    if K.CUID in node or K.CDID in node:
        raise InvalidValue("cuid and cdid must not appear in a message body (RFC 9132 §4.4.1.1)")
    if K.SCOPE not in node:
        raise MalformedPayload("mitigation-scope without scope")
    return MitigationScope(tuple(_scope_from_tree(e) for e in node[K.SCOPE]), _extensions(node))


def _scope_from_tree(node: Mapping[int, Any]) -> Scope:
    if K.CUID in node or K.CDID in node:
        raise InvalidValue("cuid and cdid must not appear in a message body (RFC 9132 §4.4.1.1)")
    conflict = node.get(K.CONFLICT_INFORMATION)
    return Scope(
        **_targets_kwargs(node),
        lifetime=node.get(K.LIFETIME),
        trigger_mitigation=node.get(K.TRIGGER_MITIGATION),
        mid=node.get(K.MID),
        mitigation_start=node.get(K.MITIGATION_START),
        status=_enum(Status, node.get(K.STATUS), "status"),
        conflict_information=None if conflict is None else _conflict_from_tree(conflict),
        bytes_dropped=node.get(K.BYTES_DROPPED),
        bps_dropped=node.get(K.BPS_DROPPED),
        pkts_dropped=node.get(K.PKTS_DROPPED),
        pps_dropped=node.get(K.PPS_DROPPED),
        attack_status=_enum(AttackStatus, node.get(K.ATTACK_STATUS), "attack-status"),
        extensions=_extensions(node),
    )


def _conflict_from_tree(node: Mapping[int, Any]) -> ConflictInformation:
    cause = _enum(ConflictCause, node.get(K.CONFLICT_CAUSE), "conflict-cause")
    if cause is None:
        raise MalformedPayload("conflict-information without conflict-cause")
    scope_node = node.get(K.CONFLICT_SCOPE)
    scope = None
    if scope_node is not None:
        acls = tuple(
            AclEntry(_required(e, K.ACL_NAME, "acl-name"), e.get(K.ACL_TYPE), _extensions(e))
            for e in scope_node.get(K.ACL_LIST, ())
        )
        scope = ConflictScope(
            **_targets_kwargs(scope_node), acl_list=acls, mid=scope_node.get(K.MID),
            extensions=_extensions(scope_node),
        )
    return ConflictInformation(
        conflict_cause=cause,
        conflict_status=_enum(ConflictStatus, node.get(K.CONFLICT_STATUS), "conflict-status"),
        retry_timer=node.get(K.RETRY_TIMER),
        conflict_scope=scope,
        extensions=_extensions(node),
    )


def _required(node: Mapping[int, Any], key: int, what: str) -> Any:
    if key not in node:
        raise MalformedPayload(f"missing mandatory {what}")
    return node[key]


def _config_from_tree(node: Mapping[int, Any]) -> SignalConfig:
    if K.SID in node:
        raise InvalidValue("sid belongs in the Uri-Path, not in the body (RFC 9132 §4.5.2)")

    def config_set(key: int) -> ConfigSet | None:
        set_node = node.get(key)
        if set_node is None:
            return None
        values: dict[str, Any] = {}
        for name, param_key, is_decimal in CONFIG_PARAMETERS:
            p = set_node.get(param_key)
            if p is None:
                continue
            keys = (
                (K.CURRENT_VALUE_DECIMAL, K.MIN_VALUE_DECIMAL, K.MAX_VALUE_DECIMAL)
                if is_decimal
                else (K.CURRENT_VALUE, K.MIN_VALUE, K.MAX_VALUE)
            )
            current, low, high = (p.get(k) for k in keys)
            values[name] = ConfigValue(current, low, high, extensions=_extensions(p))
        return ConfigSet(**values, extensions=_extensions(set_node))

    return SignalConfig(
        config_set(K.MITIGATING_CONFIG), config_set(K.IDLE_CONFIG), _extensions(node)
    )


def message_to_tree(message: Message) -> dict[int, Any]:
    return _with_ext(_message_to_tree(message), message.outer_extensions)


def _message_to_tree(message: Message) -> dict[int, Any]:
    body: dict[int, Any]
    if isinstance(message, MitigationScope):
        body = {K.SCOPE: [_scope_to_tree(s) for s in message.scope]}
        return {K.MITIGATION_SCOPE: _with_ext(body, message.extensions)}
    if isinstance(message, SignalConfig):
        body = {}
        for key, config_set in (
            (K.MITIGATING_CONFIG, message.mitigating_config),
            (K.IDLE_CONFIG, message.idle_config),
        ):
            if config_set is not None:
                body[key] = _config_set_to_tree(config_set)
        return {K.SIGNAL_CONFIG: _with_ext(body, message.extensions)}
    if isinstance(message, RedirectedSignal):
        body = {K.ALT_SERVER: message.alt_server}
        if message.alt_server_record:
            body[K.ALT_SERVER_RECORD] = [str(a) for a in message.alt_server_record]
        return {K.REDIRECTED_SIGNAL: _with_ext(body, message.extensions)}
    if isinstance(message, Heartbeat):
        body = {K.PEER_HB_STATUS: message.peer_hb_status}
        return {K.HEARTBEAT: _with_ext(body, message.extensions)}
    raise TypeError(f"not a DOTS message: {type(message).__name__}")


def _with_ext(body: dict[int, Any], extensions: Extensions) -> dict[int, Any]:
    body.update(extensions)
    return body


def _targets_to_tree(t: Targets, node: dict[int, Any]) -> dict[int, Any]:
    if t.target_prefix:
        node[K.TARGET_PREFIX] = [str(p) for p in t.target_prefix]
    if t.target_port_range:
        node[K.TARGET_PORT_RANGE] = [
            _with_ext({K.LOWER_PORT: r.lower_port} if r.upper_port is None
                      else {K.LOWER_PORT: r.lower_port, K.UPPER_PORT: r.upper_port}, r.extensions)
            for r in t.target_port_range
        ]
    for key, values in (
        (K.TARGET_PROTOCOL, t.target_protocol),
        (K.TARGET_FQDN, t.target_fqdn),
        (K.TARGET_URI, t.target_uri),
        (K.ALIAS_NAME, t.alias_name),
    ):
        if values:
            node[key] = list(values)
    return node


def _scope_to_tree(s: Scope) -> dict[int, Any]:
    node = _targets_to_tree(s, {})
    for key, value in (
        (K.LIFETIME, s.lifetime),
        (K.TRIGGER_MITIGATION, s.trigger_mitigation),
        (K.MID, s.mid),
        (K.MITIGATION_START, s.mitigation_start),
        (K.STATUS, s.status),
        (K.BYTES_DROPPED, s.bytes_dropped),
        (K.BPS_DROPPED, s.bps_dropped),
        (K.PKTS_DROPPED, s.pkts_dropped),
        (K.PPS_DROPPED, s.pps_dropped),
        (K.ATTACK_STATUS, s.attack_status),
    ):
        if value is not None:
            node[key] = value
    if s.conflict_information is not None:
        node[K.CONFLICT_INFORMATION] = _conflict_to_tree(s.conflict_information)
    return _with_ext(node, s.extensions)


def _conflict_to_tree(c: ConflictInformation) -> dict[int, Any]:
    node: dict[int, Any] = {K.CONFLICT_CAUSE: c.conflict_cause}
    if c.conflict_status is not None:
        node[K.CONFLICT_STATUS] = c.conflict_status
    if c.retry_timer is not None:
        node[K.RETRY_TIMER] = c.retry_timer
    if c.conflict_scope is not None:
        scope = _targets_to_tree(c.conflict_scope, {})
        if c.conflict_scope.acl_list:
            scope[K.ACL_LIST] = [
                _with_ext({K.ACL_NAME: a.acl_name} if a.acl_type is None
                          else {K.ACL_NAME: a.acl_name, K.ACL_TYPE: a.acl_type}, a.extensions)
                for a in c.conflict_scope.acl_list
            ]
        if c.conflict_scope.mid is not None:
            scope[K.MID] = c.conflict_scope.mid
        node[K.CONFLICT_SCOPE] = _with_ext(scope, c.conflict_scope.extensions)
    return _with_ext(node, c.extensions)


def _config_set_to_tree(c: ConfigSet) -> dict[int, Any]:
    node: dict[int, Any] = {}
    for name, param_key, is_decimal in CONFIG_PARAMETERS:
        value: ConfigValue | None = getattr(c, name)
        if value is None:
            continue
        keys = (
            (K.CURRENT_VALUE_DECIMAL, K.MIN_VALUE_DECIMAL, K.MAX_VALUE_DECIMAL)
            if is_decimal
            else (K.CURRENT_VALUE, K.MIN_VALUE, K.MAX_VALUE)
        )
        # The RFC's figures list max, min, current; the CBOR encoder sorts keys anyway.
        node[param_key] = _with_ext({
            k: v
            for k, v in zip(
                keys, (value.current_value, value.min_value, value.max_value), strict=True
            )
            if v is not None
        }, value.extensions)
    return _with_ext(node, c.extensions)
