"""Property tests of the pure codec (hypothesis).

(a) Every valid message survives CBOR and JSON round trips, extensions included.
(b)-(e) Whatever a peer sends -- bytes, CBOR, JSON, Uri-Path segments -- either parses or
raises ``DotsProtocolError``; any other exception fails the test (style.md: "any input
either parses or raises the protocol error, nothing else").
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dots.codec import decode_message, encode_message, message_from_json, message_to_json
from gateway.dots.codes import AttackStatus, ConflictCause, ConflictStatus, Status
from gateway.dots.errors import DotsProtocolError
from gateway.dots.keys import BY_NAME, KEYS
from gateway.dots.model import (
    AclEntry,
    ConfigSet,
    ConfigValue,
    ConflictInformation,
    ConflictScope,
    Heartbeat,
    Message,
    MitigationScope,
    PortRange,
    RedirectedSignal,
    Scope,
    SignalConfig,
    parse_prefix,
)
from gateway.dots.tree import message_to_tree
from gateway.dots.uri import WELL_KNOWN, Resource, build_path, parse_path, parse_query
from gateway.dots.validate import (
    validate_config_request,
    validate_heartbeat,
    validate_mitigation_request,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- valid values --------------------------------------------------------------------------------


def uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _allowed_prefix(network: Any) -> bool:
    try:
        parse_prefix(str(network))
    except DotsProtocolError:
        return False
    return True


ipv4_prefixes = st.builds(
    lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
    st.ip_addresses(v=4),
    st.integers(8, 32),
)
ipv6_prefixes = st.builds(
    lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
    st.ip_addresses(v=6),
    st.integers(16, 128),
)
prefixes = (ipv4_prefixes | ipv6_prefixes).filter(_allowed_prefix)

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
fqdns = st.builds(lambda name, dot: name + dot, hostnames, st.sampled_from(["", "."]))
uris = st.builds(
    "{}://{}/{}".format,
    st.sampled_from(["http", "https", "coap", "coaps"]),
    hostnames,
    st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
)
port_ranges = st.integers(0, 65535).flatmap(
    lambda lower: st.builds(PortRange, st.just(lower), optional(st.integers(lower, 65535)))
)

# Relayed extension values: anything CBOR and JSON can carry without a tag.
extension_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.integers(0, 100) | st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
extension_keys = st.integers(128, 255) | st.integers(16384, 65535)
extensions = st.dictionaries(extension_keys, extension_values, max_size=2).map(
    lambda d: tuple(d.items())
)


def _tuples(strategy: st.SearchStrategy[Any], **kw: Any) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, max_size=3, **kw).map(tuple)


TARGETS = {
    "target_prefix": _tuples(prefixes, unique=True),
    "target_port_range": _tuples(port_ranges, unique_by=lambda r: r.lower_port),
    "target_protocol": _tuples(uint(8), unique=True),
    "target_fqdn": _tuples(fqdns),
    "target_uri": _tuples(uris),
    "alias_name": _tuples(st.text(min_size=1, max_size=10)),
}
lifetimes = st.just(-1) | st.integers(1, 2**32 - 1)

conflict_scopes = st.builds(
    ConflictScope,
    **TARGETS,
    acl_list=_tuples(
        st.builds(
            AclEntry, st.text(min_size=1, max_size=8), optional(st.text(min_size=1, max_size=8))
        )
    ),
    mid=optional(uint(32)),
)
conflicts = st.builds(ConflictInformation, st.just(ConflictCause.CUID_COLLISION)) | st.builds(
    ConflictInformation,
    st.sampled_from([ConflictCause.OVERLAPPING_TARGETS, ConflictCause.CONFLICT_WITH_ACCEPTLIST]),
    optional(st.sampled_from(ConflictStatus)),
    optional(uint(32)),
    optional(conflict_scopes),
)

request_scopes = st.builds(
    Scope,
    **TARGETS,
    lifetime=optional(lifetimes),
    trigger_mitigation=optional(st.booleans()),
    attack_status=optional(st.sampled_from(AttackStatus)),
    extensions=extensions,
)
response_scopes = st.builds(
    Scope,
    **TARGETS,
    lifetime=optional(lifetimes),
    trigger_mitigation=optional(st.booleans()),
    mid=optional(uint(32)),
    mitigation_start=optional(uint(64)),
    status=optional(st.sampled_from(Status)),
    conflict_information=optional(conflicts),
    bytes_dropped=optional(uint(64)),
    bps_dropped=optional(uint(64)),
    pkts_dropped=optional(uint(64)),
    pps_dropped=optional(uint(64)),
    extensions=extensions,
)
mitigation_scopes = st.builds(
    MitigationScope, _tuples(request_scopes | response_scopes), extensions=extensions
)

decimals = st.integers(-(2**63), 2**63 - 1).map(lambda m: Decimal(m).scaleb(-2))
int_values = st.builds(ConfigValue, optional(uint(16)), optional(uint(16)), optional(uint(16)))
decimal_values = st.builds(ConfigValue, optional(decimals), optional(decimals), optional(decimals))
config_sets = st.builds(
    ConfigSet,
    heartbeat_interval=optional(int_values),
    missing_hb_allowed=optional(int_values),
    probing_rate=optional(int_values),
    max_retransmit=optional(int_values),
    ack_timeout=optional(decimal_values),
    ack_random_factor=optional(decimal_values),
    extensions=extensions,
)
signal_configs = st.builds(
    SignalConfig, optional(config_sets), optional(config_sets), extensions=extensions
)
redirects = st.builds(RedirectedSignal, fqdns, _tuples(st.ip_addresses()), extensions=extensions)
heartbeats = st.builds(Heartbeat, st.booleans(), extensions=extensions)
messages = mitigation_scopes | signal_configs | redirects | heartbeats


# --- (a) round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [mitigation_scopes, signal_configs, redirects, heartbeats],
    ids=["mitigation-scope", "signal-config", "redirected-signal", "heartbeat"],
)
def test_cbor_round_trip(strategy: st.SearchStrategy[Message]) -> None:
    @FUZZ
    @given(strategy)
    def check(message: Message) -> None:
        decoded = decode_message(encode_message(message))
        assert decoded == message
        # Extensions do not take part in ==; compare the whole trees, extensions included.
        assert message_to_tree(decoded) == message_to_tree(message)

    check()


@pytest.mark.parametrize(
    "strategy",
    [mitigation_scopes, signal_configs, redirects, heartbeats],
    ids=["mitigation-scope", "signal-config", "redirected-signal", "heartbeat"],
)
def test_json_round_trip(strategy: st.SearchStrategy[Message]) -> None:
    @FUZZ
    @given(strategy)
    def check(message: Message) -> None:
        rendered = message_to_json(message)
        text = json.dumps(rendered)  # must be real JSON
        assert message_from_json(text) == message
        assert message_to_json(message_from_json(rendered)) == rendered

    check()


@FUZZ
@given(messages)
def test_encoding_is_deterministic(message: Message) -> None:
    data = encode_message(message)
    assert encode_message(decode_message(data)) == data


# --- arbitrary input raises only the protocol error ---------------------------------------------


def only_protocol_errors(call: Callable[[], Any]) -> Any:
    """Run ``call``; a DotsProtocolError is an answer, any other exception fails the test."""
    try:
        return call()
    except DotsProtocolError:
        return None


def decode_and_validate(data: bytes) -> None:
    message = only_protocol_errors(lambda: decode_message(data))
    if message is None:
        return
    for efficacy_update in (False, True):
        only_protocol_errors(
            lambda e=efficacy_update: validate_mitigation_request(message, efficacy_update=e)
        )
    only_protocol_errors(lambda: validate_config_request(message))
    only_protocol_errors(lambda: validate_heartbeat(message))


# (b) bytes


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    decode_and_validate(data)


@st.composite
def damaged_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        else:
            del data[at]
    return bytes(data)


@FUZZ
@given(damaged_encodings())
def test_damaged_encodings_raise_only_protocol_errors(data: bytes) -> None:
    decode_and_validate(data)


# (c) CBOR

TOP_LEVEL_KEYS = [1, 30, 46, 49]
cbor_keys = st.sampled_from(sorted(KEYS)) | st.integers(0, 70000) | st.text(max_size=3)


def cbor_objects(tags: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    scalars = (
        st.integers(-(2**70), 2**70)
        | st.integers(-(2**64), 2**64)
        | st.text(max_size=12)
        | st.binary(max_size=12)
        | st.floats()
        | st.booleans()
        | st.none()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(cbor_keys, children, max_size=4)
            | st.builds(cbor2.CBORTag, tags, children)
        ),
        max_leaves=25,
    )


any_tags = st.sampled_from([1, 2, 3, 4, 5, 271]) | st.integers(0, 2**16)
arbitrary_cbor = cbor_objects(any_tags)


# Values a DOTS field might plausibly hold, so that mutations often pass the type checks and
# reach the model and request checks behind them.
_DOTS_VALUES = (
    [-1, 0, 1, 3, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, True, False, "",
     "192.0.2.0/24", "127.0.0.1/32", "2001:db8::1", "a.example", "https://a.example/", "x",
     [], {}, [""], [80], [{8: 80}], [{8: 443, 9: 80}]]
)  # fmt: skip
_DOTS_TAGS = ((4, (-2, 150)), (4, (-3, 1)), (4, (-2, 2**64)), (1, 0))
# By index and copied on each draw: the values are mutable and a mutation may edit them.
dots_scalars = st.integers(0, len(_DOTS_VALUES) - 1).map(
    lambda i: copy.deepcopy(_DOTS_VALUES[i])
) | st.sampled_from(_DOTS_TAGS).map(
    lambda t: cbor2.CBORTag(t[0], list(t[1]) if isinstance(t[1], tuple) else t[1])
)


def _slots(tree: Any) -> list[tuple[Any, Any]]:
    """(parent, key) of every node below the root of a decoded CBOR or JSON tree."""
    found: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            found.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return found


def mutate(
    draw: st.DrawFn, tree: Any, keys: st.SearchStrategy[Any], values: st.SearchStrategy[Any]
) -> Any:
    """Replace, add or delete one to three nodes of ``tree`` (in place)."""
    for _ in range(draw(st.integers(1, 3))):
        # Deepest first: hypothesis favours small indices, and the leaves are where the
        # interesting checks are.
        slots = _slots(tree)[::-1]
        maps = [p[k] for p, k in slots if isinstance(p[k], dict)] + [tree]
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if action == "add" or not slots:
            draw(st.sampled_from(maps))[draw(keys)] = draw(values)
            continue
        parent, key = draw(st.sampled_from(slots))
        if action == "replace":
            parent[key] = draw(values)
        else:
            del parent[key]
    return tree


@st.composite
def mutated_trees(draw: st.DrawFn, objects: st.SearchStrategy[Any]) -> Any:
    """A valid message as a CBOR tree, with a few nodes replaced, added or deleted."""
    tree = cbor2.loads(encode_message(draw(messages)))
    return mutate(draw, tree, cbor_keys, dots_scalars | objects)


cbor_inputs = (
    arbitrary_cbor
    | st.dictionaries(st.sampled_from(TOP_LEVEL_KEYS), arbitrary_cbor, min_size=1, max_size=2)
    | mutated_trees(arbitrary_cbor)
    | st.builds(lambda v: cbor2.CBORTag(271, v), mutated_trees(arbitrary_cbor))
)


@FUZZ
@given(cbor_inputs)
def test_arbitrary_cbor_raises_only_protocol_errors(obj: Any) -> None:
    decode_and_validate(cbor2.dumps(obj))


# Every tag, 28/29 (shared values) and 36 (MIME) included: the codec keeps them raw.
relayable_tags = any_tags


@FUZZ
@given(mutated_trees(cbor_objects(relayable_tags)))
def test_accepted_cbor_can_be_relayed(obj: Any) -> None:
    # What the gateway accepts it must be able to send on; one pass normalises the encoding.
    message = only_protocol_errors(lambda: decode_message(cbor2.dumps(obj)))
    if message is None:
        return
    once = encode_message(message)
    again = decode_message(once)
    assert again == message
    assert encode_message(again) == once


# (d) JSON

json_names = st.sampled_from(sorted(BY_NAME)) | st.sampled_from(
    sorted(info.short_name for info in KEYS.values())
)
json_keys = json_names | st.text(max_size=6)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,4})?", fullmatch=True)
    | st.sampled_from(["attack-stopped", "under-attack", "cuid-collision", "2.00", "1.5", ""])
)
json_objects = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children,
                                                                      max_size=4),
    max_leaves=25,
)  # fmt: skip


@st.composite
def mutated_json(draw: st.DrawFn) -> Any:
    """A valid message in JSON form, with a few nodes replaced, added or deleted."""
    tree = message_to_json(draw(messages))
    return mutate(draw, tree, json_keys, json_scalars | json_objects)


json_inputs = (
    json_objects
    | st.dictionaries(st.sampled_from([KEYS[k].name for k in TOP_LEVEL_KEYS]), json_objects,
                      min_size=1, max_size=2)
    | mutated_json()
)  # fmt: skip


@FUZZ
@given(json_inputs)
def test_arbitrary_json_raises_only_protocol_errors(obj: Any) -> None:
    only_protocol_errors(lambda: message_from_json(obj))


@FUZZ
@given(st.text(max_size=200) | json_inputs.map(json.dumps))
def test_arbitrary_json_text_raises_only_protocol_errors(text: str) -> None:
    only_protocol_errors(lambda: message_from_json(text))


# (e) Uri-Path and Uri-Query

param_names = st.sampled_from(["cuid", "cdid", "mid", "sid", "c", "x", ""])
param_values = st.text(max_size=12) | st.from_regex(r"[+-]?[0-9]{0,12}", fullmatch=True)
segments = (
    st.text(max_size=20)
    | st.builds("{}={}".format, param_names, param_values)
    | st.sampled_from(["", "=", "mitigate", "config", "hb", ".well-known", "dots"])
)
paths = st.lists(segments, max_size=7) | st.builds(
    lambda resource, rest: [*WELL_KNOWN, resource, *rest],
    st.sampled_from(["mitigate", "config", "hb"]) | st.text(max_size=8),
    st.lists(segments, max_size=5),
)


@FUZZ
@given(paths)
def test_arbitrary_uri_path_raises_only_protocol_errors(path: list[str]) -> None:
    parsed = only_protocol_errors(lambda: parse_path(path))
    if parsed is not None:
        # Whatever parses names a resource that builds back to an equivalent path.
        assert parse_path(parsed.segments()) == parsed


@FUZZ
@given(st.lists(st.text(max_size=6) | st.builds("c={}".format, st.text(max_size=2)), max_size=3))
def test_arbitrary_uri_query_raises_only_protocol_errors(queries: list[str]) -> None:
    only_protocol_errors(lambda: parse_query(queries))


@FUZZ
@given(
    st.text(min_size=1, max_size=24),
    optional(st.text(min_size=1, max_size=24)),
    optional(uint(32)),
)
def test_built_mitigate_paths_parse_back(cuid: str, cdid: str | None, mid: int | None) -> None:
    built = build_path(Resource.MITIGATE, cdid=cdid, cuid=cuid, mid=mid)
    parsed = parse_path(built)
    assert (parsed.cdid, parsed.cuid, parsed.mid) == (cdid, cuid, mid)
