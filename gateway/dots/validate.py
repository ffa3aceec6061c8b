"""Direction-aware checks of request bodies, with the exact RFC 9132 response codes.

The model already rejects values that are wrong anywhere (bad prefixes, port order...).
Here we check what a *client request* may carry: one scope, a target, a lifetime, no
server-to-client nodes, the efficacy-update contract, and session-config PUT bodies.
"""

from __future__ import annotations

from gateway.dots.codec import decode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR
from gateway.dots.errors import (
    InvalidValue,
    MalformedPayload,
    MissingAttribute,
    RequiredKeysNotActedOn,
    UnsupportedContentFormat,
)
from gateway.dots.keys import KEYS
from gateway.dots.message import DotsRequest
from gateway.dots.model import Heartbeat, Message, MitigationScope, Scope, SignalConfig

_SERVER_ONLY_SCOPE_FIELDS = (
    "mid",
    "mitigation_start",
    "status",
    "conflict_information",
    "bytes_dropped",
    "bps_dropped",
    "pkts_dropped",
    "pps_dropped",
)


def decode_request_body(request: DotsRequest) -> Message:
    """Decode a request payload after checking its Content-Format (4.15 when wrong)."""
    if request.content_format not in (None, CONTENT_FORMAT_DOTS_CBOR):
        raise UnsupportedContentFormat(
            f"Content-Format {request.content_format} is not application/dots+cbor (271)"
        )
    if not request.payload:
        raise MissingAttribute("this request needs an application/dots+cbor body")
    return decode_message(request.payload)


def is_efficacy_update(request: DotsRequest) -> bool:
    """An efficacy update is a PUT with one empty If-Match (RFC 9132 §4.4.3)."""
    if not request.if_match:
        return False
    if request.if_match != (b"",):
        raise InvalidValue("an efficacy update carries exactly one empty If-Match option")
    return True


def validate_mitigation_request(message: Message, *, efficacy_update: bool) -> Scope:
    """The single scope of a mitigation PUT, or the 4.00 the RFC asks for."""
    if not isinstance(message, MitigationScope):
        raise MalformedPayload("a mitigation request body must be a mitigation-scope")
    if len(message.scope) != 1:
        raise InvalidValue(  # RFC 9132 §4.4.1.1: exactly one scope entry per request
            f"a mitigation request holds exactly one scope entry, got {len(message.scope)}"
        )
    scope = message.scope[0]
    present = [
        f.replace("_", "-") for f in _SERVER_ONLY_SCOPE_FIELDS if getattr(scope, f) is not None
    ]
    if present:
        raise InvalidValue("server-to-client attributes in a request: " + ", ".join(present))
    if not scope.has_target():
        raise MissingAttribute(
            "at least one of target-prefix, target-fqdn, target-uri or alias-name is required"
        )
    if scope.lifetime == 0:
        raise InvalidValue("a lifetime of 0 is invalid (RFC 9132 §4.4.1.1)")
    if efficacy_update:
        if scope.attack_status is None:
            raise MissingAttribute("an efficacy update needs attack-status (RFC 9132 §4.4.3)")
    else:
        if scope.lifetime is None:
            raise MissingAttribute("lifetime is mandatory in a mitigation request")
        if scope.attack_status is not None:
            raise InvalidValue(
                "attack-status belongs only in an efficacy update (PUT with an empty If-Match)"
            )
    return scope


def refuse_required_keys_not_acted_on(message: Message,
                                      acted_on: frozenset[int] = frozenset()) -> None:
    """For a server that terminates the request: the codec keeps registered keys we do not
    act on (so a gateway can relay them), but a comprehension-required one asks for
    something this server does not do, so it is refused like an unknown key (RFC 9132 §6)
    rather than silently ignored. ``acted_on``: keys the caller handles in a scope entry
    (the server core: RFC 9133's acl-list)."""
    if not isinstance(message, MitigationScope):
        return
    found: dict[int, str] = {}
    for extensions, handled in ((message.outer_extensions, frozenset()),
                                (message.extensions, frozenset()),
                                *((scope.extensions, acted_on) for scope in message.scope)):
        for key, _ in extensions:
            info = KEYS.get(key)
            if info is not None and info.comprehension_required and key not in handled:
                found[key] = f"{key} ({info.name}, RFC {info.rfc})"
    if found:
        raise RequiredKeysNotActedOn(found, (found[k] for k in sorted(found)))


def validate_config_request(message: Message) -> SignalConfig:
    """A session-configuration PUT body (RFC 9132 §4.5.2): current values only, at least one."""
    if not isinstance(message, SignalConfig):
        raise MalformedPayload("a session configuration body must be a signal-config")
    count = 0
    for set_name, config_set in (
        ("mitigating-config", message.mitigating_config),
        ("idle-config", message.idle_config),
    ):
        if config_set is None:
            continue
        for name, value in config_set.items():
            where = f"{set_name}/{name.replace('_', '-')}"
            if value.min_value is not None or value.max_value is not None:
                raise InvalidValue(f"{where}: min/max values are sent by servers only")
            if value.current_value is None:
                raise MissingAttribute(f"{where}: current-value is missing")
            count += 1
    if count == 0:
        raise MissingAttribute("a session configuration PUT needs at least one parameter")
    return message


def validate_heartbeat(message: Message) -> Heartbeat:
    if not isinstance(message, Heartbeat):
        raise MalformedPayload("a heartbeat body must be a heartbeat container")
    return message


def heartbeat_body(request: DotsRequest) -> Heartbeat:
    """The valid heartbeat a request carries (``decode_request_body`` and
    ``validate_heartbeat``); the errors of those. Every client sends one of two bodies
    (peer-hb-status true or false), so each distinct body is decoded once (the result is
    immutable); only valid ones are kept, and at most a few."""
    key = (request.content_format, request.payload)
    heartbeat = _heartbeats.get(key)
    if heartbeat is None:
        heartbeat = validate_heartbeat(decode_request_body(request))
        if len(_heartbeats) >= _HEARTBEATS:
            _heartbeats.clear()
        _heartbeats[key] = heartbeat
    return heartbeat


_heartbeats: dict[tuple[int | None, bytes], Heartbeat] = {}
_HEARTBEATS = 64
