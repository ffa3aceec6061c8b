"""The key table against the IANA "DOTS Signal Channel CBOR Key Values" registry, and the
keys we know but do not act on (RFC 9133, RFC 9244, RFC 9066, RFC 9362): they decode, keep
their value exactly as received, re-encode to the same bytes and read/write as JSON by name.

The registry below is copied from the RFCs' IANA tables (RFC 9132 Table 5 for 1-51; RFC 9133
§5/§7 for 52-53; RFC 9244 Tables 3-4 for 128-210; RFC 9066 and RFC 9362 for 32768+), not
from keys.py, so a wrong entry there shows up here.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest

from gateway.dots.codec import (
    cbor_to_json,
    decode_cbor,
    decode_message,
    encode_message,
    json_to_cbor,
    message_from_json,
    message_to_json,
    tree_from_cbor,
    tree_to_json,
)
from gateway.dots.errors import InvalidValue, MalformedPayload, RequiredKeysNotActedOn
from gateway.dots.keys import (
    BY_NAME,
    CHILDREN,
    KEYS,
    PARENTS,
    K,
    Kind,
    is_comprehension_optional,
)
from gateway.dots.model import MitigationScope, SignalConfig
from gateway.dots.validate import refuse_required_keys_not_acted_on

MAP, ARRAY, TEXT, UINT, TAG, SIMPLE = 5, 4, 3, 0, 6, 7
TM = "ietf-dots-telemetry"

# (key, registered name, CBOR major type(s), RFC)
REGISTRY: list[tuple[int, str, tuple[int, ...], int]] = [
    (1, "ietf-dots-signal-channel:mitigation-scope", (MAP,), 9132),
    (2, "scope", (ARRAY,), 9132),
    (3, "cdid", (TEXT,), 9132),
    (4, "cuid", (TEXT,), 9132),
    (5, "mid", (UINT,), 9132),
    (6, "target-prefix", (ARRAY,), 9132),
    (7, "target-port-range", (ARRAY,), 9132),
    (8, "lower-port", (UINT,), 9132),
    (9, "upper-port", (UINT,), 9132),
    (10, "target-protocol", (ARRAY,), 9132),
    (11, "target-fqdn", (ARRAY,), 9132),
    (12, "target-uri", (ARRAY,), 9132),
    (13, "alias-name", (ARRAY,), 9132),
    (14, "lifetime", (UINT, 1), 9132),
    (15, "mitigation-start", (UINT,), 9132),
    (16, "status", (UINT,), 9132),
    (17, "conflict-information", (MAP,), 9132),
    (18, "conflict-status", (UINT,), 9132),
    (19, "conflict-cause", (UINT,), 9132),
    (20, "retry-timer", (UINT,), 9132),
    (21, "conflict-scope", (MAP,), 9132),
    (22, "acl-list", (ARRAY,), 9132),
    (23, "acl-name", (TEXT,), 9132),
    (24, "acl-type", (TEXT,), 9132),
    (25, "bytes-dropped", (UINT,), 9132),
    (26, "bps-dropped", (UINT,), 9132),
    (27, "pkts-dropped", (UINT,), 9132),
    (28, "pps-dropped", (UINT,), 9132),
    (29, "attack-status", (UINT,), 9132),
    (30, "ietf-dots-signal-channel:signal-config", (MAP,), 9132),
    (31, "sid", (UINT,), 9132),
    (32, "mitigating-config", (MAP,), 9132),
    (33, "heartbeat-interval", (MAP,), 9132),
    (34, "max-value", (UINT,), 9132),
    (35, "min-value", (UINT,), 9132),
    (36, "current-value", (UINT,), 9132),
    (37, "missing-hb-allowed", (MAP,), 9132),
    (38, "max-retransmit", (MAP,), 9132),
    (39, "ack-timeout", (MAP,), 9132),
    (40, "ack-random-factor", (MAP,), 9132),
    (41, "max-value-decimal", (TAG,), 9132),
    (42, "min-value-decimal", (TAG,), 9132),
    (43, "current-value-decimal", (TAG,), 9132),
    (44, "idle-config", (MAP,), 9132),
    (45, "trigger-mitigation", (SIMPLE,), 9132),
    (46, "ietf-dots-signal-channel:redirected-signal", (MAP,), 9132),
    (47, "alt-server", (TEXT,), 9132),
    (48, "alt-server-record", (ARRAY,), 9132),
    (49, "ietf-dots-signal-channel:heartbeat", (MAP,), 9132),
    (50, "probing-rate", (MAP,), 9132),
    (51, "peer-hb-status", (SIMPLE,), 9132),
    (52, "activation-type", (UINT,), 9133),
    (53, "ietf-dots-signal-control:acl-list", (ARRAY,), 9133),
    (128, "tsid", (UINT,), 9244),
    (129, "telemetry", (ARRAY,), 9244),
    (130, "low-percentile", (TAG,), 9244),
    (131, "mid-percentile", (TAG,), 9244),
    (132, "high-percentile", (TAG,), 9244),
    (133, "unit-config", (ARRAY,), 9244),
    (134, "unit", (UINT,), 9244),
    (135, "unit-status", (SIMPLE,), 9244),
    (136, "total-pipe-capacity", (ARRAY,), 9244),
    (137, "link-id", (TEXT,), 9244),
    (138, "pre-or-ongoing-mitigation", (ARRAY,), 9244),
    (139, "total-traffic-normal", (ARRAY,), 9244),
    (140, "low-percentile-g", (UINT,), 9244),
    (141, "mid-percentile-g", (UINT,), 9244),
    (142, "high-percentile-g", (UINT,), 9244),
    (143, "peak-g", (UINT,), 9244),
    (144, "total-attack-traffic", (ARRAY,), 9244),
    (145, "total-traffic", (ARRAY,), 9244),
    (146, "total-connection-capacity", (ARRAY,), 9244),
    (147, "connection", (UINT,), 9244),
    (148, "connection-client", (UINT,), 9244),
    (149, "embryonic", (UINT,), 9244),
    (150, "embryonic-client", (UINT,), 9244),
    (151, "connection-ps", (UINT,), 9244),
    (152, "connection-client-ps", (UINT,), 9244),
    (153, "request-ps", (UINT,), 9244),
    (154, "request-client-ps", (UINT,), 9244),
    (155, "partial-request-max", (UINT,), 9244),
    (156, "partial-request-client-max", (UINT,), 9244),
    (157, "total-attack-connection", (MAP,), 9244),
    (158, "connection-c", (MAP,), 9244),
    (159, "embryonic-c", (MAP,), 9244),
    (160, "connection-ps-c", (MAP,), 9244),
    (161, "request-ps-c", (MAP,), 9244),
    (162, "attack-detail", (ARRAY,), 9244),
    (163, "id", (UINT,), 9244),
    (164, "attack-id", (UINT,), 9244),
    (165, "attack-description", (TEXT,), 9244),
    (166, "attack-severity", (UINT,), 9244),
    (167, "start-time", (UINT,), 9244),
    (168, "end-time", (UINT,), 9244),
    (169, "source-count", (MAP,), 9244),
    (170, "top-talker", (MAP,), 9244),
    (171, "spoofed-status", (SIMPLE,), 9244),
    (172, "partial-request-c", (MAP,), 9244),
    (173, "total-attack-connection-protocol", (ARRAY,), 9244),
    (174, "baseline", (ARRAY,), 9244),
    (175, "current-config", (MAP,), 9244),
    (176, "max-config-values", (MAP,), 9244),
    (177, "min-config-values", (MAP,), 9244),
    (178, "supported-unit-classes", (MAP,), 9244),
    (179, "server-originated-telemetry", (SIMPLE,), 9244),
    (180, "telemetry-notify-interval", (UINT,), 9244),
    (181, "tmid", (UINT,), 9244),
    (182, "measurement-interval", (UINT,), 9244),
    (183, "measurement-sample", (UINT,), 9244),
    (184, "talker", (ARRAY,), 9244),
    (185, "source-prefix", (TEXT,), 9244),
    (186, "mid-list", (ARRAY,), 9244),
    (187, "source-port-range", (ARRAY,), 9244),
    (188, "source-icmp-type-range", (ARRAY,), 9244),
    (189, "target", (MAP,), 9244),
    (190, "capacity", (UINT,), 9244),
    (191, "protocol", (UINT,), 9244),
    (192, "total-traffic-normal-per-protocol", (ARRAY,), 9244),
    (193, "total-traffic-normal-per-port", (ARRAY,), 9244),
    (194, "total-connection-capacity-per-port", (ARRAY,), 9244),
    (195, "total-traffic-protocol", (ARRAY,), 9244),
    (196, "total-traffic-port", (ARRAY,), 9244),
    (197, "total-attack-traffic-protocol", (ARRAY,), 9244),
    (198, "total-attack-traffic-port", (ARRAY,), 9244),
    (199, "total-attack-connection-port", (ARRAY,), 9244),
    (200, "port", (UINT,), 9244),
    (201, "supported-query-type", (ARRAY,), 9244),
    (202, "vendor-id", (UINT,), 9244),
    (203, f"{TM}:telemetry-setup", (MAP,), 9244),
    (204, f"{TM}:total-traffic", (ARRAY,), 9244),
    (205, f"{TM}:total-attack-traffic", (ARRAY,), 9244),
    (206, f"{TM}:total-attack-connection", (MAP,), 9244),
    (207, f"{TM}:attack-detail", (ARRAY,), 9244),
    (208, f"{TM}:telemetry", (MAP,), 9244),
    (209, "current-g", (UINT,), 9244),
    (210, "description-lang", (TEXT,), 9244),
    (32768, "ietf-dots-call-home:source-prefix", (ARRAY,), 9066),
    (32769, "ietf-dots-call-home:source-port-range", (ARRAY,), 9066),
    (32770, "ietf-dots-call-home:source-icmp-type-range", (ARRAY,), 9066),
    (32771, "lower-type", (UINT,), 9066),
    (32772, "upper-type", (UINT,), 9066),
    (32776, "ietf-dots-robust-trans:max-payloads", (MAP,), 9362),
    (32777, "ietf-dots-robust-trans:non-max-retransmit", (MAP,), 9362),
    (32778, "ietf-dots-robust-trans:non-timeout", (MAP,), 9362),
    (32779, "ietf-dots-robust-trans:non-receive-timeout", (MAP,), 9362),
    (32780, "ietf-dots-robust-trans:non-probing-wait", (MAP,), 9362),
    (32781, "ietf-dots-robust-trans:non-partial-wait", (MAP,), 9362),
]
#: The registrations say which rule applies: RFC 9132 and RFC 9133 keys are
#: comprehension-required (RFC 9133 §3.2.1), the others comprehension-optional.
REQUIRED_RFCS = {9132, 9133}


def test_every_registered_key_is_in_the_table_with_its_name_type_and_rfc() -> None:
    assert sorted(KEYS) == [key for key, *_ in REGISTRY]
    for key, name, majors, rfc in REGISTRY:
        info = KEYS[key]
        assert (info.name, info.kind.majors, info.rfc) == (name, majors, rfc), key


@pytest.mark.parametrize(("key", "rfc"), [(key, rfc) for key, _, _, rfc in REGISTRY])
def test_comprehension_rule_matches_the_registration_and_the_range(key: int, rfc: int) -> None:
    assert KEYS[key].comprehension_required is (rfc in REQUIRED_RFCS)
    assert is_comprehension_optional(key) is (rfc not in REQUIRED_RFCS)


def test_only_keys_of_rfc_9132_are_typed_by_the_model() -> None:
    assert {k for k, info in KEYS.items() if not info.opaque} == set(range(1, 52))


def test_names_are_unique_and_map_back() -> None:
    assert len(BY_NAME) == len(KEYS)
    assert all(BY_NAME[info.name] is info for info in KEYS.values())


def test_every_key_has_a_place_and_every_container_its_children() -> None:
    assert all(PARENTS[key] for key in KEYS)
    nested = {k for k, info in KEYS.items() if info.kind in (Kind.CONTAINER, Kind.LIST)}
    assert nested == set(CHILDREN) - {None}
    assert PARENTS[K.CONTROL_ACL_LIST] == {K.SCOPE}
    assert PARENTS[K.ACTIVATION_TYPE] == {K.CONTROL_ACL_LIST}
    assert PARENTS[K.ACL_NAME] == {K.ACL_LIST, K.CONTROL_ACL_LIST}  # RFC 9133 reuses key 23
    assert PARENTS[203] == PARENTS[208] == {None}  # the bodies of /tm-setup and /tm
    assert all(PARENTS[k] == {K.SCOPE} for k in (204, 205, 206, 207, 32768, 32769, 32770))
    assert all(PARENTS[k] == {K.MITIGATING_CONFIG, K.IDLE_CONFIG} for k in range(32776, 32782))


# --- RFC examples: JSON -> CBOR -> JSON, and the CBOR re-encodes to the same bytes ------------

# RFC 9133 Figure 8 (names of acl-list members in RFC 7951's simple form: same module).
RFC9133_FILTER_CONTROL = {
    "ietf-dots-signal-channel:mitigation-scope": {"scope": [{
        "target-prefix": ["2001:db8:6401::2/127"],
        "target-protocol": [17],
        "ietf-dots-signal-control:acl-list": [
            {"acl-name": "my-accept-list", "activation-type": "immediate"}],
        "lifetime": 3600,
    }]}
}
# RFC 9133 Figure 1: the diagnostic payload naming a failed ACL update.
RFC9133_FAILED_UPDATE = {
    "ietf-dots-signal-channel:mitigation-scope": {"scope": [{
        "mid": 123,
        "ietf-dots-signal-control:acl-list": [
            {"acl-name": "an-accept-list", "activation-type": "deactivate"}],
    }]}
}
# RFC 9244 Figure 45: an efficacy update with telemetry attributes.
RFC9244_EFFICACY = {
    "ietf-dots-signal-channel:mitigation-scope": {"scope": [{
        "alias-name": ["https1", "https2"],
        "attack-status": "under-attack",
        f"{TM}:total-attack-traffic": [{"unit": "megabit-ps", "mid-percentile-g": "900"}],
    }]}
}
# RFC 9244 Figure 47: a mitigation status with telemetry attributes.
RFC9244_STATUS = {
    "ietf-dots-signal-channel:mitigation-scope": {"scope": [{
        "mid": 12332,
        "mitigation-start": "1507818434",
        "alias-name": ["https1", "https2"],
        "lifetime": 1600,
        "status": "attack-successfully-mitigated",
        "bytes-dropped": "134334555",
        "bps-dropped": "43344",
        "pkts-dropped": "333334444",
        "pps-dropped": "432432",
        f"{TM}:total-attack-traffic": [{"unit": "megabit-ps", "mid-percentile-g": "752"}],
        f"{TM}:attack-detail": [
            {"vendor-id": 32473, "attack-id": 77, "source-count": {"peak-g": "12683"}}],
    }]}
}
EXAMPLES = [
    pytest.param(RFC9133_FILTER_CONTROL, id="rfc9133-fig8"),
    pytest.param(RFC9133_FAILED_UPDATE, id="rfc9133-fig1"),
    pytest.param(RFC9244_EFFICACY, id="rfc9244-fig45"),
    pytest.param(RFC9244_STATUS, id="rfc9244-fig47"),
]


@pytest.mark.parametrize("example", EXAMPLES)
def test_rfc_example_round_trips(example: dict[str, Any]) -> None:
    data = json_to_cbor(json.dumps(example))
    assert cbor_to_json(data) == example
    assert encode_message(decode_message(data)) == data


def test_rfc9133_example_in_cbor() -> None:
    scope = cbor2.loads(json_to_cbor(RFC9133_FILTER_CONTROL))[K.MITIGATION_SCOPE][K.SCOPE][0]
    assert scope[K.CONTROL_ACL_LIST] == [{K.ACL_NAME: "my-accept-list", K.ACTIVATION_TYPE: 2}]


def test_rfc9244_example_in_cbor() -> None:
    scope = cbor2.loads(json_to_cbor(RFC9244_STATUS))[K.MITIGATION_SCOPE][K.SCOPE][0]
    assert scope[205] == [{134: 8, 141: 752}]
    assert scope[207] == [{202: 32473, 164: 77, 169: {143: 12683}}]


def test_kept_keys_ride_in_the_scope_extensions() -> None:
    message = message_from_json(RFC9133_FILTER_CONTROL)
    assert isinstance(message, MitigationScope)
    assert message.scope[0].extensions == (
        (K.CONTROL_ACL_LIST, [{K.ACL_NAME: "my-accept-list", K.ACTIVATION_TYPE: 2}]),
    )


# --- every key we do not act on, in a message, both ways -------------------------------------


def _sample(info: Any) -> Any:
    kind = info.kind
    if kind is Kind.CONTAINER:
        return {}
    if kind is Kind.LIST:
        return [{}]
    if kind is Kind.LEAF_LIST:
        return ["192.0.2.0/24"] if info.item is Kind.STRING else [1]
    return {Kind.STRING: "x", Kind.BOOLEAN: True,
            Kind.DECIMAL64: cbor2.CBORTag(4, [-2, 150])}.get(kind, 1)


def _body_with(key: int, value: Any) -> dict[int, Any]:
    parents = PARENTS[key]
    scope: dict[int, Any] = {K.TARGET_PREFIX: ["192.0.2.0/24"], K.LIFETIME: 60}
    if K.SCOPE in parents:
        scope[key] = value
    elif parents & {K.MITIGATING_CONFIG}:
        return {K.SIGNAL_CONFIG: {K.MITIGATING_CONFIG: {key: value}}}
    elif K.CONTROL_ACL_LIST in parents:
        scope[K.CONTROL_ACL_LIST] = [{K.ACL_NAME: "a", key: value}]
    elif 32770 in parents:
        scope[32770] = [{key: value}]
    else:  # inside a telemetry subtree
        scope[205] = [{key: value}]
    return {K.MITIGATION_SCOPE: {K.SCOPE: [scope]}}


@pytest.mark.parametrize("key", [k for k, info in KEYS.items() if info.opaque
                                 and PARENTS[k] != {None}])
def test_each_key_we_do_not_act_on_round_trips(key: int) -> None:
    data = cbor2.dumps(_body_with(key, _sample(KEYS[key])), canonical=True)
    message = decode_message(data)
    assert encode_message(message) == data  # relayed unchanged
    rendered = message_to_json(message)
    assert KEYS[key].name in json.dumps(rendered)
    assert json_to_cbor(json.dumps(rendered)) == data


def test_telemetry_bodies_have_names_but_are_no_signal_channel_message() -> None:
    tree = {203: {180: 300, 179: True}}
    assert tree_to_json(tree) == {f"{TM}:telemetry-setup": {
        "telemetry-notify-interval": 300, "server-originated-telemetry": True}}
    with pytest.raises(MalformedPayload, match="found ietf-dots-telemetry:telemetry-setup"):
        decode_message(cbor2.dumps(tree))


def test_decimals_and_enumerations_of_kept_keys_use_their_json_forms() -> None:
    value = [{130: cbor2.CBORTag(4, [-2, 1234]), 134: 3, 166: 4}]
    data = cbor2.dumps(_body_with(205, value), canonical=True)
    scope = cbor_to_json(data)["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]
    assert scope[f"{TM}:total-attack-traffic"] == [
        {"low-percentile": "12.34", "unit": "byte-ps", "attack-severity": "high"}]
    assert json_to_cbor(cbor_to_json(data)) == data


# --- tolerance: empty arrays, misplaced or mistyped optional keys ------------------------------


@pytest.mark.parametrize("key", [K.CONTROL_ACL_LIST, 204, 205, 207, 32768, 32769])
def test_an_empty_array_under_a_registered_key_is_accepted_and_kept(key: int) -> None:
    data = cbor2.dumps(_body_with(key, []), canonical=True)
    message = decode_message(data)
    assert isinstance(message, MitigationScope)
    assert message.scope[0].extensions == ((key, []),)
    assert encode_message(message) == data


def test_empty_acl_list_in_json() -> None:
    example = {"ietf-dots-signal-channel:mitigation-scope": {"scope": [{
        "mid": 5, "target-prefix": ["192.0.2.0/24"], "lifetime": 60,
        "ietf-dots-signal-control:acl-list": []}]}}
    assert cbor_to_json(json_to_cbor(example)) == example


def test_empty_target_lists_are_still_refused() -> None:
    # Unchanged: an empty leaf-list of RFC 9132 is refused (test_validate.py).
    body = {K.MITIGATION_SCOPE: {K.SCOPE: [{K.TARGET_FQDN: [], K.ALIAS_NAME: ["a"]}]}}
    with pytest.raises(InvalidValue, match="target-fqdn is present but empty"):
        decode_message(cbor2.dumps(body))


def test_a_misplaced_optional_key_is_kept_like_an_unknown_one() -> None:
    data = cbor2.dumps({K.HEARTBEAT: {K.PEER_HB_STATUS: True, 200: {"any": [1]}}}, canonical=True)
    assert encode_message(decode_message(data)) == data


def test_a_mistyped_optional_key_is_kept_like_an_unknown_one() -> None:
    data = cbor2.dumps(_body_with(205, "not an array"), canonical=True)
    assert encode_message(decode_message(data)) == data


@pytest.mark.parametrize(
    ("body", "diagnostic"),
    [
        pytest.param(_body_with(K.CONTROL_ACL_LIST, {}), "expected CBOR major type 4",
                     id="acl-list-not-an-array"),
        pytest.param({K.HEARTBEAT: {K.PEER_HB_STATUS: True, K.CONTROL_ACL_LIST: []}},
                     "'acl-list' (key 53) is not allowed here", id="acl-list-misplaced"),
        pytest.param({K.MITIGATION_SCOPE: {K.SCOPE: [{K.ACTIVATION_TYPE: 1}]}},
                     "'activation-type' (key 52) is not allowed here", id="activation-type-alone"),
    ],
)
def test_required_keys_we_do_not_act_on_still_have_to_be_well_formed(
        body: dict[int, Any], diagnostic: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode_message(cbor2.dumps(body))
    assert diagnostic in caught.value.diagnostic


def test_kept_values_are_the_decoded_cbor_unchanged() -> None:
    value = [{23: "a", 52: 3, 60000: cbor2.CBORTag(1, 5), 99: b"\x00"}]
    data = cbor2.dumps(_body_with(K.CONTROL_ACL_LIST, value), canonical=True)
    tree = tree_from_cbor(decode_cbor(data))
    assert tree[K.MITIGATION_SCOPE][K.SCOPE][0][K.CONTROL_ACL_LIST] == value
    assert encode_message(decode_message(data)) == data


# --- a server that terminates the request does not silently ignore them --------------------


def test_a_server_refuses_required_keys_it_does_not_act_on() -> None:
    message = message_from_json(RFC9133_FILTER_CONTROL)
    with pytest.raises(RequiredKeysNotActedOn) as caught:
        refuse_required_keys_not_acted_on(message)
    assert caught.value.code.dotted == "4.00"
    assert caught.value.diagnostic == ("comprehension-required CBOR keys this server does not "
                                       "act on: 53 (ietf-dots-signal-control:acl-list, RFC 9133)")


def test_optional_keys_we_do_not_act_on_are_ignored_by_a_server() -> None:
    refuse_required_keys_not_acted_on(message_from_json(RFC9244_EFFICACY))
    config = decode_message(cbor2.dumps(_body_with(32776, {36: 2})))
    assert isinstance(config, SignalConfig)
    refuse_required_keys_not_acted_on(config)


# RFC 9244 §13.1 (IANA "DOTS Signal Channel CBOR Key Values"), in the order of its table:
# the draft's TBA1-TBA85 (TBA47 and TBA48 were never used) became 128-210 in that order. The
# numbers agree with go-dots' struct tags (82 of the 83 keys; it has no mid-list), the
# implementation issue 19 tested against; checked for issue 19 item 2.
RFC9244_IANA_ORDER = (
    "tsid telemetry low-percentile mid-percentile high-percentile unit-config unit unit-status "
    "total-pipe-capacity link-id pre-or-ongoing-mitigation total-traffic-normal "
    "low-percentile-g mid-percentile-g high-percentile-g peak-g total-attack-traffic "
    "total-traffic total-connection-capacity connection connection-client embryonic "
    "embryonic-client connection-ps connection-client-ps request-ps request-client-ps "
    "partial-request-max partial-request-client-max total-attack-connection connection-c "
    "embryonic-c connection-ps-c request-ps-c attack-detail id attack-id attack-description "
    "attack-severity start-time end-time source-count top-talker spoofed-status "
    "partial-request-c total-attack-connection-protocol baseline current-config "
    "max-config-values min-config-values supported-unit-classes server-originated-telemetry "
    "telemetry-notify-interval tmid measurement-interval measurement-sample talker "
    "source-prefix mid-list source-port-range source-icmp-type-range target capacity protocol "
    "total-traffic-normal-per-protocol total-traffic-normal-per-port "
    "total-connection-capacity-per-port total-traffic-protocol total-traffic-port "
    "total-attack-traffic-protocol total-attack-traffic-port total-attack-connection-port port "
    "supported-query-type vendor-id ietf-dots-telemetry:telemetry-setup "
    "ietf-dots-telemetry:total-traffic ietf-dots-telemetry:total-attack-traffic "
    "ietf-dots-telemetry:total-attack-connection ietf-dots-telemetry:attack-detail "
    "ietf-dots-telemetry:telemetry current-g description-lang"
).split()


def test_rfc9244_keys_are_the_iana_table_in_order() -> None:
    assert len(RFC9244_IANA_ORDER) == 83
    assert [KEYS[key].name for key in range(128, 211)] == RFC9244_IANA_ORDER
    assert all(KEYS[key].rfc == 9244 and not KEYS[key].comprehension_required
               for key in range(128, 211))
