"""The CBOR/JSON codec: key table, comprehension ranges, relaying of unknown optional keys,
and one test per way a body can be wrong (exception class, code and diagnostic).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import cbor2
import pytest

from gateway.dots.codec import (
    decode_cbor,
    decode_message,
    encode_message,
    message_from_json,
    message_to_json,
)
from gateway.dots.codes import (
    CONTENT_FORMAT_DOTS_CBOR,
    CONTENT_FORMAT_TEXT,
    AttackStatus,
    Code,
    ConflictCause,
    ConflictStatus,
    Status,
)
from gateway.dots.conflict import ConflictingRequest
from gateway.dots.errors import (
    DotsProtocolError,
    DotsUsageError,
    InvalidPath,
    InvalidValue,
    MalformedPayload,
    MethodNotAllowed,
    MissingAttribute,
    NotAuthorized,
    NotFound,
    ServiceUnavailable,
    UnacceptableConfig,
    UnknownRequiredKeys,
    UnsupportedContentFormat,
)
from gateway.dots.keys import (
    BY_NAME,
    CHILDREN,
    KEYS,
    MESSAGE_KINDS,
    MODULE,
    K,
    Kind,
    is_comprehension_optional,
)
from gateway.dots.message import DotsResponse
from gateway.dots.model import (
    AclEntry,
    ConflictInformation,
    ConflictScope,
    Heartbeat,
    MitigationScope,
    Scope,
    SignalConfig,
)

# --- helpers -----------------------------------------------------------------------------------

TAG_DECIMAL = 4


def dec(mantissa: int, exponent: int = -2) -> cbor2.CBORTag:
    return cbor2.CBORTag(TAG_DECIMAL, [exponent, mantissa])


def request(**scope: Any) -> dict[int, Any]:
    """``{mitigation-scope: {scope: [{...}]}}`` with the scope's keys given by YANG name."""
    return {K.MITIGATION_SCOPE: {K.SCOPE: [{K[name.upper()]: v for name, v in scope.items()}]}}


def config(param: int, values: dict[int, Any]) -> dict[int, Any]:
    return {K.SIGNAL_CONFIG: {K.MITIGATING_CONFIG: {param: values}}}


def dumps(tree: Any) -> bytes:
    return cbor2.dumps(tree, canonical=True)


def decode_error(data: bytes | Any, exc_type: type[DotsProtocolError]) -> DotsProtocolError:
    """Decode ``data`` (bytes, or a tree to dump first) and return the error it must raise."""
    payload = data if isinstance(data, bytes) else dumps(data)
    with pytest.raises(exc_type) as info:
        decode_message(payload)
    assert type(info.value) is exc_type
    return info.value


def json_error(obj: Any, exc_type: type[DotsProtocolError]) -> DotsProtocolError:
    with pytest.raises(exc_type) as info:
        message_from_json(obj)
    assert type(info.value) is exc_type
    return info.value


PREFIX = ["192.0.2.0/24"]


# --- the key table (RFC 9132 §6, Table 5) ------------------------------------------------------

TABLE_5_NAMES = [
    "ietf-dots-signal-channel:mitigation-scope",
    "scope",
    "cdid",
    "cuid",
    "mid",
    "target-prefix",
    "target-port-range",
    "lower-port",
    "upper-port",
    "target-protocol",
    "target-fqdn",
    "target-uri",
    "alias-name",
    "lifetime",
    "mitigation-start",
    "status",
    "conflict-information",
    "conflict-status",
    "conflict-cause",
    "retry-timer",
    "conflict-scope",
    "acl-list",
    "acl-name",
    "acl-type",
    "bytes-dropped",
    "bps-dropped",
    "pkts-dropped",
    "pps-dropped",
    "attack-status",
    "ietf-dots-signal-channel:signal-config",
    "sid",
    "mitigating-config",
    "heartbeat-interval",
    "max-value",
    "min-value",
    "current-value",
    "missing-hb-allowed",
    "max-retransmit",
    "ack-timeout",
    "ack-random-factor",
    "max-value-decimal",
    "min-value-decimal",
    "current-value-decimal",
    "idle-config",
    "trigger-mitigation",
    "ietf-dots-signal-channel:redirected-signal",
    "alt-server",
    "alt-server-record",
    "ietf-dots-signal-channel:heartbeat",
    "probing-rate",
    "peer-hb-status",
]


def test_key_table_has_exactly_the_51_keys_of_table_5() -> None:
    # The keys of later RFCs are in the table too (test_cbor_registry.py).
    assert sorted(k for k, info in KEYS.items() if info.rfc == 9132) == list(range(1, 52))


def test_key_names_are_those_of_table_5() -> None:
    assert [KEYS[k].name for k in range(1, 52)] == TABLE_5_NAMES


def test_names_map_back_to_keys() -> None:
    assert {name: info.key for name, info in BY_NAME.items() if info.rfc == 9132} == {
        name: i for i, name in enumerate(TABLE_5_NAMES, start=1)
    }


def test_only_the_four_top_level_containers_carry_the_module_prefix() -> None:
    prefixed = {info.key for info in KEYS.values() if info.name.startswith(f"{MODULE}:")}
    assert prefixed == {K.MITIGATION_SCOPE, K.SIGNAL_CONFIG, K.REDIRECTED_SIGNAL, K.HEARTBEAT}
    assert prefixed == MESSAGE_KINDS
    assert CHILDREN[None] - MESSAGE_KINDS == {203, 208}  # RFC 9244's /tm-setup and /tm bodies


def test_k_enum_names_follow_the_yang_names() -> None:
    for info in KEYS.values():
        if info.rfc == 9132:
            assert K[info.short_name.upper().replace("-", "_")] == info.key


def test_json_strings_are_the_table_5_string_leaves() -> None:
    # 64-bit numbers, enumerations, decimals and retry-timer are JSON strings (Table 5).
    expected = {15, 16, 18, 19, 20, 25, 26, 27, 28, 29, 41, 42, 43}
    assert {info.key for info in KEYS.values() if info.json_string and info.rfc == 9132} == expected


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (K.MID, Kind.UINT32),
        (K.LOWER_PORT, Kind.UINT16),
        (K.CURRENT_VALUE, Kind.UINT16),
        (K.MITIGATION_START, Kind.UINT64),
        (K.LIFETIME, Kind.LIFETIME),
        (K.CURRENT_VALUE_DECIMAL, Kind.DECIMAL64),
        (K.PEER_HB_STATUS, Kind.BOOLEAN),
        (K.TARGET_PROTOCOL, Kind.LEAF_LIST),
        (K.SCOPE, Kind.LIST),
        (K.ATTACK_STATUS, Kind.ENUM),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_key_kinds(key: int, kind: Kind) -> None:
    assert KEYS[key].kind is kind


def test_target_protocol_items_are_uint8() -> None:
    assert KEYS[K.TARGET_PROTOCOL].item is Kind.UINT8


def test_every_container_and_list_declares_its_children() -> None:
    nested = {k for k, info in KEYS.items() if info.kind in (Kind.CONTAINER, Kind.LIST)}
    assert nested == set(CHILDREN) - {None}


@pytest.mark.parametrize(
    ("key", "optional"),
    [
        (-1, False),
        (0, False),
        (1, False),
        (51, False),
        (127, False),
        (128, True),
        (200, True),
        (255, True),
        (256, False),
        (16383, False),
        (16384, True),
        (32768, True),
        (65535, True),
        (65536, False),
        (70000, False),
    ],
)
def test_comprehension_ranges(key: int, optional: bool) -> None:
    assert is_comprehension_optional(key) is optional


# --- unknown comprehension-optional keys are kept and relayed -----------------------------------

EXT = {240: [1, "x", b"\x00\xff", True, None, {"a": -5}], 40000: {1: 2}}


def _with_ext(node: dict[int, Any]) -> dict[int, Any]:
    return {**node, **EXT}


_PARAM = {K.CURRENT_VALUE: 30}
_SCOPE = {K.TARGET_PREFIX: PREFIX, K.LIFETIME: 3600}
_CONFLICT_SCOPE = {K.TARGET_PREFIX: PREFIX, K.ACL_LIST: [{K.ACL_NAME: "a"}]}
_CAUSE = {K.CONFLICT_CAUSE: 1}

RELAY_LEVELS = [
    pytest.param(
        _with_ext({K.HEARTBEAT: {K.PEER_HB_STATUS: True}}), id="top-level"
    ),
    pytest.param({K.MITIGATION_SCOPE: _with_ext({K.SCOPE: [_SCOPE]})}, id="mitigation-scope"),
    pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [_with_ext(_SCOPE)]}}, id="scope"),
    pytest.param(
        {K.MITIGATION_SCOPE: {K.SCOPE: [{**_SCOPE, K.TARGET_PORT_RANGE: [_with_ext({8: 80})]}]}},
        id="port-range",
    ),
    pytest.param(
        {K.MITIGATION_SCOPE: {K.SCOPE: [{K.CONFLICT_INFORMATION: _with_ext(_CAUSE)}]}},
        id="conflict-information",
    ),
    pytest.param(
        {
            K.MITIGATION_SCOPE: {
                K.SCOPE: [
                    {
                        K.CONFLICT_INFORMATION: {
                            **_CAUSE,
                            K.CONFLICT_SCOPE: _with_ext(_CONFLICT_SCOPE),
                        }
                    }
                ]
            }
        },
        id="conflict-scope",
    ),
    pytest.param(
        {K.SIGNAL_CONFIG: _with_ext({K.IDLE_CONFIG: {K.HEARTBEAT_INTERVAL: _PARAM}})},
        id="signal-config",
    ),
    pytest.param(
        {K.SIGNAL_CONFIG: {K.MITIGATING_CONFIG: _with_ext({K.HEARTBEAT_INTERVAL: _PARAM})}},
        id="mitigating-config",
    ),
    pytest.param(
        {K.SIGNAL_CONFIG: {K.IDLE_CONFIG: _with_ext({K.PROBING_RATE: _PARAM})}},
        id="idle-config",
    ),
    pytest.param(
        {K.SIGNAL_CONFIG: {K.IDLE_CONFIG: {K.HEARTBEAT_INTERVAL: _with_ext(_PARAM)}}},
        id="config-parameter",
    ),
    pytest.param({K.REDIRECTED_SIGNAL: _with_ext({K.ALT_SERVER: "a.example"})}, id="redirect"),
    pytest.param({K.HEARTBEAT: _with_ext({K.PEER_HB_STATUS: False})}, id="heartbeat"),
]


@pytest.mark.parametrize("tree", RELAY_LEVELS)
def test_unknown_optional_keys_are_re_encoded_unchanged(tree: dict[int, Any]) -> None:
    data = dumps(tree)
    assert encode_message(decode_message(data)) == data


def test_unknown_optional_keys_of_a_scope_are_in_its_extensions() -> None:
    message = decode_message(dumps({K.MITIGATION_SCOPE: {K.SCOPE: [_with_ext(_SCOPE)]}}))
    assert isinstance(message, MitigationScope)
    assert dict(message.scope[0].extensions) == EXT


def test_unknown_optional_keys_of_a_config_set_are_in_its_extensions() -> None:
    data = dumps({K.SIGNAL_CONFIG: {K.MITIGATING_CONFIG: _with_ext({})}})
    message = decode_message(data)
    assert isinstance(message, SignalConfig) and message.mitigating_config is not None
    assert dict(message.mitigating_config.extensions) == EXT


def test_extensions_do_not_take_part_in_equality() -> None:
    plain = decode_message(dumps({K.HEARTBEAT: {K.PEER_HB_STATUS: True}}))
    extended = decode_message(dumps({K.HEARTBEAT: _with_ext({K.PEER_HB_STATUS: True})}))
    assert plain == extended


def test_unknown_required_keys_inside_an_extension_value_are_not_inspected() -> None:
    # The value of an unknown optional key is opaque: we cannot know its structure.
    data = dumps({K.HEARTBEAT: {K.PEER_HB_STATUS: True, 240: {5: 1, 60: 2, 0: 3}}})
    assert decode_message(data) == Heartbeat(True)


def test_extension_written_as_a_json_number_name() -> None:
    message = message_from_json(
        {f"{MODULE}:heartbeat": {"peer-hb-status": True, "16384": ["x", 1]}}
    )
    assert isinstance(message, Heartbeat)
    assert message.extensions == ((16384, ["x", 1]),)
    assert message_to_json(message) == {
        f"{MODULE}:heartbeat": {"peer-hb-status": True, "16384": ["x", 1]}
    }


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        pytest.param(b"\x01\xff", "01ff", id="bytes-as-hex"),
        pytest.param(Decimal("1.50"), "1.50", id="decimal-as-string"),
        pytest.param(cbor2.CBORTag(999, [b"\x00"]), {"tag": 999, "value": ["00"]}, id="tag"),
        pytest.param({1: {2: [3]}}, {"1": {"2": [3]}}, id="int-keys-as-strings"),
    ],
)
def test_extension_values_in_json(value: Any, rendered: Any) -> None:
    message = Heartbeat(True, extensions=((240, value),))
    assert message_to_json(message)[f"{MODULE}:heartbeat"]["240"] == rendered


# Relayed values pass through cbor2's semantic decoders (and its tag_hook); some come back
# changed or cannot be encoded again.
RELAYED_VALUES = [
    pytest.param(12345678901234567890, id="uint64"),
    pytest.param(-(2**40), id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param("ünïcode", id="text"),
    pytest.param([[], {}, [b""]], id="nested-empty"),
    pytest.param(cbor2.CBORTag(4, [-2, 150]), id="tag-4-decimal"),
    pytest.param(cbor2.CBORTag(999, "opaque"), id="unknown-tag-999"),
    pytest.param(cbor2.CBORTag(1, 1507818434), id="tag-1-epoch"),
    pytest.param(
        cbor2.CBORTag(36, "Content-Type: text/plain\n\nhi"), id="tag-36-mime",
    ),
]  # fmt: skip


@pytest.mark.parametrize("value", RELAYED_VALUES)
def test_relayed_extension_value_is_re_encoded_unchanged(value: Any) -> None:
    data = dumps({K.HEARTBEAT: {K.PEER_HB_STATUS: True, 240: value}})
    assert encode_message(decode_message(data)) == data


def test_tagged_value_where_a_boolean_is_expected_is_malformed() -> None:
    decode_error({K.HEARTBEAT: {K.PEER_HB_STATUS: cbor2.CBORTag(999, True)}}, MalformedPayload)


# --- unknown comprehension-required keys --------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "key"),
    [
        pytest.param({K.HEARTBEAT: {K.PEER_HB_STATUS: True}, 0: 1}, 0, id="top-0"),
        pytest.param({K.HEARTBEAT: {K.PEER_HB_STATUS: True}, 54: 1}, 54, id="top-54"),
        pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [], 100: 1}}, 100, id="mitigation-scope"),
        pytest.param(
            {K.MITIGATION_SCOPE: {K.SCOPE: [{K.TARGET_PREFIX: PREFIX, 127: 1}]}}, 127, id="scope"
        ),
        pytest.param(
            {K.MITIGATION_SCOPE: {K.SCOPE: [{K.TARGET_PORT_RANGE: [{8: 1, 256: 0}]}]}},
            256,
            id="port-range",
        ),
        pytest.param(
            {K.MITIGATION_SCOPE: {K.SCOPE: [{K.CONFLICT_INFORMATION: {**_CAUSE, 16383: 1}}]}},
            16383,
            id="conflict-information",
        ),
        pytest.param(config(K.HEARTBEAT_INTERVAL, {K.CURRENT_VALUE: 1, 300: 1}), 300, id="param"),
        pytest.param(
            {K.SIGNAL_CONFIG: {K.IDLE_CONFIG: {70000: 1}}}, 70000, id="config-set-above-65535"
        ),
        pytest.param({K.HEARTBEAT: {K.PEER_HB_STATUS: True, -1: 1}}, -1, id="negative"),
    ],
)  # fmt: skip
def test_unknown_required_key_is_rejected(tree: dict[int, Any], key: int) -> None:
    error = decode_error(tree, UnknownRequiredKeys)
    assert error.code is Code.BAD_REQUEST
    assert error.keys == (key,)  # type: ignore[attr-defined]
    assert error.diagnostic == f"unknown comprehension-required CBOR keys: {key}"


def test_all_unknown_required_keys_are_listed_sorted() -> None:
    tree = {
        K.MITIGATION_SCOPE: {
            K.SCOPE: [
                {K.TARGET_PREFIX: PREFIX, 60: 1, 300: 2},
                {K.TARGET_PORT_RANGE: [{K.LOWER_PORT: 1, 0: 1}], 60: 3},
            ],
            70000: 1,
        },
        127: 1,
    }
    error = decode_error(tree, UnknownRequiredKeys)
    assert error.keys == (0, 60, 127, 300, 70000)  # type: ignore[attr-defined]
    assert error.diagnostic.endswith("keys: 0, 60, 127, 300, 70000")


def test_unknown_required_and_optional_keys_together_report_the_required_ones() -> None:
    error = decode_error(
        {K.HEARTBEAT: {K.PEER_HB_STATUS: True, 240: 1, 99: 1}}, UnknownRequiredKeys
    )
    assert error.keys == (99,)  # type: ignore[attr-defined]


# --- wrong CBOR types for each YANG type ---------------------------------------------------------

WRONG_TYPES = [
    pytest.param(request(mid="123"), "mid: expected an unsigned integer", id="string-for-uint32"),
    pytest.param(request(mid=-1), "mid: expected an unsigned integer <= 4294967295, got -1",
                 id="negative-uint32"),
    pytest.param(request(mid=2**32), "got 4294967296", id="uint32-overflow"),
    pytest.param(request(mid=1.0), "got a float", id="float-for-uint32"),
    pytest.param(request(mid=None), "got null", id="null-for-uint32"),
    pytest.param(request(mid=b"1"), "got a byte string", id="bytes-for-uint32"),
    pytest.param(request(mid=dec(150)), "got tag 4", id="decimal-for-uint32"),
    pytest.param(request(bytes_dropped=2**64), "bytes-dropped: expected an unsigned integer <= "
                 "18446744073709551615", id="uint64-overflow"),
    pytest.param(request(target_port_range=[{K.LOWER_PORT: True}]), "lower-port: expected an "
                 "unsigned integer <= 65535, got a boolean", id="bool-for-uint16"),
    pytest.param(request(target_port_range=[{K.LOWER_PORT: 65536}]), "lower-port: expected an "
                 "unsigned integer <= 65535, got 65536", id="lower-port-overflow"),
    pytest.param(request(target_port_range=[{K.LOWER_PORT: 1, K.UPPER_PORT: 70000}]),
                 "upper-port: expected an unsigned integer <= 65535", id="upper-port-overflow"),
    pytest.param(config(K.HEARTBEAT_INTERVAL, {K.CURRENT_VALUE: 65536}),
                 "current-value: expected an unsigned integer <= 65535",
                 id="current-value-overflow"),
    pytest.param(request(target_protocol=[6, 256]),
                 "target-protocol[1]: expected an unsigned integer <= 255, got 256",
                 id="uint8-overflow"),
    pytest.param(request(lifetime=-2), "lifetime: expected a uint32 or -1, got -2",
                 id="lifetime-minus-2"),
    pytest.param(request(lifetime=2**32), "lifetime: expected a uint32 or -1, got 4294967296",
                 id="lifetime-overflow"),
    pytest.param(request(lifetime="3600"), "lifetime: expected a uint32 or -1, got a text string",
                 id="lifetime-string"),
    pytest.param(request(lifetime=False), "got a boolean", id="lifetime-bool"),
    pytest.param(request(status=2**32), "status: expected an unsigned integer", id="enum-overflow"),
    pytest.param(request(attack_status="under-attack"), "attack-status: expected an unsigned",
                 id="label-for-enum"),
    pytest.param(request(trigger_mitigation=1), "trigger-mitigation: expected true or false, got "
                 "an integer", id="int-for-bool"),
    pytest.param({K.HEARTBEAT: {K.PEER_HB_STATUS: None}}, "peer-hb-status: expected true or false",
                 id="null-for-bool"),
    pytest.param(request(target_fqdn=[b"a.example"]), "target-fqdn[0]: expected a text string, "
                 "got a byte string", id="bytes-for-string"),
    pytest.param({K.REDIRECTED_SIGNAL: {K.ALT_SERVER: 5}}, "alt-server: expected a text string",
                 id="int-for-string"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: 2.0}),
                 "current-value-decimal: expected a decimal64 (CBOR tag 4 [-2, mantissa]), got a "
                 "float", id="float-for-decimal"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: 200}), "expected a decimal64",
                 id="int-for-decimal"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: "2.00"}), "expected a decimal64",
                 id="string-for-decimal"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: dec(2001, -3)}),
                 "at most 2 fraction digits expected, got 2.001", id="decimal-3-digits"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: dec(2**63)}),
                 "out of the decimal64 range", id="decimal-overflow"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: dec(1, 40)}),
                 "current-value-decimal: decimal out of the decimal64 range",
                 id="decimal-huge-exponent"),
    pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: {}}}, "scope: expected an array, got a map",
                 id="map-for-list"),
    pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [1]}}, "scope[0]: expected a CBOR map, got an "
                 "integer", id="int-for-list-entry"),
    pytest.param(request(target_prefix="192.0.2.0/24"), "target-prefix: expected an array, got a "
                 "text string", id="string-for-leaf-list"),
    pytest.param({K.MITIGATION_SCOPE: []}, "mitigation-scope: expected a CBOR map, got an array",
                 id="array-for-container"),
    pytest.param({K.HEARTBEAT: {"peer-hb-status": True}}, "heartbeat: map keys must be integers, "
                 "got a text string", id="text-key"),
    pytest.param({K.HEARTBEAT: {True: True}}, "map keys must be integers, got a boolean",
                 id="bool-key"),
]  # fmt: skip


@pytest.mark.parametrize(("tree", "fragment"), WRONG_TYPES)
def test_wrong_cbor_type_is_malformed(tree: Any, fragment: str) -> None:
    error = decode_error(tree, MalformedPayload)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


@pytest.mark.parametrize(
    "mantissa", [-(2**63), 2**63 - 1, 0], ids=["decimal64-min", "decimal64-max", "zero"]
)
def test_decimal64_bounds_are_accepted(mantissa: int) -> None:
    message = decode_message(dumps(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: dec(mantissa)})))
    assert isinstance(message, SignalConfig) and message.mitigating_config is not None
    assert message.mitigating_config.ack_timeout is not None
    assert message.mitigating_config.ack_timeout.current_value == Decimal(mantissa).scaleb(-2)


def test_decimal_with_fewer_fraction_digits_is_normalised() -> None:
    message = decode_message(dumps(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: dec(15, -1)})))
    assert isinstance(message, SignalConfig) and message.mitigating_config is not None
    value = message.mitigating_config.ack_timeout
    assert value is not None and str(value.current_value) == "1.50"


@pytest.mark.parametrize("lifetime", [-1, 1, 2**32 - 1], ids=["indefinite", "one", "uint32-max"])
def test_lifetime_bounds_are_accepted(lifetime: int) -> None:
    message = decode_message(dumps(request(target_prefix=PREFIX, lifetime=lifetime)))
    assert isinstance(message, MitigationScope)
    assert message.scope[0].lifetime == lifetime


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", 0), ("status", 9), ("attack_status", 3), ("attack_status", 0)],
)
def test_unknown_enum_number_is_invalid(field: str, value: int) -> None:
    error = decode_error(request(**{field: value}), InvalidValue)
    assert f"{field.replace('_', '-')} {value} is not a known value" in error.diagnostic


def test_unknown_conflict_cause_is_invalid() -> None:
    # 4 is registered (RFC 9244 overlapping-pipes); 5 is not (go-dots sends it for 4).
    tree = {K.MITIGATION_SCOPE: {K.SCOPE: [{K.CONFLICT_INFORMATION: {K.CONFLICT_CAUSE: 5}}]}}
    assert "conflict-cause 5" in decode_error(tree, InvalidValue).diagnostic


_HUGE = 10**5000  # more digits than int -> str conversion allows (sys.get_int_max_str_digits)


def test_huge_bignum_in_a_uint_field_is_malformed() -> None:
    decode_error(request(mid=_HUGE), MalformedPayload)


def test_huge_bignum_map_key_is_an_unknown_required_key() -> None:
    error = decode_error({K.HEARTBEAT: {K.PEER_HB_STATUS: True, _HUGE: 1}}, UnknownRequiredKeys)
    assert "-bit integer>" in error.diagnostic


def test_out_of_range_key_is_named_safely() -> None:
    error = decode_error({K.HEARTBEAT: {K.PEER_HB_STATUS: True, 2**64 - 1: 1}},
                         UnknownRequiredKeys)
    assert "18446744073709551615" in error.diagnostic


# --- known keys in the wrong place ---------------------------------------------------------------

MISPLACED = [
    pytest.param({K.LIFETIME: 3600, K.HEARTBEAT: {K.PEER_HB_STATUS: True}},
                 "message: 'lifetime' (key 14) is not allowed here", id="lifetime-at-top"),
    pytest.param({K.MITIGATION_SCOPE: {K.LIFETIME: 1, K.SCOPE: []}},
                 "mitigation-scope: 'lifetime' (key 14) is not allowed here", id="lifetime-in-ms"),
    pytest.param(request(target_port_range=[{K.LOWER_PORT: 1, K.MID: 1}]),
                 "target-port-range[0]: 'mid' (key 5) is not allowed here", id="mid-in-port-range"),
    pytest.param(request(peer_hb_status=True), "scope[0]: 'peer-hb-status'",
                 id="peer-hb-status-in-scope"),
    pytest.param({K.HEARTBEAT: {K.SCOPE: []}}, "heartbeat: 'scope' (key 2)", id="scope-in-hb"),
    pytest.param(config(K.HEARTBEAT_INTERVAL, {K.CURRENT_VALUE_DECIMAL: dec(1)}),
                 "heartbeat-interval: 'current-value-decimal'", id="decimal-in-int-param"),
    pytest.param(config(K.ACK_TIMEOUT, {K.CURRENT_VALUE: 2}), "ack-timeout: 'current-value'",
                 id="int-in-decimal-param"),
    pytest.param({K.SIGNAL_CONFIG: {K.HEARTBEAT: {}}},
                 "signal-config: 'heartbeat' (key 49) is not allowed here", id="hb-in-config"),
    pytest.param({K.SIGNAL_CONFIG: {K.HEARTBEAT_INTERVAL: {K.CURRENT_VALUE: 1}}},
                 "signal-config: 'heartbeat-interval'", id="param-outside-config-set"),
    pytest.param({K.REDIRECTED_SIGNAL: {K.ALT_SERVER: "a", K.CUID: "x"}},
                 "redirected-signal: 'cuid'", id="cuid-in-redirect"),
    pytest.param(request(target_prefix=PREFIX, acl_name="a"), "'acl-name' (key 23)",
                 id="acl-name-in-scope"),
]  # fmt: skip


@pytest.mark.parametrize(("tree", "fragment"), MISPLACED)
def test_known_key_in_the_wrong_place_is_malformed(tree: Any, fragment: str) -> None:
    error = decode_error(tree, MalformedPayload)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


# --- top-level structure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "found"),
    [
        pytest.param({}, "found none", id="empty-map"),
        pytest.param({240: 1}, "found none", id="extension-only"),
        pytest.param(
            {K.HEARTBEAT: {K.PEER_HB_STATUS: True}, K.MITIGATION_SCOPE: {K.SCOPE: []}},
            f"found {MODULE}:mitigation-scope, {MODULE}:heartbeat",
            id="two-containers",
        ),
    ],
)
def test_message_holds_exactly_one_container(tree: Any, found: str) -> None:
    error = decode_error(tree, MalformedPayload)
    assert "exactly one of mitigation-scope, signal-config" in error.diagnostic
    assert found in error.diagnostic


@pytest.mark.parametrize(
    ("obj", "got"),
    [([], "an array"), (5, "an integer"), ("x", "a text string"), (None, "null")],
    ids=["array", "int", "text", "null"],
)
def test_message_that_is_not_a_map_is_malformed(obj: Any, got: str) -> None:
    assert (
        decode_error(obj, MalformedPayload).diagnostic == f"message: expected a CBOR map, got {got}"
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(b"", "empty payload", id="empty"),
        pytest.param(b"\xff", "undecodable CBOR", id="break-byte"),
        pytest.param(b"\xa1\x18\x31", "undecodable CBOR", id="truncated"),
        pytest.param(b"\x1c", "undecodable CBOR", id="reserved-additional-info"),
        pytest.param(b"\x7f\x61a\x01\xff", "undecodable CBOR", id="bad-indefinite-text"),
        pytest.param(b"\xa1\x18\x31\xa1\x18\x33\x62\xc3\x28", "undecodable CBOR", id="bad-utf8"),
        pytest.param(b"hello world", "", id="ascii-text"),
    ],
)
def test_undecodable_bytes_are_malformed(data: bytes, fragment: str) -> None:
    error = decode_error(data, MalformedPayload)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


def test_deep_nesting_is_malformed() -> None:
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(MalformedPayload):
        decode_cbor(cbor2.dumps(deep))


def test_container_nested_in_itself_is_malformed() -> None:
    tree: Any = {K.CONFLICT_CAUSE: 1}
    for _ in range(20):
        tree = {K.CONFLICT_INFORMATION: tree}
    error = decode_error({K.MITIGATION_SCOPE: {K.SCOPE: [tree]}}, MalformedPayload)
    assert "conflict-information: 'conflict-information' (key 17) is not allowed" in (
        error.diagnostic
    )


def test_trailing_bytes_after_the_body_are_malformed() -> None:
    decode_error(dumps({K.HEARTBEAT: {K.PEER_HB_STATUS: True}}) + b"\x00", MalformedPayload)


# --- identifiers that belong in the Uri-Path -----------------------------------------------------


@pytest.mark.parametrize(
    "tree",
    [
        pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [], K.CUID: "x"}}, id="cuid-in-container"),
        pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [], K.CDID: "x"}}, id="cdid-in-container"),
        pytest.param(request(target_prefix=PREFIX, cuid="x"), id="cuid-in-scope"),
        pytest.param(request(target_prefix=PREFIX, cdid="x"), id="cdid-in-scope"),
    ],
)
def test_cuid_or_cdid_in_a_body_is_invalid(tree: Any) -> None:
    error = decode_error(tree, InvalidValue)
    assert error.code is Code.BAD_REQUEST
    assert "cuid and cdid must not appear in a message body" in error.diagnostic


def test_sid_in_a_config_body_is_invalid() -> None:
    error = decode_error({K.SIGNAL_CONFIG: {K.SID: 1}}, InvalidValue)
    assert error.code is Code.BAD_REQUEST
    assert "sid belongs in the Uri-Path" in error.diagnostic


# --- mandatory children --------------------------------------------------------------------------

MISSING = [
    pytest.param({K.MITIGATION_SCOPE: {}}, MalformedPayload, "mitigation-scope without scope",
                 id="scope"),
    pytest.param({K.REDIRECTED_SIGNAL: {K.ALT_SERVER_RECORD: ["2001:db8::1"]}}, MalformedPayload,
                 "without the mandatory alt-server", id="alt-server"),
    pytest.param({K.HEARTBEAT: {}}, MalformedPayload, "without the mandatory peer-hb-status",
                 id="peer-hb-status"),
    pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [{K.CONFLICT_INFORMATION: {
        K.CONFLICT_STATUS: 1}}]}}, MalformedPayload, "conflict-information without conflict-cause",
                 id="conflict-cause"),
    pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [{K.CONFLICT_INFORMATION: {
        **_CAUSE, K.CONFLICT_SCOPE: {K.ACL_LIST: [{K.ACL_TYPE: "ipv4-acl-type"}]}}}]}},
                 MalformedPayload, "missing mandatory acl-name", id="acl-name"),
    pytest.param(request(target_prefix=PREFIX, target_port_range=[{K.UPPER_PORT: 80}]),
                 InvalidValue, "target-port-range entry without lower-port", id="lower-port"),
]  # fmt: skip


@pytest.mark.parametrize(("tree", "exc_type", "fragment"), MISSING)
def test_missing_mandatory_child(
    tree: Any, exc_type: type[DotsProtocolError], fragment: str
) -> None:
    error = decode_error(tree, exc_type)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


def test_cuid_collision_with_a_conflict_status_is_invalid() -> None:
    tree = {
        K.MITIGATION_SCOPE: {
            K.SCOPE: [{K.CONFLICT_INFORMATION: {K.CONFLICT_CAUSE: 3, K.CONFLICT_STATUS: 1}}]
        }
    }
    assert "cuid-collision must not carry" in decode_error(tree, InvalidValue).diagnostic


# --- encoding ------------------------------------------------------------------------------------


def test_encoding_sorts_keys_whatever_the_construction_order() -> None:
    message = Heartbeat(True, extensions=((40000, 1), (240, 2)))
    assert encode_message(message) == bytes.fromhex("A1 18 31 A3 18 33 F5 18 F0 02 19 9C 40 01")


def test_encoding_something_that_is_not_a_message_is_refused() -> None:
    with pytest.raises((TypeError, DotsUsageError)):
        encode_message(Scope())  # type: ignore[arg-type]


def test_enums_encode_as_plain_numbers() -> None:
    message = MitigationScope((Scope(mid=1, status=Status.ATTACK_STOPPED),))
    assert encode_message(message) == bytes.fromhex("A1 01 A1 02 81 A2 05 01 10 03")


def test_full_conflict_information_round_trips() -> None:
    conflict = ConflictInformation(
        ConflictCause.OVERLAPPING_TARGETS,
        ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
        retry_timer=30,
        conflict_scope=ConflictScope(
            target_fqdn=("www.example.com",),
            acl_list=(AclEntry("acl-1", "ipv6-acl-type"), AclEntry("acl-2")),
            mid=7,
        ),
    )
    message = MitigationScope((Scope(mid=8, conflict_information=conflict),))
    assert decode_message(encode_message(message)) == message
    assert message_from_json(message_to_json(message)) == message


# --- JSON ----------------------------------------------------------------------------------------


def _json_request(**scope: Any) -> dict[str, Any]:
    return {f"{MODULE}:mitigation-scope": {"scope": [scope]}}


def test_json_unknown_attribute_is_malformed() -> None:
    error = json_error(
        _json_request(**{"target-prefix": PREFIX, "colour": "red"}), MalformedPayload
    )
    assert error.code is Code.BAD_REQUEST
    assert "scope: unknown attribute 'colour'" in error.diagnostic


def test_json_module_prefix_on_a_child_is_unknown() -> None:
    error = json_error(
        {f"{MODULE}:heartbeat": {f"{MODULE}:peer-hb-status": True}}, MalformedPayload
    )
    assert "unknown attribute" in error.diagnostic


def test_json_non_string_name_is_unknown() -> None:
    error = json_error({f"{MODULE}:heartbeat": {"peer-hb-status": True, 200: 1}}, MalformedPayload)
    assert "heartbeat: unknown attribute 200" in error.diagnostic


def test_json_top_level_name_without_module_prefix_is_accepted() -> None:
    assert message_from_json({"heartbeat": {"peer-hb-status": False}}) == Heartbeat(False)


def test_json_uint64_as_string_is_accepted() -> None:
    message = message_from_json(_json_request(**{"bytes-dropped": "18446744073709551615"}))
    assert isinstance(message, MitigationScope)
    assert message.scope[0].bytes_dropped == 2**64 - 1


def test_json_uint64_as_number_is_accepted() -> None:
    message = message_from_json(_json_request(**{"pps-dropped": 42}))
    assert isinstance(message, MitigationScope)
    assert message.scope[0].pps_dropped == 42


def test_json_uint64_renders_as_string() -> None:
    message = MitigationScope((Scope(mitigation_start=1, bps_dropped=2**64 - 1),))
    rendered = message_to_json(message)[f"{MODULE}:mitigation-scope"]["scope"][0]
    assert rendered == {"mitigation-start": "1", "bps-dropped": "18446744073709551615"}


def test_json_retry_timer_is_a_string() -> None:
    message = MitigationScope(
        (
            Scope(
                conflict_information=ConflictInformation(
                    ConflictCause.OVERLAPPING_TARGETS, retry_timer=30
                )
            ),
        )
    )
    rendered = message_to_json(message)[f"{MODULE}:mitigation-scope"]["scope"][0]
    assert rendered["conflict-information"]["retry-timer"] == "30"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("12a", "bytes-dropped: expected a number, got '12a'", id="letters"),
        pytest.param("-1", "expected a number", id="negative"),
        pytest.param(" 5", "expected a number", id="space"),
        pytest.param("+5", "expected a number", id="plus"),
        pytest.param("", "expected a number", id="empty"),
        pytest.param("٣", "expected a number", id="arabic-indic-digit"),
        pytest.param(str(2**64), "expected an unsigned integer <= 18446744073709551615",
                     id="overflow"),
        pytest.param(1.5, "got a float", id="float"),
    ],
)  # fmt: skip
def test_json_bad_uint64(value: Any, fragment: str) -> None:
    error = json_error(_json_request(**{"bytes-dropped": value}), MalformedPayload)
    assert fragment in error.diagnostic


def test_json_enum_labels_are_accepted() -> None:
    message = message_from_json(
        _json_request(**{"status": "attack-stopped", "attack-status": "under-attack"})
    )
    assert isinstance(message, MitigationScope)
    assert message.scope[0].status is Status.ATTACK_STOPPED
    assert message.scope[0].attack_status is AttackStatus.UNDER_ATTACK


def test_json_enum_as_number_is_accepted() -> None:
    message = message_from_json(_json_request(**{"attack-status": 2}))
    assert isinstance(message, MitigationScope)
    assert message.scope[0].attack_status is AttackStatus.ATTACK_SUCCESSFULLY_MITIGATED


@pytest.mark.parametrize(
    "label",
    ["Attack-Stopped", "attack_stopped", "ATTACK_STOPPED", "stopped", "", "3"],
)
def test_json_unknown_enum_label_is_malformed(label: str) -> None:
    error = json_error(_json_request(status=label), MalformedPayload)
    assert f"status: unknown label {label!r}" in error.diagnostic


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2.00", "2.00"), ("2", "2.00"), ("1.5", "1.50"), (2, "2.00"), (1.25, "1.25")],
)
def test_json_decimals(value: Any, expected: str) -> None:
    obj = {
        f"{MODULE}:signal-config": {
            "idle-config": {"ack-timeout": {"current-value-decimal": value}}
        }
    }
    message = message_from_json(obj)
    rendered = message_to_json(message)[f"{MODULE}:signal-config"]["idle-config"]["ack-timeout"]
    assert rendered == {"current-value-decimal": expected}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("2.001", "at most 2 fraction digits", id="three-digits"),
        pytest.param("two", "not a decimal: 'two'", id="word"),
        pytest.param("NaN", "at most 2 fraction digits", id="nan"),
        pytest.param("Infinity", "decimal out of range", id="infinity"),
        pytest.param("1e400", "decimal out of range", id="huge"),
        pytest.param(True, "expected a decimal64", id="bool"),
        pytest.param(None, "expected a decimal64", id="null"),
    ],
)
def test_json_bad_decimal(value: Any, fragment: str) -> None:
    obj = {
        f"{MODULE}:signal-config": {
            "idle-config": {"ack-timeout": {"current-value-decimal": value}}
        }
    }
    assert fragment in json_error(obj, MalformedPayload).diagnostic


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        pytest.param("{", "invalid JSON", id="truncated-text"),
        pytest.param("[]", "message: expected a JSON object", id="array-text"),
        pytest.param({f"{MODULE}:mitigation-scope": {"scope": {}}}, "scope: expected a JSON array",
                     id="object-for-list"),
        pytest.param(_json_request(**{"target-prefix": "192.0.2.0/24"}),
                     "target-prefix: expected a JSON array", id="string-for-leaf-list"),
        pytest.param({f"{MODULE}:heartbeat": []}, "heartbeat: expected a JSON object",
                     id="array-for-container"),
        pytest.param({}, "found none", id="empty-object"),
    ],
)  # fmt: skip
def test_json_structure_errors(obj: Any, fragment: str) -> None:
    assert fragment in json_error(obj, MalformedPayload).diagnostic


def test_json_deep_nesting_is_malformed() -> None:
    obj: Any = {"conflict-cause": 1}
    for _ in range(20):
        obj = {"conflict-information": obj}
    json_error(_json_request(**obj), MalformedPayload)


def test_json_non_ascii_digit_name_is_malformed() -> None:
    json_error({f"{MODULE}:heartbeat": {"peer-hb-status": True, "²": 1}}, MalformedPayload)


def test_json_uint64_string_with_too_many_digits_is_malformed() -> None:
    json_error(_json_request(**{"bytes-dropped": "9" * 5000}), MalformedPayload)


def test_json_decimal_integer_with_too_many_digits_is_malformed() -> None:
    obj = {
        f"{MODULE}:signal-config": {
            "idle-config": {"ack-timeout": {"current-value-decimal": _HUGE}}
        }
    }
    json_error(obj, MalformedPayload)


# --- errors render themselves as CoAP responses --------------------------------------------------

ERROR_CODES = [
    (MalformedPayload, Code.BAD_REQUEST, "4.00"),
    (InvalidValue, Code.BAD_REQUEST, "4.00"),
    (MissingAttribute, Code.BAD_REQUEST, "4.00"),
    (InvalidPath, Code.BAD_REQUEST, "4.00"),
    (NotAuthorized, Code.UNAUTHORIZED, "4.01"),
    (NotFound, Code.NOT_FOUND, "4.04"),
    (MethodNotAllowed, Code.METHOD_NOT_ALLOWED, "4.05"),
    (UnsupportedContentFormat, Code.UNSUPPORTED_CONTENT_FORMAT, "4.15"),
    (UnacceptableConfig, Code.UNPROCESSABLE_ENTITY, "4.22"),
    (ServiceUnavailable, Code.SERVICE_UNAVAILABLE, "5.03"),
]


@pytest.mark.parametrize(
    ("exc_type", "code", "dotted"), ERROR_CODES, ids=[e[0].__name__ for e in ERROR_CODES]
)
def test_error_renders_code_and_utf8_diagnostic(
    exc_type: type[DotsProtocolError], code: Code, dotted: str
) -> None:
    error = exc_type("naïve «diagnostic»")
    response = error.to_response()
    assert error.code is code and code.dotted == dotted
    assert response.code is code
    assert response.payload == "naïve «diagnostic»".encode()
    assert response.content_format == CONTENT_FORMAT_TEXT
    assert response.diagnostic == "naïve «diagnostic»"
    assert response.max_age is None
    assert repr(error) == f"{exc_type.__name__}({dotted}: 'naïve «diagnostic»')"


def test_unknown_required_keys_renders_the_key_list() -> None:
    response = UnknownRequiredKeys([300, 60, 60]).to_response()
    assert response.code is Code.BAD_REQUEST
    assert response.payload == b"unknown comprehension-required CBOR keys: 60, 300"


def test_service_unavailable_with_retry_after_sets_max_age() -> None:
    response = ServiceUnavailable("busy", retry_after=60).to_response()
    assert (response.code, response.max_age, response.payload) == (
        Code.SERVICE_UNAVAILABLE,
        60,
        b"busy",
    )


def test_conflicting_request_renders_a_cbor_conflict_information() -> None:
    conflict = ConflictInformation(ConflictCause.CUID_COLLISION)
    response = ConflictingRequest("cuid in use", conflict).to_response()
    assert response.code is Code.CONFLICT and response.code.dotted == "4.09"
    assert response.content_format == CONTENT_FORMAT_DOTS_CBOR
    assert response.diagnostic == ""
    assert decode_message(response.payload) == MitigationScope(
        (Scope(conflict_information=conflict),)
    )


def test_conflicting_request_body_is_figure_11() -> None:
    response = ConflictingRequest("x", ConflictInformation(ConflictCause.CUID_COLLISION))
    # {1: {2: [{17: {19: 3}}]}}
    assert response.to_response().payload == bytes.fromhex("A1 01 A1 02 81 A1 11 A1 13 03")


def test_conflicting_request_with_scope_round_trips() -> None:
    conflict = ConflictInformation(
        ConflictCause.OVERLAPPING_TARGETS,
        ConflictStatus.REQUEST_INACTIVE_OTHER_ACTIVE,
        retry_timer=120,
        conflict_scope=ConflictScope(target_fqdn=("a.example",), mid=12),
    )
    response = ConflictingRequest("overlap", conflict).to_response()
    message = decode_message(response.payload)
    assert isinstance(message, MitigationScope)
    assert message.scope[0].conflict_information == conflict


def test_response_with_cbor_body_has_no_diagnostic() -> None:
    response = DotsResponse.with_body(Code.CONTENT, b"\xa0", max_age=5)
    assert (response.content_format, response.diagnostic, response.max_age) == (
        CONTENT_FORMAT_DOTS_CBOR,
        "",
        5,
    )


@pytest.mark.parametrize(
    ("code", "success"),
    [(Code.CREATED, True), (Code.CONTENT, True), (Code.BAD_REQUEST, False),
     (Code.SERVICE_UNAVAILABLE, False)],
)  # fmt: skip
def test_code_is_success(code: Code, success: bool) -> None:
    assert code.is_success is success
