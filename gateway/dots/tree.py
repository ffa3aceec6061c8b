"""Checked key tree <-> typed message (``gateway.dots.model``), both directions.

``gateway.dots.codec`` turns CBOR or JSON into a tree of integer keys and checks it against
the key table; this module builds the frozen dataclasses from such a tree (raising
``MalformedPayload`` for a missing mandatory node and ``InvalidValue`` for a bad value) and
writes them back, with the unknown comprehension-optional keys kept where they were. It owns
no types of its own and imports no serialisation library.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from gateway.dots.codes import AttackStatus, ConflictCause, ConflictStatus, LabelledEnum, Status
from gateway.dots.errors import InvalidValue, MalformedPayload
from gateway.dots.keys import KEYS, K
from gateway.dots.model import (
    CONFIG_PARAMETERS,
    AclEntry,
    ConfigSet,
    ConfigValue,
    ConflictInformation,
    ConflictScope,
    Extensions,
    Heartbeat,
    IPAddress,
    Message,
    MitigationScope,
    PortRange,
    RedirectedSignal,
    Scope,
    SignalConfig,
    Targets,
    check_nonempty,
    parse_prefix,
)

E = TypeVar("E", bound=LabelledEnum)


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
    """Keys the model has no field for (unknown optional ones, and registered ones we do not
    act on, such as RFC 9133's acl-list): kept whole, in order, to be written back."""
    return tuple((k, v) for k, v in node.items() if k not in KEYS or KEYS[k].opaque)


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
    check_nonempty(tuple(values), what)
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
