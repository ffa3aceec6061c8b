"""Request validation (gateway/dots/validate.py) and the field checks of the model, each with
the exact RFC 9132 response code; plus ``Targets.overlap``.

Bodies go through the whole decoder (CBOR bytes -> tree -> model -> request checks), so a
test shows what a peer sending that body gets back.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from typing import Any

import cbor2
import pytest

from gateway.dots.codec import decode_message
from gateway.dots.codes import (
    CONTENT_FORMAT_DOTS_CBOR,
    AttackStatus,
    Code,
    ConflictCause,
    ConflictStatus,
    Method,
    Status,
)
from gateway.dots.errors import (
    DotsProtocolError,
    InvalidValue,
    MalformedPayload,
    MissingAttribute,
    UnsupportedContentFormat,
)
from gateway.dots.keys import K
from gateway.dots.message import DotsRequest
from gateway.dots.model import (
    ConfigSet,
    ConfigValue,
    ConflictInformation,
    Heartbeat,
    MitigationScope,
    PortRange,
    RedirectedSignal,
    Scope,
    SignalConfig,
    Targets,
    check_uri,
    parse_prefix,
)
from gateway.dots.validate import (
    decode_request_body,
    is_efficacy_update,
    validate_config_request,
    validate_heartbeat,
    validate_mitigation_request,
)

PREFIX = ["192.0.2.0/24"]

# --- helpers -----------------------------------------------------------------------------------


def scope_tree(**fields: Any) -> dict[int, Any]:
    return {K[name.upper()]: value for name, value in fields.items()}


def body(*scopes: dict[int, Any]) -> bytes:
    return cbor2.dumps({K.MITIGATION_SCOPE: {K.SCOPE: list(scopes)}})


def mitigation(**fields: Any) -> bytes:
    """A one-scope mitigation body; fields by YANG name with ``_`` for ``-``."""
    return body(scope_tree(**fields))


def put(
    payload: bytes,
    *,
    content_format: int | None = CONTENT_FORMAT_DOTS_CBOR,
    if_match: tuple[bytes, ...] = (),
) -> DotsRequest:
    return DotsRequest(
        Method.PUT,
        (".well-known", "dots", "mitigate", "cuid=c", "mid=1"),
        payload=payload,
        content_format=content_format,
        if_match=if_match,
    )


def validate(payload: bytes, *, efficacy_update: bool = False) -> Scope:
    return validate_mitigation_request(decode_message(payload), efficacy_update=efficacy_update)


def error_of(
    payload: bytes, exc_type: type[DotsProtocolError], *, efficacy_update: bool = False
) -> DotsProtocolError:
    with pytest.raises(exc_type) as info:
        validate(payload, efficacy_update=efficacy_update)
    assert type(info.value) is exc_type
    assert info.value.code is Code.BAD_REQUEST
    return info.value


def config_error(tree: dict[int, Any], exc_type: type[DotsProtocolError]) -> DotsProtocolError:
    with pytest.raises(exc_type) as info:
        validate_config_request(decode_message(cbor2.dumps({K.SIGNAL_CONFIG: tree})))
    assert type(info.value) is exc_type
    assert info.value.code is Code.BAD_REQUEST
    return info.value


# --- Content-Format and body presence ----------------------------------------------------------


@pytest.mark.parametrize("content_format", [60, 0, 50, 272], ids=["cbor", "text", "json", "272"])
def test_other_content_format_is_unsupported(content_format: int) -> None:
    with pytest.raises(UnsupportedContentFormat) as info:
        decode_request_body(
            put(mitigation(target_prefix=PREFIX, lifetime=3600), content_format=content_format)
        )
    assert info.value.code is Code.UNSUPPORTED_CONTENT_FORMAT
    assert info.value.code.dotted == "4.15"
    assert f"Content-Format {content_format} is not application/dots+cbor" in info.value.diagnostic


@pytest.mark.parametrize("content_format", [CONTENT_FORMAT_DOTS_CBOR, None], ids=["271", "none"])
def test_dots_cbor_or_absent_content_format_is_decoded(content_format: int | None) -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=3600)
    message = decode_request_body(put(payload, content_format=content_format))
    assert message == decode_message(payload)


def test_missing_body_is_a_missing_attribute() -> None:
    with pytest.raises(MissingAttribute) as info:
        decode_request_body(put(b""))
    assert info.value.code is Code.BAD_REQUEST
    assert "needs an application/dots+cbor body" in info.value.diagnostic


def test_unsupported_content_format_is_checked_before_the_body() -> None:
    with pytest.raises(UnsupportedContentFormat):
        decode_request_body(put(b"", content_format=60))


# --- If-Match: the efficacy-update marker -------------------------------------------------------


@pytest.mark.parametrize(
    ("if_match", "expected"), [((), False), ((b"",), True)], ids=["absent", "one-empty"]
)
def test_efficacy_update_is_one_empty_if_match(if_match: tuple[bytes, ...], expected: bool) -> None:
    assert is_efficacy_update(put(b"", if_match=if_match)) is expected


@pytest.mark.parametrize(
    "if_match",
    [(b"x",), (b"\x00",), (b"", b""), (b"", b"etag")],
    ids=["non-empty", "zero-byte", "two-empty", "empty-and-etag"],
)
def test_if_match_with_a_value_is_invalid(if_match: tuple[bytes, ...]) -> None:
    with pytest.raises(InvalidValue) as info:
        is_efficacy_update(put(b"", if_match=if_match))
    assert info.value.code is Code.BAD_REQUEST
    assert "exactly one empty If-Match" in info.value.diagnostic


# --- mitigation requests -------------------------------------------------------------------------


def test_minimal_request_is_valid() -> None:
    scope = validate(mitigation(target_prefix=PREFIX, lifetime=3600))
    assert scope.target_prefix == (ipaddress.ip_network("192.0.2.0/24"),)
    assert scope.triggers_immediately


def test_indefinite_lifetime_is_accepted() -> None:
    assert validate(mitigation(target_prefix=PREFIX, lifetime=-1)).lifetime == -1


def test_trigger_mitigation_false_is_accepted() -> None:
    scope = validate(mitigation(target_prefix=PREFIX, lifetime=60, trigger_mitigation=False))
    assert scope.triggers_immediately is False


@pytest.mark.parametrize(
    "target",
    [
        {"target_prefix": ["2001:db8::/32"]},
        {"target_fqdn": ["www.example.com"]},
        {"target_uri": ["https://www.example.com/"]},
        {"alias_name": ["web-servers"]},
    ],
    ids=["prefix", "fqdn", "uri", "alias"],
)
def test_each_target_kind_alone_is_enough(target: dict[str, Any]) -> None:
    assert validate(mitigation(lifetime=3600, **target)).has_target()


def test_body_that_is_not_a_mitigation_scope_is_malformed() -> None:
    with pytest.raises(MalformedPayload) as info:
        validate_mitigation_request(Heartbeat(True), efficacy_update=False)
    assert "must be a mitigation-scope" in info.value.diagnostic


def test_two_scopes_are_invalid() -> None:
    payload = body(
        scope_tree(target_prefix=PREFIX, lifetime=1),
        scope_tree(target_fqdn=["a.example"], lifetime=1),
    )
    error = error_of(payload, InvalidValue)
    assert "exactly one scope entry, got 2" in error.diagnostic


def test_zero_scopes_are_invalid() -> None:
    assert "exactly one scope entry, got 0" in error_of(body(), InvalidValue).diagnostic


SERVER_ONLY = [
    pytest.param({"mid": 1}, "mid", id="mid"),
    pytest.param({"mitigation_start": 1507818434}, "mitigation-start", id="mitigation-start"),
    pytest.param({"status": 1}, "status", id="status"),
    pytest.param({"conflict_information": {K.CONFLICT_CAUSE: 3}}, "conflict-information",
                 id="conflict-information"),
    pytest.param({"bytes_dropped": 0}, "bytes-dropped", id="bytes-dropped"),
    pytest.param({"bps_dropped": 0}, "bps-dropped", id="bps-dropped"),
    pytest.param({"pkts_dropped": 0}, "pkts-dropped", id="pkts-dropped"),
    pytest.param({"pps_dropped": 0}, "pps-dropped", id="pps-dropped"),
    pytest.param({"mid": 1, "status": 2, "pps_dropped": 3}, "mid, status, pps-dropped",
                 id="several"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "named"), SERVER_ONLY)
def test_server_only_fields_in_a_request_are_invalid(fields: dict[str, Any], named: str) -> None:
    error = error_of(mitigation(target_prefix=PREFIX, lifetime=3600, **fields), InvalidValue)
    assert error.diagnostic == f"server-to-client attributes in a request: {named}"


@pytest.mark.parametrize(("fields", "named"), SERVER_ONLY)
def test_server_only_fields_are_invalid_in_an_efficacy_update(
    fields: dict[str, Any], named: str
) -> None:
    payload = mitigation(target_prefix=PREFIX, attack_status=1, **fields)
    assert named in error_of(payload, InvalidValue, efficacy_update=True).diagnostic


@pytest.mark.parametrize(
    "fields",
    [
        {"target_port_range": [{K.LOWER_PORT: 80}]},
        {"target_protocol": [6]},
        {"target_port_range": [{K.LOWER_PORT: 80}], "target_protocol": [6]},
        {},
    ],
    ids=["ports-only", "protocol-only", "ports-and-protocol", "nothing"],
)
def test_request_without_target_is_a_missing_attribute(fields: dict[str, Any]) -> None:
    error = error_of(mitigation(lifetime=3600, **fields), MissingAttribute)
    assert "at least one of target-prefix, target-fqdn, target-uri or alias-name" in (
        error.diagnostic
    )


@pytest.mark.parametrize(
    ("extra", "efficacy_update"),
    [({}, False), ({"attack_status": 1}, True)],
    ids=["request", "efficacy-update"],
)
def test_lifetime_zero_is_invalid(extra: dict[str, Any], efficacy_update: bool) -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=0, **extra)
    error = error_of(payload, InvalidValue, efficacy_update=efficacy_update)
    assert "a lifetime of 0 is invalid" in error.diagnostic


def test_missing_lifetime_is_a_missing_attribute() -> None:
    error = error_of(mitigation(target_prefix=PREFIX), MissingAttribute)
    assert "lifetime is mandatory" in error.diagnostic


def test_efficacy_update_without_lifetime_is_valid() -> None:
    scope = validate(mitigation(target_prefix=PREFIX, attack_status=2), efficacy_update=True)
    assert scope.attack_status is AttackStatus.ATTACK_SUCCESSFULLY_MITIGATED
    assert scope.lifetime is None


def test_efficacy_update_without_attack_status_is_a_missing_attribute() -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=3600)
    error = error_of(payload, MissingAttribute, efficacy_update=True)
    assert "an efficacy update needs attack-status" in error.diagnostic


def test_attack_status_without_if_match_is_invalid() -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=3600, attack_status=1)
    error = error_of(payload, InvalidValue)
    assert "attack-status belongs only in an efficacy update" in error.diagnostic


# --- target-prefix ------------------------------------------------------------------------------

BAD_PREFIXES = [
    pytest.param("127.0.0.1/32", "covers loopback, multicast or broadcast", id="loopback-v4"),
    pytest.param("127.0.0.0/8", "covers loopback", id="loopback-net"),
    pytest.param("::1/128", "covers loopback", id="loopback-v6"),
    pytest.param("::ffff:127.0.0.1/128", "covers loopback", id="loopback-v4-mapped"),
    pytest.param("224.0.0.0/4", "covers loopback, multicast", id="multicast-v4"),
    pytest.param("239.1.2.3/32", "covers loopback, multicast", id="multicast-v4-host"),
    pytest.param("ff02::1/128", "covers loopback, multicast", id="multicast-v6"),
    pytest.param("ff00::/8", "covers loopback, multicast", id="multicast-v6-net"),
    pytest.param("255.255.255.255/32", "covers loopback, multicast or broadcast", id="broadcast"),
    pytest.param("0.0.0.0/0", "covers loopback", id="everything-v4"),
    pytest.param("::/0", "covers loopback", id="everything-v6"),
    pytest.param("192.0.2.1", "is not in CIDR notation (address/length)", id="no-length"),
    pytest.param("2001:db8::1", "not in CIDR notation", id="no-length-v6"),
    pytest.param("garbage", "not in CIDR notation", id="garbage"),
    pytest.param("garbage/24", "is not a valid IP prefix", id="garbage-with-length"),
    pytest.param("192.0.2.0/33", "is not a valid IP prefix", id="v4-length-33"),
    pytest.param("2001:db8::/129", "is not a valid IP prefix", id="v6-length-129"),
    pytest.param("192.0.2.0/", "is not a valid IP prefix", id="empty-length"),
    pytest.param("192.0.2.0/-1", "is not a valid IP prefix", id="negative-length"),
    pytest.param("192.0.2.0/24/1", "is not a valid IP prefix", id="two-slashes"),
    pytest.param("", "target-prefix contains an empty value", id="empty"),
]  # fmt: skip


@pytest.mark.parametrize(("prefix", "fragment"), BAD_PREFIXES)
def test_invalid_prefix(prefix: str, fragment: str) -> None:
    error = error_of(
        mitigation(target_prefix=["198.51.100.0/24", prefix], lifetime=60), InvalidValue
    )
    assert fragment in error.diagnostic


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.5/24", "192.0.2.0/24"),
        ("2001:db8:6401::1/48", "2001:db8:6401::/48"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("192.0.2.1/32", "192.0.2.1/32"),
        ("126.255.255.255/32", "126.255.255.255/32"),
        ("128.0.0.0/32", "128.0.0.0/32"),
        ("223.255.255.255/32", "223.255.255.255/32"),
        ("255.255.255.254/32", "255.255.255.254/32"),
    ],
)
def test_prefix_is_canonicalised(text: str, canonical: str) -> None:
    scope = validate(mitigation(target_prefix=[text], lifetime=60))
    assert [str(p) for p in scope.target_prefix] == [canonical]


def test_prefixes_equal_after_canonicalisation_are_duplicates() -> None:
    payload = mitigation(target_prefix=["192.0.2.5/24", "192.0.2.0/24"], lifetime=60)
    assert "target-prefix lists 192.0.2.0/24 twice" in error_of(payload, InvalidValue).diagnostic


def test_parse_prefix_returns_a_network() -> None:
    assert parse_prefix("2001:db8::7/64") == ipaddress.ip_network("2001:db8::/64")


# --- ports and protocols ------------------------------------------------------------------------


def test_port_range_with_upper_below_lower_is_invalid() -> None:
    payload = mitigation(
        target_prefix=PREFIX, lifetime=60, target_port_range=[{K.LOWER_PORT: 443, K.UPPER_PORT: 80}]
    )
    error = error_of(payload, InvalidValue)
    assert "upper-port 80 is lower than lower-port 443" in error.diagnostic


def test_port_range_of_one_port_is_valid() -> None:
    payload = mitigation(
        target_prefix=PREFIX,
        lifetime=60,
        target_port_range=[
            {K.LOWER_PORT: 0, K.UPPER_PORT: 0},
            {K.LOWER_PORT: 1024, K.UPPER_PORT: 65535},
        ],
    )
    assert validate(payload).target_port_range == (PortRange(0, 0), PortRange(1024, 65535))


def test_duplicate_lower_port_is_invalid() -> None:
    payload = mitigation(
        target_prefix=PREFIX,
        lifetime=60,
        target_port_range=[{K.LOWER_PORT: 80}, {K.LOWER_PORT: 80, K.UPPER_PORT: 90}],
    )
    error = error_of(payload, InvalidValue)
    assert "target-port-range lower-port lists 80 twice" in error.diagnostic


def test_protocol_256_is_malformed_on_the_wire() -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=60, target_protocol=[256])
    with pytest.raises(MalformedPayload) as info:
        validate(payload)
    assert info.value.code is Code.BAD_REQUEST
    assert "target-protocol[0]: expected an unsigned integer <= 255" in info.value.diagnostic


def test_duplicate_protocols_are_invalid() -> None:
    payload = mitigation(target_prefix=PREFIX, lifetime=60, target_protocol=[6, 17, 6])
    assert "target-protocol lists 6 twice" in error_of(payload, InvalidValue).diagnostic


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"lower_port": -1}, "lower-port -1 is not a port number", id="lower-neg"),
        pytest.param({"lower_port": 65536}, "lower-port 65536", id="lower-big"),
        pytest.param({"lower_port": 1, "upper_port": 65536}, "upper-port 65536", id="upper-big"),
        pytest.param({"lower_port": 2, "upper_port": 1}, "lower than lower-port", id="reversed"),
    ],
)
def test_port_range_constructor_checks(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment):
        PortRange(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"target_protocol": (256,)}, "target-protocol 256 is outside 0-255",
                     id="protocol-256"),
        pytest.param({"target_protocol": (-1,)}, "outside 0-255", id="protocol-negative"),
        pytest.param({"target_protocol": (6, 6)}, "lists 6 twice", id="protocol-twice"),
        pytest.param({"alias_name": ("",)}, "alias-name contains an empty value",
                     id="empty-alias"),
        pytest.param({"target_fqdn": ("a b",)}, "not a valid domain name", id="fqdn"),
        pytest.param({"target_uri": ("nope",)}, "not a valid URI", id="uri"),
    ],
)  # fmt: skip
def test_targets_constructor_checks(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment):
        Targets(**kwargs)


@pytest.mark.parametrize("lifetime", [-2, 2**32], ids=["minus-2", "uint32-overflow"])
def test_scope_constructor_checks_lifetime(lifetime: int) -> None:
    with pytest.raises(InvalidValue, match=f"lifetime {lifetime} is neither -1 nor a uint32"):
        Scope(lifetime=lifetime)


# --- FQDN and URI -------------------------------------------------------------------------------

BAD_FQDNS = [
    pytest.param("a" * 64 + ".example", id="label-64"),
    pytest.param("exa mple.com", id="space"),
    pytest.param(" example.com", id="leading-space"),
    pytest.param("-example.com", id="leading-hyphen"),
    pytest.param("example-.com", id="trailing-hyphen"),
    pytest.param("a..example", id="empty-label"),
    pytest.param(".", id="root"),
    pytest.param(".example", id="leading-dot"),
    pytest.param("ex*ample.com", id="star"),
    pytest.param("ex\u00e4mple.com", id="non-ascii"),
    pytest.param("www.example.com/", id="slash"),
    pytest.param(".".join(["a" * 63] * 4), id="longer-than-253"),
]


@pytest.mark.parametrize("fqdn", BAD_FQDNS)
def test_invalid_fqdn(fqdn: str) -> None:
    error = error_of(mitigation(target_fqdn=[fqdn], lifetime=60), InvalidValue)
    assert f"target-fqdn {fqdn!r} is not a valid domain name" in error.diagnostic


def test_empty_fqdn_is_an_empty_value() -> None:
    error = error_of(mitigation(target_fqdn=[""], lifetime=60), InvalidValue)
    assert "target-fqdn contains an empty value" in error.diagnostic


@pytest.mark.parametrize(
    "fqdn",
    ["www.example.com", "www.example.com.", "a" * 63 + ".example", "_dots._udp.example",
     "xn--bcher-kva.example", "localhost", "1.2.3.4.in-addr.example", "A-B.Example"],
)  # fmt: skip
def test_valid_fqdn(fqdn: str) -> None:
    assert validate(mitigation(target_fqdn=[fqdn], lifetime=60)).target_fqdn == (fqdn,)


BAD_URIS = [
    pytest.param("www.example.com/path", "is not a valid URI", id="no-scheme"),
    pytest.param("//www.example.com/", "is not a valid URI", id="scheme-relative"),
    pytest.param("1http://www.example.com/", "is not a valid URI", id="scheme-starts-with-digit"),
    pytest.param("http://exa mple.com/", "is not a valid URI", id="space"),
    pytest.param("http://example.com/\n", "is not a valid URI", id="newline"),
    pytest.param("http://example.com/\x00", "is not a valid URI", id="nul"),
    pytest.param("http://", "has no host to resolve", id="no-host"),
    pytest.param("http:///path", "has no host", id="empty-authority"),
    pytest.param("urn:isbn:0451450523", "has no host", id="urn"),
    pytest.param("mailto:user@example.com", "has no host", id="mailto"),
    pytest.param("http://[2001:db8::1/", "has no host", id="broken-ipv6-literal"),
    pytest.param("http:", "is not a valid URI", id="scheme-only"),
]


@pytest.mark.parametrize(("uri", "fragment"), BAD_URIS)
def test_invalid_uri(uri: str, fragment: str) -> None:
    error = error_of(mitigation(target_uri=[uri], lifetime=60), InvalidValue)
    assert f"target-uri {uri!r} {fragment}" in error.diagnostic


@pytest.mark.parametrize(
    "uri",
    ["https://www.example.com/", "http://www.example.com:8080/a?b#c", "coaps://[2001:db8::1]:5684",
     "ftp://user@192.0.2.1/file"],
)  # fmt: skip
def test_valid_uri(uri: str) -> None:
    assert check_uri(uri) == uri


# --- empty values and empty arrays (RFC 9132 §4.4.1.1) ------------------------------------------


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("target_prefix", ["192.0.2.0/24", ""]),
        ("target_fqdn", ["a.example", ""]),
        ("target_uri", ["https://a.example/", ""]),
        ("alias_name", ["web", ""]),
    ],
)
def test_empty_string_in_a_leaf_list_is_invalid(field: str, values: list[str]) -> None:
    error = error_of(mitigation(lifetime=60, **{field: values}), InvalidValue)
    assert f"{field.replace('_', '-')} contains an empty value" in error.diagnostic


@pytest.mark.parametrize(
    "field",
    ["target_prefix", "target_port_range", "target_protocol", "target_fqdn", "target_uri",
     "alias_name"],
)  # fmt: skip
def test_empty_array_is_invalid(field: str) -> None:
    fields: dict[str, Any] = {"alias_name": ["a"], field: []}
    error = error_of(mitigation(lifetime=60, **fields), InvalidValue)
    assert f"{field.replace('_', '-')} is present but empty" in error.diagnostic


def test_empty_alt_server_record_is_invalid() -> None:
    payload = cbor2.dumps(
        {K.REDIRECTED_SIGNAL: {K.ALT_SERVER: "a.example", K.ALT_SERVER_RECORD: []}}
    )
    with pytest.raises(InvalidValue, match="alt-server-record is present but empty"):
        decode_message(payload)


@pytest.mark.parametrize(
    ("server", "record", "fragment"),
    [
        pytest.param("", ["2001:db8::1"], "alt-server '' is not a valid domain name", id="empty"),
        pytest.param("a b", [], "alt-server 'a b'", id="space"),
        pytest.param("a.example", ["2001:db8::1/128"], "'2001:db8::1/128' is not an IP address",
                     id="prefix-as-record"),
        pytest.param("a.example", ["alt.example"], "is not an IP address", id="name-as-record"),
    ],
)  # fmt: skip
def test_invalid_redirect(server: str, record: list[str], fragment: str) -> None:
    node: dict[int, Any] = {K.ALT_SERVER: server}
    if record:
        node[K.ALT_SERVER_RECORD] = record
    with pytest.raises(InvalidValue, match=fragment):
        decode_message(cbor2.dumps({K.REDIRECTED_SIGNAL: node}))


# --- session configuration PUT (RFC 9132 §4.5.2) -----------------------------------------------


def test_config_put_with_current_values_is_valid() -> None:
    tree = {K.IDLE_CONFIG: {K.HEARTBEAT_INTERVAL: {K.CURRENT_VALUE: 0}}}
    message = validate_config_request(decode_message(cbor2.dumps({K.SIGNAL_CONFIG: tree})))
    assert message.idle_config == ConfigSet(heartbeat_interval=ConfigValue(0))
    assert message.mitigating_config is None


@pytest.mark.parametrize(
    ("param", "values", "where"),
    [
        pytest.param(K.HEARTBEAT_INTERVAL, {K.CURRENT_VALUE: 30, K.MIN_VALUE: 15},
                     "heartbeat-interval", id="min-value"),
        pytest.param(K.MAX_RETRANSMIT, {K.CURRENT_VALUE: 3, K.MAX_VALUE: 15},
                     "max-retransmit", id="max-value"),
        pytest.param(K.ACK_TIMEOUT, {K.CURRENT_VALUE_DECIMAL: Decimal("2.00"),
                                     K.MAX_VALUE_DECIMAL: Decimal("30.00")},
                     "ack-timeout", id="max-value-decimal"),
        pytest.param(K.ACK_RANDOM_FACTOR, {K.MIN_VALUE_DECIMAL: Decimal("1.10")},
                     "ack-random-factor", id="min-only"),
    ],
)  # fmt: skip
def test_config_put_with_min_or_max_is_invalid(
    param: int, values: dict[int, Any], where: str
) -> None:
    error = config_error({K.MITIGATING_CONFIG: {param: values}}, InvalidValue)
    assert error.diagnostic == f"mitigating-config/{where}: min/max values are sent by servers only"


@pytest.mark.parametrize("param", [K.PROBING_RATE, K.ACK_TIMEOUT], ids=["int", "decimal"])
def test_config_put_without_current_value_is_a_missing_attribute(param: int) -> None:
    error = config_error({K.IDLE_CONFIG: {param: {}}}, MissingAttribute)
    assert "idle-config/" in error.diagnostic
    assert "current-value is missing" in error.diagnostic


@pytest.mark.parametrize(
    "tree",
    [{}, {K.MITIGATING_CONFIG: {}}, {K.MITIGATING_CONFIG: {}, K.IDLE_CONFIG: {}}],
    ids=["no-set", "empty-set", "two-empty-sets"],
)
def test_config_put_without_any_parameter_is_a_missing_attribute(tree: dict[int, Any]) -> None:
    error = config_error(tree, MissingAttribute)
    assert "needs at least one parameter" in error.diagnostic


def test_config_body_that_is_not_a_signal_config_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="must be a signal-config"):
        validate_config_request(Heartbeat(True))


# --- heartbeat ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [MitigationScope(()), SignalConfig(), RedirectedSignal("a.example")],
    ids=["mitigation-scope", "signal-config", "redirected-signal"],
)
def test_heartbeat_body_with_another_container_is_malformed(message: Any) -> None:
    with pytest.raises(MalformedPayload) as info:
        validate_heartbeat(message)
    assert info.value.code is Code.BAD_REQUEST
    assert "a heartbeat body must be a heartbeat container" in info.value.diagnostic


@pytest.mark.parametrize("status", [True, False])
def test_heartbeat_is_valid(status: bool) -> None:
    assert validate_heartbeat(Heartbeat(status)) == Heartbeat(status)


# --- other model rules --------------------------------------------------------------------------


def test_cuid_collision_carries_the_cause_alone() -> None:
    with pytest.raises(InvalidValue, match="cuid-collision must not carry"):
        ConflictInformation(ConflictCause.CUID_COLLISION, retry_timer=1)


def test_request_key_ignores_lifetime_order_and_fqdn_case() -> None:
    a = Scope(target_fqdn=("A.example", "b.example"), target_protocol=(6, 17), lifetime=60)
    b = Scope(
        target_fqdn=("b.example", "a.EXAMPLE"),
        target_protocol=(17, 6),
        lifetime=-1,
        trigger_mitigation=True,
    )
    assert a.request_key() == b.request_key()
    assert (
        a.request_key()
        != Scope(
            target_fqdn=a.target_fqdn, trigger_mitigation=False, target_protocol=(6, 17)
        ).request_key()
    )


def test_scope_targets_drops_everything_but_the_targets() -> None:
    scope = Scope(
        target_prefix=(ipaddress.ip_network("192.0.2.0/24"),),
        mid=5,
        lifetime=9,
        status=Status.ATTACK_STOPPED,
    )
    assert scope.targets() == Targets(target_prefix=scope.target_prefix)


def test_config_set_items_lists_the_present_parameters_in_rfc_order() -> None:
    config = ConfigSet(ack_timeout=ConfigValue(Decimal("2.00")), heartbeat_interval=ConfigValue(30))
    assert [name for name, _ in config.items()] == ["heartbeat_interval", "ack_timeout"]


@pytest.mark.parametrize(
    ("enum_type", "member", "label"),
    [
        (Status, Status.ATTACK_MITIGATION_SIGNAL_LOSS, "attack-mitigation-signal-loss"),
        (ConflictStatus, ConflictStatus.ALL_REQUESTS_INACTIVE, "all-requests-inactive"),
        (ConflictCause, ConflictCause.CONFLICT_WITH_ACCEPTLIST, "conflict-with-acceptlist"),
        (AttackStatus, AttackStatus.UNDER_ATTACK, "under-attack"),
    ],
)
def test_enum_labels(enum_type: Any, member: Any, label: str) -> None:
    assert member.label == label
    assert enum_type.from_label(label) is member


# --- Targets.overlap ----------------------------------------------------------------------------


def net(text: str) -> Any:
    return ipaddress.ip_network(text)


def targets(*prefixes: str, **kwargs: Any) -> Targets:
    return Targets(target_prefix=tuple(net(p) for p in prefixes), **kwargs)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param(["192.0.2.0/24"], ["192.0.2.128/25"], ["192.0.2.128/25"], id="b-inside-a"),
        pytest.param(["192.0.2.7/32"], ["192.0.2.0/24"], ["192.0.2.7/32"], id="a-inside-b"),
        pytest.param(["192.0.2.0/24"], ["192.0.2.0/24"], ["192.0.2.0/24"], id="equal"),
        pytest.param(["2001:db8::/32"], ["2001:db8:6401::1/128"], ["2001:db8:6401::1/128"],
                     id="v6"),
        pytest.param(["192.0.2.0/24", "198.51.100.0/24"], ["198.51.100.9/32", "203.0.113.0/24"],
                     ["198.51.100.9/32"], id="one-common"),
        pytest.param(["192.0.2.0/25", "192.0.2.128/25"], ["192.0.2.0/24"],
                     ["192.0.2.0/25", "192.0.2.128/25"], id="two-inside-one"),
    ],
)  # fmt: skip
def test_overlap_keeps_the_more_specific_prefix(
    a: list[str], b: list[str], expected: list[str]
) -> None:
    overlap = targets(*a).overlap(targets(*b))
    assert overlap is not None
    assert [str(p) for p in overlap.target_prefix] == expected


def test_overlap_is_symmetric_for_prefixes() -> None:
    a, b = targets("192.0.2.0/24"), targets("192.0.2.128/25")
    assert a.overlap(b) == b.overlap(a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(targets("192.0.2.0/25"), targets("192.0.2.128/25"), id="adjacent-prefixes"),
        pytest.param(targets("192.0.2.0/24"), targets("2001:db8::/32"), id="v4-and-v6"),
        pytest.param(Targets(target_fqdn=("a.example",)), Targets(target_fqdn=("b.example",)),
                     id="different-fqdns"),
        pytest.param(Targets(alias_name=("a",)), Targets(alias_name=("A",)),
                     id="aliases-are-case-sensitive"),
        pytest.param(Targets(target_uri=("https://a.example/",)),
                     Targets(target_uri=("https://a.example/x",)), id="different-uris"),
        pytest.param(Targets(target_fqdn=("a.example",)), targets("192.0.2.0/24"),
                     id="fqdn-vs-prefix"),
        pytest.param(Targets(target_port_range=(PortRange(80),)),
                     Targets(target_port_range=(PortRange(80),)), id="ports-alone"),
        pytest.param(Targets(target_protocol=(6,)), Targets(target_protocol=(6,)),
                     id="protocols-alone"),
        pytest.param(Targets(), Targets(), id="empty"),
    ],
)  # fmt: skip
def test_no_overlap_is_none(a: Targets, b: Targets) -> None:
    assert a.overlap(b) is None


def test_overlap_of_fqdns_is_case_insensitive_and_ignores_the_final_dot() -> None:
    a = Targets(target_fqdn=("WWW.Example.COM.", "other.example"))
    b = Targets(target_fqdn=("www.example.com",))
    assert a.overlap(b) == Targets(target_fqdn=("www.example.com",))


def test_overlap_of_uris_and_aliases() -> None:
    a = Targets(target_uri=("https://a.example/",), alias_name=("web", "db"))
    b = Targets(target_uri=("https://a.example/",), alias_name=("db",))
    assert a.overlap(b) == Targets(target_uri=("https://a.example/",), alias_name=("db",))


def test_overlap_ports_narrow_to_the_overlapping_ranges() -> None:
    a = targets(
        "192.0.2.0/24", target_port_range=(PortRange(80), PortRange(443), PortRange(1000, 2000))
    )
    b = targets("192.0.2.1/32", target_port_range=(PortRange(443), PortRange(1500, 3000)))
    overlap = a.overlap(b)
    assert overlap is not None
    assert overlap.target_port_range == (PortRange(443), PortRange(1000, 2000))
    assert overlap.target_prefix == (net("192.0.2.1/32"),)


def test_overlap_keeps_own_ports_when_the_other_has_none() -> None:
    a = targets("192.0.2.0/24", target_port_range=(PortRange(53),))
    overlap = a.overlap(targets("192.0.2.0/24"))
    assert overlap is not None and overlap.target_port_range == (PortRange(53),)


def test_overlap_exists_even_when_ports_differ() -> None:
    # Ports only narrow an overlap that the addresses create (RFC 9132 §4.4.1.3).
    a = targets("192.0.2.0/24", target_port_range=(PortRange(80),))
    b = targets("192.0.2.0/24", target_port_range=(PortRange(443),))
    overlap = a.overlap(b)
    assert overlap is not None
    assert overlap.target_prefix == (net("192.0.2.0/24"),)
    assert overlap.target_port_range == ()


def test_overlap_protocols_are_the_common_ones() -> None:
    a = targets("192.0.2.0/24", target_protocol=(17, 6, 1))
    b = targets("192.0.2.0/24", target_protocol=(6, 17, 132))
    overlap = a.overlap(b)
    assert overlap is not None and overlap.target_protocol == (6, 17)


def test_overlap_of_a_scope_with_a_targets() -> None:
    scope = Scope(target_prefix=(net("192.0.2.0/24"),), lifetime=60, mid=3)
    assert scope.overlap(targets("192.0.2.3/32")) == targets("192.0.2.3/32")
