"""DHCPINFORM / Information-request: what we send, and parsing what comes back."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.discovery import dhcp_options as o
from gateway.discovery import dhcp_packets as p
from gateway.discovery.dnsname import encode_name
from gateway.discovery.errors import DiscoveryError, MalformedPacket

MAC = bytes.fromhex("020000000001")
CIADDR = ipaddress.IPv4Address("10.0.0.2")


def test_inform_requests_the_dots_codes() -> None:
    request = p.build_inform(0x01020304, MAC, CIADDR, extra_codes=(224,))
    packet = request.packet
    assert packet[0] == 1 and packet[4:8] == bytes([1, 2, 3, 4])
    assert packet[12:16] == CIADDR.packed  # ciaddr: we have an address, we only inform
    assert packet[28:34] == MAC
    options = o.join_v4_options(o.parse_v4_options(packet[240:]))
    assert options[53] == bytes([p.DHCPINFORM])
    # Seed §9.2.3: both 147 and 148 MUST be in the Parameter Request List; §7.1.1: 213 too.
    assert {147, 148, 213, 15, 6, 224} <= set(options[55])


def _ack(xid: int, options: bytes, *, op: int = 2, file_field: bytes = b"",
         sname: bytes = b"") -> bytes:
    header = struct.pack("!BBBB4sHH4s4s4s4s16s64s128s", op, 1, 6, 0, xid.to_bytes(4, "big"),
                         0, 0, CIADDR.packed, b"\0" * 4, bytes([10, 0, 0, 1]), b"\0" * 4,
                         MAC.ljust(16, b"\0"), sname, file_field)
    return header + b"\x63\x82\x53\x63" + options


def test_parse_ack_from_dnsmasq_like_reply() -> None:
    # The option bytes dnsmasq 2.90 sent in the lab (see tests/lab/test_discovery_lab.py).
    opts = bytes.fromhex(
        "350105" "36040a630001" "0104ffffff00" "94080a63000a0a63000b"
        "931204646f7473076578616d706c65036e657400" "d50d076578616d706c65036e657400"
        "0f0b6578616d706c652e6e6574" "06040a630001" "ff"
    )
    info = p.parse_inform_reply(_ack(7, opts), 7)
    assert info.servers[0].name == "dots.example.net"
    assert [str(a) for a in info.servers[0].addresses] == ["10.99.0.10", "10.99.0.11"]
    assert info.access_domain == "example.net" and info.domain_name == "example.net"
    assert [str(a) for a in info.dns_servers] == ["10.99.0.1"] and info.server_id == "10.99.0.1"


def test_option_overload_file_then_sname() -> None:
    # RFC 3396 §7: options field, then file, then sname; 148 split across all three.
    a, b, c = (ipaddress.IPv4Address(f"192.0.2.{i}").packed for i in (1, 2, 3))
    options = b"\x35\x01\x05" + b"\x34\x01\x03" + b"\x94\x04" + a + b"\xff"
    info = p.parse_inform_reply(_ack(9, options, file_field=b"\x94\x04" + b + b"\xff",
                                     sname=b"\x94\x04" + c + b"\xff"), 9)
    assert [str(x) for x in info.servers[0].addresses] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_other_transactions_and_requests_are_not_ours() -> None:
    with pytest.raises(p.NotOurs):
        p.parse_inform_reply(_ack(1, b"\x35\x01\x05\xff"), 2)
    with pytest.raises(p.NotOurs):
        p.parse_inform_reply(_ack(1, b"\x35\x01\x05\xff", op=1), 1)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (b"\x35\x01\x06\xff", "DHCPNAK"),
        (b"\x35\x01\x02\xff", "not DHCPACK"),
        (b"\xff", "missing"),
        (b"\x35\x01\x05\x34\x01\x07\xff", "overload"),
        (b"\x35\x01\x05\x94\x09\x01", "claims 9"),
    ],
)
def test_bad_acks(options: bytes, fragment: str) -> None:
    with pytest.raises(MalformedPacket, match=fragment):
        p.parse_inform_reply(_ack(3, options), 3)


def test_short_packet_and_missing_cookie() -> None:
    with pytest.raises(MalformedPacket, match="shorter"):
        p.parse_inform_reply(b"\x02" * 100, 1)
    packet = bytearray(_ack(1, b"\x35\x01\x05\xff"))
    packet[236:240] = b"\0\0\0\0"
    with pytest.raises(MalformedPacket, match="cookie"):
        p.parse_inform_reply(bytes(packet), 1)


def test_information_request() -> None:
    request = p.build_information_request(0xABCDEF, MAC)
    assert request.packet[:4] == bytes([11, 0xAB, 0xCD, 0xEF])
    options = o.first_v6_options(o.parse_v6_options(request.packet[4:]))
    assert options[1] == b"\x00\x03\x00\x01" + MAC  # DUID-LL
    assert options[8] == b"\0\0"  # elapsed time (RFC 8415 §21.9: MUST)
    oro = {int.from_bytes(options[6][i:i + 2], "big") for i in range(0, len(options[6]), 2)}
    assert {141, 142, 57, 23, 24, 32} <= oro
    with pytest.raises(ValueError):
        p.build_information_request(1 << 24, MAC)


def _reply(tid: int, options: bytes, msg_type: int = 7) -> bytes:
    return bytes([msg_type]) + tid.to_bytes(3, "big") + options


def test_parse_reply() -> None:
    addr = ipaddress.IPv6Address("fd00:99::10").packed
    options = (o.encode_v6_option(2, b"\x00\x01abcd") + o.encode_v6_option(142, addr)
               + o.encode_v6_option(141, encode_name("dots.example.net"))
               + o.encode_v6_option(57, encode_name("example.net"))
               + o.encode_v6_option(32, (86400).to_bytes(4, "big")))
    info = p.parse_information_reply(_reply(5, options), 5)
    assert info.servers[0].name == "dots.example.net" and info.refresh == 86400
    assert info.domains == ("example.net",) and info.server_id == "000161626364"


def test_reply_errors() -> None:
    with pytest.raises(p.NotOurs):
        p.parse_information_reply(_reply(5, b""), 6)
    with pytest.raises(p.NotOurs):
        p.parse_information_reply(_reply(5, b"", msg_type=2), 5)
    with pytest.raises(MalformedPacket, match="status 2"):
        p.parse_information_reply(_reply(5, o.encode_v6_option(13, b"\x00\x02NoAddrsAvail")), 5)
    with pytest.raises(MalformedPacket, match="shorter"):
        p.parse_information_reply(b"\x07\x00", 0)


@given(st.binary(max_size=700))
def test_random_bytes_in_a_v4_reply(data: bytes) -> None:
    try:
        p.parse_inform_reply(_ack(1, b"") [:240] + data, 1)
    except (DiscoveryError, p.NotOurs):
        pass


@given(st.binary(max_size=400))
def test_random_bytes_as_a_v6_reply(data: bytes) -> None:
    try:
        p.parse_information_reply(b"\x07\x00\x00\x01" + data, 1)
        p.parse_information_reply(data, 1)
    except (DiscoveryError, p.NotOurs):
        pass
