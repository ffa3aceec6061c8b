"""DHCP option codecs: byte vectors, RFC 3396, malformed input (a clear error, never another
exception), and the seed §9 / RFC 8973 §5 client rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.discovery import dhcp_options as o
from gateway.discovery.candidates import IdentifierType
from gateway.discovery.dnsname import decode_first_name, decode_names, encode_name
from gateway.discovery.errors import DiscoveryError, InvalidName, MalformedOption, MalformedPacket

# Seed Figure 3: "dots.example.com." as dots-server-name.
FIGURE_3 = bytes([0x04]) + b"dots" + bytes([0x07]) + b"example" + bytes([0x03]) + b"com" + b"\0"
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def test_figure_3_vector() -> None:
    assert encode_name("dots.example.com.") == FIGURE_3
    assert encode_name("dots.example.com") == FIGURE_3
    assert len(FIGURE_3) == 18  # RFC 8973 §5.1.1: option-length 18 in the example
    assert o.decode_dots_ri(o.V6_DOTS_RI, FIGURE_3) == "dots.example.com"
    assert o.encode_v6_option(o.V6_DOTS_RI, FIGURE_3) == b"\x00\x8d\x00\x12" + FIGURE_3
    assert o.encode_v4_option(o.V4_DOTS_RI, FIGURE_3) == b"\x93\x12" + FIGURE_3


def test_several_names_use_only_the_first() -> None:
    # Seed §9.1.3: "more than one name, as distinguished by the presence of multiple root
    # labels ... MUST use only the first name".
    data = FIGURE_3 + encode_name("backup.example.com")
    assert decode_names(data) == ["dots.example.com", "backup.example.com"]
    assert o.decode_dots_ri(o.V4_DOTS_RI, data) == "dots.example.com"
    # Garbage after the first name does not discard it.
    assert o.decode_dots_ri(o.V4_DOTS_RI, FIGURE_3 + b"\xff\x01") == "dots.example.com"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\x00", "lone root"),
        (b"\x04dots\x07example", "root label"),  # truncated: no root label
        (b"\x04do", "past the end"),
        (b"\xc0\x0c", "compression"),  # a pointer: never in DHCP (RFC 8415 §10)
        (b"\x04d\x00ts\x00", "host-name label"),
        (b"\x03a b\x00", "host-name label"),
        (b"\x01-\x00", "host-name label"),
    ],
)
def test_bad_names_are_malformed_options(data: bytes, fragment: str) -> None:
    with pytest.raises(MalformedOption) as info:
        o.decode_dots_ri(o.V6_DOTS_RI, data)
    assert info.value.code == o.V6_DOTS_RI
    assert fragment in str(info.value)


def test_name_encoder_refuses_bad_names() -> None:
    for bad in ("", ".", "a..b", "x" * 64 + ".com", "bad name.com", ".".join(["a" * 60] * 5)):
        with pytest.raises(InvalidName):
            encode_name(bad)


def test_name_longer_than_255_octets_in_wire_form() -> None:
    data = (b"\x3f" + b"a" * 63) * 4 + b"\x00"  # 257 octets
    with pytest.raises(InvalidName, match="longer than 255"):
        decode_names(data)
    with pytest.raises(InvalidName):
        decode_first_name(data)


def test_v6_address_option() -> None:
    a, b = V6("2001:db8::1"), V6("2001:db8::2")
    assert o.decode_v6_dots_address(a.packed + b.packed) == (a, b)
    # IPv4-mapped addresses are allowed (seed §9.1.2) and come back as IPv4.
    mapped = V6("::ffff:192.0.2.7")
    assert o.decode_v6_dots_address(mapped.packed) == (V4("192.0.2.7"),)
    assert o.encode_v6_dots_address([V4("192.0.2.7")]) == mapped.packed


def test_v6_address_option_drops_multicast_and_loopback() -> None:
    # RFC 8973 §5.1.3: silently discarded.
    data = b"".join(V6(x).packed for x in ("ff02::1", "::1", "2001:db8::9", "::ffff:127.0.0.1"))
    assert o.decode_v6_dots_address(data) == (V6("2001:db8::9"),)


@pytest.mark.parametrize("length", [0, 1, 15, 17, 31])
def test_v6_address_length_must_be_a_multiple_of_16(length: int) -> None:
    with pytest.raises(MalformedOption, match="multiple of 16"):
        o.decode_v6_dots_address(b"\x20" * length)


def test_v4_address_option_rfc8973_flat_list() -> None:
    data = V4("192.0.2.1").packed + V4("224.0.0.1").packed + V4("198.51.100.2").packed
    assert o.decode_v4_dots_address(o.V4_DOTS_ADDRESS, data) == (
        V4("192.0.2.1"), V4("198.51.100.2"))
    with pytest.raises(MalformedOption, match="multiple of 4"):
        o.decode_v4_dots_address(o.V4_DOTS_ADDRESS, data[:-1])


def test_seed_multi_list_format() -> None:
    lists = [[V4("192.0.2.1"), V4("192.0.2.2")], [V4("198.51.100.1")]]
    value = o.encode_seed_v4_dots_address(lists)
    assert value == bytes([8]) + V4("192.0.2.1").packed + V4("192.0.2.2").packed + bytes(
        [4]) + V4("198.51.100.1").packed
    assert o.decode_seed_v4_dots_address(224, value) == tuple(tuple(x) for x in lists)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"\x04\xc0\x00\x02", "minimum is 5"),  # seed §9.2.2: minimum length 5
        (b"\x05\xc0\x00\x02\x01\x02", "multiple of 4"),
        (b"\x00\xc0\x00\x02\x01", "multiple of 4"),
        (b"\x08\xc0\x00\x02\x01\x02", "claims 8"),
        (b"\x04\xc0\x00\x02\x01\x04\xc0", "claims 4"),
    ],
)
def test_seed_format_errors(value: bytes, fragment: str) -> None:
    with pytest.raises(MalformedOption, match=fragment):
        o.decode_seed_v4_dots_address(224, value)


def test_seed_format_drops_lists_left_empty() -> None:
    value = bytes([4]) + V4("127.0.0.1").packed + bytes([4]) + V4("192.0.2.9").packed
    assert o.decode_seed_v4_dots_address(224, value) == ((V4("192.0.2.9"),),)


# --- RFC 3396 -------------------------------------------------------------------------------


def test_long_v4_option_is_split_and_joined() -> None:
    addresses = [V4(f"192.0.2.{i}") for i in range(1, 71)]  # 280 octets
    value = o.encode_v4_dots_address(addresses)
    wire = o.encode_v4_option(o.V4_DOTS_ADDRESS, value)
    assert wire[:2] == bytes([148, 255]) and wire[257:259] == bytes([148, 25])
    instances = o.parse_v4_options(wire + b"\xff")
    assert [len(v) for _, v in instances] == [255, 25]
    joined = o.join_v4_options(instances)
    assert o.decode_v4_dots_address(148, joined[148]) == tuple(addresses)


def test_join_keeps_other_options_between_the_parts() -> None:
    parts = b"\x94\x04\xc0\x00\x02\x01" + b"\x06\x04\x0a\x00\x00\x01" + b"\x94\x04\xc0\x00\x02\x02"
    joined = o.join_v4_options(o.parse_v4_options(parts))
    assert joined[148] == V4("192.0.2.1").packed + V4("192.0.2.2").packed
    assert joined[6] == V4("10.0.0.1").packed


@given(st.integers(1, 254), st.binary(max_size=1200))
def test_split_then_join_is_identity(code: int, value: bytes) -> None:
    wire = o.encode_v4_option(code, value)
    assert all(length <= 255 for _, length in _lengths(wire))
    assert o.join_v4_options(o.parse_v4_options(wire)).get(code, b"") == value


def _lengths(wire: bytes) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < len(wire):
        out.append((wire[pos], wire[pos + 1]))
        pos += 2 + wire[pos + 1]
    return out


@pytest.mark.parametrize(
    "area",
    [b"\x94", b"\x94\x05\x01\x02", b"\x01\x04\xff\xff\xff\x00\x94\x10abc"],
)
def test_truncated_v4_option_area(area: bytes) -> None:
    with pytest.raises(MalformedPacket):
        o.parse_v4_options(area)


def test_pad_and_end_options() -> None:
    assert o.parse_v4_options(b"\x00\x00\x06\x04\x0a\x00\x00\x01\xff\x94\x99garbage") == [
        (6, bytes([10, 0, 0, 1]))]


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x8d\x00", b"\x00\x8d\x00\x10\x01"])
def test_truncated_v6_options(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        o.parse_v6_options(data)


def test_v6_first_instance_only() -> None:
    # Seed §9.1.3: "MUST use only the first instance of that option".
    a, b = V6("2001:db8::a"), V6("2001:db8::b")
    data = o.encode_v6_option(142, a.packed) + o.encode_v6_option(142, b.packed)
    first = o.first_v6_options(o.parse_v6_options(data))
    assert o.decode_v6_dots_address(first[142]) == (a,)


# --- client rules ---------------------------------------------------------------------------


def test_ri_and_address_the_name_is_only_the_reference_identifier() -> None:
    info = o.interpret_v6({141: FIGURE_3, 142: V6("2001:db8::1").packed})
    (server,) = info.servers
    assert server.addresses == (V6("2001:db8::1"),)
    assert not server.resolve_name  # seed §9.1.3: MUST NOT be passed to a resolver
    assert server.reference_identifier(V6("2001:db8::1")) == ("dots.example.com",
                                                              IdentifierType.DNS)


def test_ri_only_the_name_is_resolved() -> None:
    (server,) = o.interpret_v4({147: FIGURE_3}).servers
    assert server.resolve_name and server.name == "dots.example.com"


def test_address_only_the_address_is_the_identifier() -> None:
    (server,) = o.interpret_v4({148: V4("192.0.2.1").packed}).servers
    assert server.reference_identifier(V4("192.0.2.1")) == ("192.0.2.1", IdentifierType.IP)


def test_interpret_v4_keeps_good_options_and_records_bad_ones() -> None:
    info = o.interpret_v4({
        147: b"\x04dots",  # truncated
        148: V4("192.0.2.1").packed,
        213: encode_name("example.net"),
        15: b"other.example\x00",
        6: V4("10.0.0.53").packed + V4("127.0.0.1").packed,
        51: b"\x00\x00\x0e\x10",
    })
    assert info.servers[0].addresses == (V4("192.0.2.1"),) and info.servers[0].name is None
    assert info.domains == ("example.net", "other.example")
    assert info.dns_servers == (V4("10.0.0.53"),)
    assert info.refresh == 3600
    assert len(info.problems) == 1 and "option 147" in info.problems[0]


def test_interpret_v4_seed_codes() -> None:
    seed = o.encode_seed_v4_dots_address([[V4("192.0.2.1")], [V4("192.0.2.2")]])
    info = o.interpret_v4({224: seed, 225: FIGURE_3}, seed_address_code=224, seed_ri_code=225)
    assert [s.addresses for s in info.servers] == [(V4("192.0.2.1"),), (V4("192.0.2.2"),)]
    assert all(s.name == "dots.example.com" for s in info.servers)


def test_interpret_v6_domains_and_refresh() -> None:
    info = o.interpret_v6({
        57: encode_name("access.example"),
        24: encode_name("a.example") + encode_name("b.example"),
        23: V6("fd00::53").packed,
        32: (7200).to_bytes(4, "big"),
    })
    assert info.servers == ()
    assert info.domains == ("access.example", "a.example", "b.example")
    assert info.dns_servers == (V6("fd00::53"),) and info.refresh == 7200


def test_encode_for_servers_round_trips() -> None:
    options = o.encode_for_servers(["dots.example.com"],
                                   [V4("192.0.2.1"), V6("2001:db8::1")],
                                   seed_lists=[[V4("192.0.2.3")]], seed_address_code=224)
    by_code = {(x.family, x.code): x for x in options}
    assert by_code[(6, 141)].value == FIGURE_3 and by_code[(4, 147)].value == FIGURE_3
    assert o.decode_v6_dots_address(by_code[(6, 142)].value) == (V6("2001:db8::1"),)
    assert by_code[(4, 148)].wire == b"\x94\x04\xc0\x00\x02\x01"
    assert o.decode_seed_v4_dots_address(224, by_code[(4, 224)].value) == ((V4("192.0.2.3"),),)


DECODERS = [
    lambda v: o.decode_dots_ri(141, v),
    lambda v: o.decode_domain(57, v),
    lambda v: o.decode_domain_list(24, v),
    o.decode_v4_domain_name,
    o.decode_v6_dots_address,
    lambda v: o.decode_v4_dots_address(148, v),
    lambda v: o.decode_seed_v4_dots_address(224, v),
    lambda v: o.decode_uint32(32, v),
    o.parse_v4_options,
    o.parse_v6_options,
    lambda v: o.interpret_v4(o.join_v4_options(o.parse_v4_options(v)), seed_address_code=224),
    lambda v: o.interpret_v6(o.first_v6_options(o.parse_v6_options(v))),
]


@pytest.mark.parametrize("decode", DECODERS)
@given(data=st.binary(max_size=300))
def test_random_bytes_parse_or_raise_the_discovery_error(decode, data: bytes) -> None:  # type: ignore[no-untyped-def]
    try:
        decode(data)
    except DiscoveryError:
        pass
